"""End-to-end: the sequential-recommendation flow on a tiny synthetic dataset into a temporary MLflow."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from data.stages.preprocess_seqrec import preprocess
from models.seqrec.config import SeqRecConfig

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_seqrec(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for u in range(1, 121):  # item i is usually followed by item i + 1 (ids 1..15)
        start = int(rng.integers(0, 15))
        items = [(start + j) % 15 + 1 for j in range(int(rng.integers(5, 9)))]
        lines.append(" ".join(map(str, [u, *items])))
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "Beauty.txt").write_text("\n".join(lines) + "\n")
    preprocess(raw, tmp_path / "processed", ["Beauty"])
    cfg = SeqRecConfig.model_validate({
        "data": {"processed_dir": str(tmp_path / "processed"), "max_len": 8},
        "model": {"hidden": 8, "dropout": 0.0},
        "train": {"epochs": 4, "patience": 2, "batch_size": 32, "lr": 0.02, "device": "cpu", "checkpoint_dir": str(tmp_path / "ckpt")},
    })
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"seqrec": cfg.model_dump(mode="json")}))
    return str(p)


def test_seqrec_flow_registers_each_model_and_serves_top_k(prefect_harness, mlflow_store, tiny_seqrec, tmp_path, monkeypatch):
    from flows.seqrec import seqrec_flow

    monkeypatch.chdir(tmp_path)
    fanc = seqrec_flow(params_path=tiny_seqrec)
    gru = seqrec_flow(params_path=tiny_seqrec, overrides={"model.name": "gru4rec"})
    c = MlflowClient()
    for name, res in (("fanc", fanc), ("gru4rec", gru)):
        assert res["registry"]["promoted"] and res["registry"]["gate_metric"] == "valid_ndcg_at_10"
        assert c.get_model_version_by_alias(name, "champion").run_id == res["run_id"]
        assert 0 <= res["test"]["test_ndcg_at_10"] <= res["test"]["test_hr_at_10"] <= 1
        run = c.get_run(res["run_id"])
        assert run.data.tags["eval.protocol"] == "full ranking over all items" and run.data.tags["dataset"] == "Beauty"
        assert [m.step for m in c.get_metric_history(res["run_id"], "valid_ndcg_at_10")] == list(range(1, res["epochs"] + 1))
    assert c.get_run(fanc["run_id"]).data.tags["reconstruction"] == "true"
    model = mlflow.pyfunc.load_model("models:/fanc@champion")
    out = model.predict(pd.DataFrame([{"history": [3, 4, 5], "k": 4}]))
    assert list(out["rank"]) == [1, 2, 3, 4] and not set(out.item_id) & {3, 4, 5}
    assert out.score.is_monotonic_decreasing
    with pytest.raises(Exception, match="history"):
        model.predict(pd.DataFrame([{"history": [99], "k": 2}]))
