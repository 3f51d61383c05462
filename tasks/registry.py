"""Prefect task: register a logged model and apply the champion/challenger rules (models.common.registry)."""

from __future__ import annotations

from prefect import task

from models.common import tracking
from models.common.registry import promote


WEIGHTS_TAG = "weights_sha256"


@task(retries=3, retry_delay_seconds=[1, 2, 4])
def find_version_by_weights(name: str, weights_sha256: str) -> str | None:
    """The version of ``name`` whose weights have this sha256 (tag ``weights_sha256``), or None."""
    return registered_version(name, weights_sha256)


def registered_version(name: str, weights_sha256: str) -> str | None:
    found = [v for v in tracking.client().search_model_versions(f"name='{name}'") if v.tags.get(WEIGHTS_TAG) == weights_sha256]
    return str(min(int(v.version) for v in found)) if found else None


def _register(model_uri: str, name: str) -> str:
    import mlflow

    with tracking.signals_deferred():
        return mlflow.register_model(model_uri, name).version


@task(retries=3, retry_delay_seconds=[1, 2, 4])
def register_and_promote(model_uri: str, name: str, run_id: str, gate_metric: str, gate_value: float, mode: str,
                         scope: str | None = None, weights_sha256: str | None = None) -> dict:
    """Register ``model_uri`` as a new version of ``name`` (idempotent per run) and gate it.

    Retried on I/O errors: a retry finds the version it already registered for this run instead of
    registering a second one. ``weights_sha256`` is stored as a version tag: the flows register a model whose
    weights are already in the registry only once (``flows.common.register_once``).
    """
    c = tracking.client()
    existing = [v for v in c.search_model_versions(f"name='{name}'") if v.run_id == run_id]
    version = existing[0].version if existing else _register(model_uri, name)
    if weights_sha256:
        c.set_model_version_tag(name, str(version), WEIGHTS_TAG, weights_sha256)
    record = promote(name, version, gate_metric, gate_value, mode, scope=scope)
    tracking.log_json(run_id, record, "registry/comparison.json")
    c.set_tag(run_id, "registry.version", str(version))
    c.set_tag(run_id, "registry.promoted", str(record["promoted"]).lower())
    print(f"{name} v{version}: {gate_metric}={gate_value:.4f} vs champion {record['champion_value']} -> "
          f"{record['champion_alias'] if record['promoted'] else 'challenger'}")
    return record
