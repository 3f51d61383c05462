"""Shared pieces of the model flow (:mod:`flows.model`): environment defaults, run tags, tracked MLflow runs, the
model bundle of a train stage and idempotent registration."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import yaml
from prefect.exceptions import TerminationSignal

from data.atomic import atomic_directory
from data.download import sha256_file
from models.common import tracking
from models.common.registry import aliases, scope_of


# what an interrupted run raises: SIGINT (KeyboardInterrupt), SIGTERM outside a flow (flows.runtime.Interrupted, a
# KeyboardInterrupt) and SIGTERM inside one (Prefect's own handler raises TerminationSignal)
INTERRUPTS = (KeyboardInterrupt, TerminationSignal)


def configure_environment() -> None:
    """Embedded defaults for command-line runs: local SQLite MLflow, ephemeral Prefect, no telemetry. A server
    tracking store (``postgresql://``, ``http(s)://``) must answer first: :class:`tracking.TrackingStoreError`
    names the URI (no password) instead of a traceback minutes into the run."""
    tracking.ensure_tracking_env()
    tracking.check_tracking_store()
    for key, value in {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "DO_NOT_TRACK": "1",
    }.items():
        os.environ.setdefault(key, value)


def parse_overrides(pairs: list[str]) -> dict:
    """['train.epochs=3', 'train.meta_order=first'] -> {'train.epochs': 3, ...} (values parsed as YAML)."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise SystemExit(f"--set expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def run_tags(model: str, data_paths: list[str], stage: str | None = None) -> dict[str, str]:
    """git commit, Prefect flow-run id, the DVC stage (if any) and the dvc.lock hashes of the data read."""
    tags = {
        "git_commit": tracking.git_commit(),
        "prefect.flow_run_id": tracking.prefect_flow_run_id(),
        "model": model,
    }
    if stage:
        tags["dvc.stage"] = stage
    for path, md5 in tracking.dvc_output_hashes(data_paths).items():
        tags[f"dvc.data.{path}"] = md5
    return tags


@contextmanager
def tracked_run(experiment: str, run_name: str, tags: dict[str, str], section: str, cfg) -> Iterator[str]:
    """One MLflow run per flow run: params and resolved config logged; status FINISHED, KILLED (an interrupt:
    SIGINT or SIGTERM) or FAILED at the end. Runs of this experiment left RUNNING on this host by a process that
    no longer exists (``kill -9``) are marked KILLED first (``flows.runtime.mark_stale_runs``)."""
    from flows.runtime import mark_stale_runs, run_identity

    run_id = tracking.start_run(experiment, run_name, {**tags, **run_identity()})
    for stale in mark_stale_runs(tracking.client().get_run(run_id).info.experiment_id):
        print(f"mlflow: run {stale} was left RUNNING by a process that is gone; marked KILLED")
    status = "FAILED"
    try:
        tracking.log_params(run_id, {section: cfg.model_dump(mode="json")})
        tracking.log_json(run_id, cfg.model_dump(mode="json"), "config/resolved_config.json")
        yield run_id
        status = "FINISHED"
    except INTERRUPTS:
        status = "KILLED"
        raise
    finally:
        try:
            tracking.client().set_terminated(run_id, status=status)
        except Exception as err:  # noqa: BLE001 - an interrupted run still exits as interrupted (130 / 143)
            if status != "KILLED":
                raise
            print(f"mlflow: could not mark run {run_id} KILLED ({type(err).__name__}: {err}); the next run of this "
                  "experiment on this host marks it (flows.runtime.mark_stale_runs)")


def register_once(bundle: dict, run_id: str, log_model: Callable[[], str]) -> dict:
    """Log and register the bundle's model (:func:`model_bundle`: name, gate, alias scope and weights sha256 come
    from its card) unless a version with the same weights is already registered.

    Re-running an unchanged configuration reuses its finished checkpoint and so produces the same weights: the
    registry then gets nothing new (the run is tagged with the version it found), which makes registration
    idempotent for ``dvc repro --force`` and for the repair step of ``make run`` (``flows.registry_check``).
    """
    from tasks.registry import find_version_by_weights, register_and_promote

    card = bundle["card"]
    name, sha = card["registered_model"], card["weights_sha256"]
    scope = scope_of(card["champion_alias"])
    found = find_version_by_weights(name, sha)
    if found is not None:
        c = tracking.client()
        c.set_tag(run_id, "registry.version", found)
        c.set_tag(run_id, "registry.reused", "true")
        print(f"{name} v{found} already holds these weights (sha256 {sha[:12]}): nothing registered")
        return {"model": name, "scope": scope, "candidate_version": found, "reused": True, "promoted": False}
    return register_and_promote(log_model(), name, run_id, card["gate_metric"], card["gate_value"], card["gate_mode"],
                                scope=scope, weights_sha256=sha)


def model_bundle(weights: str | Path, stage: str, registered_model: str | None, gate_metric: str, gate_value: float,
                 mode: str, scope: str | None = None) -> dict:
    """What a train stage leaves for DVC (see :func:`write_model_bundle`): the final weights and a card."""
    card = {"stage": stage, "registered_model": registered_model,
            "champion_alias": aliases(scope)[0] if registered_model else None,
            "gate_metric": gate_metric, "gate_value": float(gate_value), "gate_mode": mode,
            "weights_sha256": sha256_file(Path(weights))}
    return {"weights": str(weights), "card": card}


def write_model_bundle(out_dir: str | Path, bundle: dict) -> Path:
    """The train stage's DVC output ``<out_dir>/``: ``model.pt`` (the weights the pyfunc serves) and ``model.json``
    (stage, registered name and champion alias, gate value, weights sha256). No run id and no time in it, so the
    same computation gives the same bytes. It exists only where the stage ran (DVC caches it; a remote carries
    it), which is what makes a fresh clone train and register instead of trusting the committed metrics."""
    with atomic_directory(out_dir) as tmp:
        shutil.copyfile(bundle["weights"], tmp / "model.pt")
        tracking.atomic_write_json(tmp / "model.json", bundle["card"])
    return Path(out_dir)
