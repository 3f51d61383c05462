"""End-to-end: the DisSAN flow on tiny SICK-format files and tiny word vectors, into a temporary MLflow."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

@pytest.fixture
def tiny_nli(tmp_path):
    from models.dissan.config import DissanConfig
    from models.dissan.tiny import tiny

    section = tiny(tmp_path)
    section["train"]["epochs"] = 6
    section["outputs"] = DissanConfig().outputs.model_dump()  # relative: the tests read tmp_path/metrics/dissan
    p = tmp_path / "params.yaml"  # every subsection written out, as params.yaml has them (a missing one is an error)
    p.write_text(yaml.safe_dump({"dissan": section}))
    return str(p)


def test_dissan_flow_trains_registers_and_serves(prefect_harness, mlflow_store, tiny_nli, tmp_path, monkeypatch):
    from flows.model import main, model_flow

    monkeypatch.chdir(tmp_path)
    res = model_flow("dissan", params_path=tiny_nli)
    assert res["registry"]["promoted"] and res["registry"]["champion_alias"] == "champion_sick"
    assert res["test_accuracy"] > 0.9, res  # the tiny task is learnable from the words
    assert res["comparable_to_paper"] and res["epochs"] == 6
    written = json.loads((tmp_path / "metrics" / "dissan" / "dissan-sick.json").read_text())
    assert written["test_accuracy"] == res["test_accuracy"] and sum(b["n"] for b in written["test_buckets"].values()) == 60
    assert np.asarray(written["test_confusion"]).sum() == 60
    c = MlflowClient()
    run = c.get_run(res["run_id"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(res["test_accuracy"]) and run.data.tags["variant"] == "dissan"
    assert {"figures/confusion_test.png", "figures/test_length_buckets.csv"} <= {a.path for a in c.list_artifacts(res["run_id"], "figures")}
    model = mlflow.pyfunc.load_model("models:/dissan@champion_sick")
    out = model.predict(pd.DataFrame([{"premise": "A dog runs.", "hypothesis": "A dog is running."},
                                      {"premise": "A cat sleeps", "hypothesis": "The cat is not sleeping"}]))
    assert list(out.columns) == ["label", "prob_entailment", "prob_neutral", "prob_contradiction"]
    assert out[["prob_entailment", "prob_neutral", "prob_contradiction"]].sum(1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert list(out.label) == ["entailment", "contradiction"]
    with pytest.raises(Exception, match="hypothesis"):
        model.predict(pd.DataFrame([{"premise": "A dog runs."}]))
    from mlflow.exceptions import MlflowException

    for rec, expect in (({"premise": "", "hypothesis": "A dog."}, "request 0: field 'premise': empty"),
                        ({"premise": "A dog.", "hypothesis": "   "}, "request 0: field 'hypothesis': empty")):
        with pytest.raises(MlflowException, match=expect):
            model.predict(pd.DataFrame([rec]))
    # the baseline is tracked and written to the table, not registered
    assert main(["dissan", "--params", tiny_nli, "--variant", "bilstm_max", "--set", "train.epochs=2"]) == 0
    base = json.loads((tmp_path / "metrics" / "dissan" / "bilstm_max-sick.json").read_text())
    assert base["variant"] == "bilstm_max" and "registry" not in base
    assert len(c.search_model_versions("name='dissan'")) == 1


def test_seed_table_reports_mean_and_std_per_variant(tiny_nli, tmp_path, monkeypatch):
    from scripts.dissan_table import main as table

    monkeypatch.chdir(tmp_path)
    assert table(["--params", tiny_nli, "--seeds", "0", "1", "--variants", "dissan", "bilstm_max", "--set", "train.epochs=2",
                  "--out", str(tmp_path / "t")]) == 0
    res = json.loads((tmp_path / "t.json").read_text())
    assert [(r["variant"], r["seed"]) for r in res["runs"]] == [("dissan", 0), ("dissan", 1), ("bilstm_max", 0), ("bilstm_max", 1)]
    s = res["summary"]["dissan"]
    accs = [r["test_accuracy"] for r in res["runs"] if r["variant"] == "dissan"]
    assert s["test_mean"] == pytest.approx(np.mean(accs)) and s["test_std"] == pytest.approx(np.std(accs, ddof=1))
    md = (tmp_path / "t.md").read_text()
    assert "DisSAN" in md and "BiLSTM-max (baseline)" in md and f"{s['test_mean']:.4f} ± {s['test_std']:.4f}" in md
