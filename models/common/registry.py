"""Model registry rules shared by every model: challenger on registration, champion only if better.

A new version always gets the alias ``challenger``. It becomes ``champion`` only if its gate metric
(declared per model in params.yaml, with a direction) beats the current champion's; the comparison is
returned and logged to the run. The read-compare-move of ``champion`` is serialised per registered model
(:func:`promotion_lock`), so two flows finishing at once cannot both read the old champion and both promote: the
second one compares against the first one's result. The lock follows the tracking store:

- ``sqlite:`` / a local folder (the embedded default): an inter-process file lock beside the store (one machine);
- ``postgresql:`` (workers that reach the database): a PostgreSQL advisory lock in that database, held by a
  connection of its own (released by the server if the holder dies);
- ``http(s):`` (a tracking server shared by machines): a Prefect global concurrency limit of 1 slot named
  ``registry:<model>``, on the Prefect server that ``PREFECT_API_URL`` names in the environment (every worker of a
  deployment has it; the slot is a lease, so a holder that dies frees it). Without a shared Prefect server (a run's
  own temporary one does not reach other machines) it falls back to the file lock, with a warning.

A model trained on several datasets (the sequential recommenders) is gated per dataset: with
``scope="beauty"`` the aliases are ``champion_beauty`` / ``challenger_beauty`` and the candidate is compared
only with that dataset's champion (a validation NDCG on Yelp says nothing about one on Beauty).
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
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


def lock_kind(tracking_uri: str | None = None) -> str:
    """``file``, ``postgresql`` or ``prefect``: how :func:`promotion_lock` serialises promotions for this store."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme == "postgresql":
        return "postgresql"
    if scheme in ("http", "https") and os.environ.get("PREFECT_API_URL"):
        return "prefect"
    return "file"


def advisory_key(name: str) -> int:
    """The signed 64-bit PostgreSQL advisory-lock key of a registered model."""
    return int.from_bytes(hashlib.sha256(f"paperflows.registry:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def promotion_lock(name: str, tracking_uri: str | None = None, timeout: float = 600) -> Iterator[str]:
    """Hold the registry lock of ``name`` (see the module doc); yields the kind used. Raises ``TimeoutError`` when
    it is not acquired within ``timeout`` seconds."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    kind = lock_kind(uri)
    if kind == "postgresql":
        import psycopg

        dsn = "postgresql://" + uri.split("://", 1)[1]  # postgresql+psycopg:// -> the libpq form
        with psycopg.connect(dsn, autocommit=True, connect_timeout=30) as conn:
            key, deadline = advisory_key(name), time.monotonic() + timeout
            while not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"registry lock of {name!r} (PostgreSQL advisory key {key}) not acquired in {timeout} s")
                time.sleep(0.1)
            try:
                yield kind
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return
    if kind == "prefect":
        from prefect.concurrency.sync import concurrency

        limit = f"registry:{name}"
        _ensure_prefect_limit(limit)
        with concurrency(limit, occupy=1, timeout_seconds=timeout, strict=True, lease_duration=60.0):  # renewed while held
            yield kind
        return
    if urlparse(uri).scheme in ("http", "https"):
        print(f"warning: promotions of {name!r} are serialised on this machine only: the tracking server {uri} is "
              "shared, but no shared Prefect server is set (PREFECT_API_URL)", file=sys.stderr)
    with FileLock(str(registry_lock_path(name, uri)), timeout=timeout):
        yield kind


def _ensure_prefect_limit(limit: str) -> None:
    """Create the 1-slot global concurrency limit ``limit`` unless it exists (two creators at once: one wins)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as pc:
        try:
            pc.read_global_concurrency_limit_by_name(limit)
            return
        except ObjectNotFound:
            pass
        try:
            pc.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1))
        except ObjectAlreadyExists:
            pass


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
    with promotion_lock(name, timeout=lock_timeout) as lock:
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
            "lock": lock,
            "decided_at": time.time(),
        }
        if promoted:
            c.set_registered_model_alias(name, champion_alias, version)
        c.set_model_version_tag(name, version, "validation_status", champion_alias if promoted else challenger_alias)
    return record
