"""Test fixtures: offline environment, temporary MLflow store, a session-wide Prefect harness, tiny data."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
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


def write_tiny_melu_raw(root: Path, n_users: int = 48, n_items: int = 60, seed: int = 0) -> Path:
    """A small dataset in the official MeLU raw layout (vocabularies, users.dat, movies_extrainfos.dat, states)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    vocab = {
        "m_gender.txt": ["M", "F"],
        "m_age.txt": ["1", "18", "25", "35", "45", "50", "56"],
        "m_occupation.txt": [str(i) for i in range(21)],
        "m_zipcode.txt": [f"{10000 + i}" for i in range(9)],
        "m_rate.txt": ["PG-13", "UNRATED", "NC-17", "PG", "G", "R"],
        "m_genre.txt": ["Animation", "Comedy", "nan", "Drama", "Action"],
        "m_director.txt": ["nan", "Dir A", "Dir B", "Dir C"],
        "m_actor.txt": ["nan", "Actor 1", "Actor 2", "Actor 3", "Actor 4", "Actor 5"],
    }
    for f, words in vocab.items():
        (root / f).write_text("\r\n".join(words), encoding="utf-8")
    users = [f"{u}::{rng.choice('MF')}::{rng.choice(vocab['m_age.txt'])}::{rng.randrange(21)}::{rng.choice(vocab['m_zipcode.txt'])}-1234" for u in range(1, n_users + 1)]
    (root / "users.dat").write_text("\n".join(users) + "\n", encoding="utf-8")
    movies = []
    for m in range(1, n_items + 1):
        genres = ", ".join(rng.sample(["Animation", "Comedy", "Drama", "Action"], rng.randint(1, 2))) if m % 7 else "N/A"
        director = rng.choice(["Dir A", "Dir B(co-director)", "Dir C", "N/A"])
        actors = ", ".join(rng.sample(vocab["m_actor.txt"][1:], rng.randint(1, 3)))
        year = 1990 + m % 10
        movies.append(f"{m}::Movie {m}::{year}::{rng.choice(vocab['m_rate.txt'])}::1 Jan {year}::{genres}::{director}::Writer::{actors}::Plot::http://poster")
    (root / "movies_extrainfos.dat").write_text("\n".join(movies) + "\n", encoding="utf-8")
    (root / "movies.dat").write_text("\n".join(f"{m}::Movie {m}::Drama" for m in range(1, n_items + 1)) + "\n")
    states = ["warm_state", "user_cold_state", "item_cold_state", "user_and_item_cold_state"]
    for s_i, state in enumerate(states):
        xs, ys = {}, {}
        for u in range(1 + s_i, n_users + 1, 2 if s_i else 1):
            n = rng.randint(8, 30)  # some users fall below the 13-rating threshold
            items = rng.sample(range(1, n_items + 1), n)
            xs[str(u)] = [str(i) for i in items]
            # ratings depend on the item so that a model can learn something
            ys[str(u)] = [min(5, max(1, (i % 5) + 1 + rng.choice([-1, 0, 0, 1]))) for i in items]
        (root / f"{state}.json").write_text(json.dumps(xs))
        (root / f"{state}_y.json").write_text(json.dumps(ys))
    return root


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
        metrics_path=str(tmp_path / "metrics" / "melu.json"),
        plots_dir=str(tmp_path / "plots"),
    )
