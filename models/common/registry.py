"""Model registry rules shared by every model: challenger on registration, champion only if better.

A new version always gets the alias ``challenger``. It becomes ``champion`` only if its gate metric
(declared per model in params.yaml, with a direction) beats the current champion's; the comparison is
returned and logged to the run. Promotion is serialised by an inter-process file lock beside the
tracking store, so two flows finishing at once cannot both read the old champion and both promote:
the second one compares against the first one's result. (For a remote tracking server, run promotions
through the Prefect flow, whose registry task uses a global concurrency limit of 1 per model.)

A model trained on several datasets (the sequential recommenders) is gated per dataset: with
``scope="beauty"`` the aliases are ``champion_beauty`` / ``challenger_beauty`` and the candidate is compared
only with that dataset's champion (a validation NDCG on Yelp says nothing about one on Beauty).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock

from models.common.tracking import client

CHAMPION, CHALLENGER = "champion", "challenger"
GATE_TAG = "gate_value"


def registry_lock_path(name: str, tracking_uri: str | None = None) -> Path:
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db = Path(uri.split(":///", 1)[1]) if ":///" in uri else Path("mlflow.db")
        return db.with_name(f"{db.name}.{name}.registry.lock")
    if parsed.scheme in ("", "file"):
        return Path(parsed.path or uri) / f".{name}.registry.lock"
    return Path(tempfile.gettempdir()) / f"mlflow-{parsed.netloc}-{name}.registry.lock"


def is_better(candidate: float, incumbent: float | None, mode: str) -> bool:
    if mode not in ("min", "max"):
        raise ValueError(f"gate mode must be 'min' or 'max', got {mode!r}")
    if not math.isfinite(candidate):
        return False
    if incumbent is None or not math.isfinite(incumbent):
        return True
    return candidate < incumbent if mode == "min" else candidate > incumbent


def aliases(scope: str | None = None) -> tuple[str, str]:
    """(champion, challenger) alias names, per scope (e.g. dataset) when given."""
    if scope is None:
        return CHAMPION, CHALLENGER
    if not scope.replace("_", "").isalnum():
        raise ValueError(f"registry scope must be letters, digits and underscores, got {scope!r}")
    return f"{CHAMPION}_{scope.lower()}", f"{CHALLENGER}_{scope.lower()}"


def scope_of(champion_alias: str) -> str | None:
    """The scope an alias from :func:`aliases` was made for (``champion_sick`` -> ``sick``; ``champion`` -> None)."""
    if champion_alias == CHAMPION:
        return None
    if not champion_alias.startswith(f"{CHAMPION}_"):
        raise ValueError(f"not a champion alias: {champion_alias!r}")
    return champion_alias[len(CHAMPION) + 1:]


def promote(name: str, version: str | int, gate_metric: str, gate_value: float, mode: str, lock_timeout: float = 600,
            scope: str | None = None) -> dict:
    """Set ``challenger`` on ``version`` and move ``champion`` to it if it beats the current champion.

    With ``scope`` the aliases are ``champion_<scope>`` / ``challenger_<scope>`` (see module doc).
    Returns the comparison record (also stored as version tags).
    """
    from mlflow.exceptions import MlflowException

    champion_alias, challenger_alias = aliases(scope)
    c = client()
    version = str(version)
    lock = FileLock(str(registry_lock_path(name)), timeout=lock_timeout)
    with lock:
        c.set_model_version_tag(name, version, GATE_TAG, repr(float(gate_value)))
        c.set_model_version_tag(name, version, "gate_metric", gate_metric)
        c.set_registered_model_alias(name, challenger_alias, version)
        try:
            champ = c.get_model_version_by_alias(name, champion_alias)
        except MlflowException:
            champ = None
        incumbent = float(champ.tags[GATE_TAG]) if champ is not None and GATE_TAG in champ.tags else None
        promoted = is_better(float(gate_value), incumbent, mode)
        record = {
            "model": name,
            "scope": scope,
            "champion_alias": champion_alias,
            "candidate_version": version,
            "gate_metric": gate_metric,
            "mode": mode,
            "candidate_value": float(gate_value),
            "champion_version": str(champ.version) if champ is not None else None,
            "champion_value": incumbent,
            "promoted": promoted,
            "decided_at": time.time(),
        }
        if promoted:
            c.set_registered_model_alias(name, champion_alias, version)
        c.set_model_version_tag(name, version, "validation_status", champion_alias if promoted else challenger_alias)
    return record
