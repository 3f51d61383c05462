"""Test fixtures: offline environment, temporary MLflow store, a session-wide Prefect harness, tiny data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",  # lm-eval's evaluate.load("f1") lookups fail at once instead of after network retries
    "HF_DATASETS_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}.items():
    os.environ[_k] = _v

REPO = Path(__file__).resolve().parents[1]
# resolved once (relative to the directory pytest started in) and exported, so that subprocesses started in other
# directories (a copied repository running `dvc repro`) read the same mirror
MIRROR = os.path.abspath(os.environ["DATA_MIRROR"]) if os.environ.get("DATA_MIRROR", "").strip() else None
if MIRROR:
    os.environ["DATA_MIRROR"] = MIRROR


from flows.runtime import free_port  # noqa: E402  (the one helper; tests import it from here)
from models.melu.tiny import write_tiny_melu_raw  # noqa: E402,F401  (tests import it from here)


def mirror_dir(name: str) -> Path:
    if not MIRROR or not (Path(MIRROR) / name).is_dir():
        pytest.skip(f"DATA_MIRROR is not set or has no {name}/ (the real-data tests need the mirror)")
    return Path(MIRROR) / name


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    mlflow.set_tracking_uri(uri)  # tests only: the library code reads the environment
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def tiny_melu(tmp_path_factory):
    """Raw + processed tiny MeLU data; returns (raw_dir, processed_dir)."""
    from data.stages.preprocess_melu import preprocess

    base = tmp_path_factory.mktemp("tiny_melu")
    raw = write_tiny_melu_raw(base / "raw")
    preprocess(raw, base / "processed")
    return raw, base / "processed"


@pytest.fixture
def tiny_cfg(tiny_melu, tmp_path):
    from models.melu.config import MeluConfig

    _, processed = tiny_melu
    return MeluConfig.tiny(
        data={"processed_dir": str(processed), "raw_dir": str(tiny_melu[0])},
        train={"checkpoint_dir": str(tmp_path / "ckpt"), "device": "cpu"},
        outputs={"metrics_dir": str(tmp_path / "metrics"), "plots_dir": str(tmp_path / "plots")},
    )
