"""End-to-end: the sequential-recommendation flow on a tiny synthetic dataset into a temporary MLflow."""

from __future__ import annotations

import json
import re

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from models.seqrec.config import SeqRecConfig

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_seqrec(tmp_path):
    from models.seqrec.tiny import tiny

    section = tiny(tmp_path)
    section["train"].update({"epochs": 4})  # enough epochs for early stopping (patience 2) to matter
    section["outputs"] = SeqRecConfig().outputs.model_dump()  # relative: the tests read tmp_path/metrics/seqrec
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"seqrec": section}))
    return str(p)


def test_seqrec_flow_registers_each_model_and_serves_top_k(prefect_harness, mlflow_store, tiny_seqrec, tmp_path, monkeypatch):
    from flows.model import model_flow

    monkeypatch.chdir(tmp_path)
    fanc = model_flow("seqrec", params_path=tiny_seqrec)
    gru = model_flow("seqrec", params_path=tiny_seqrec, variant="gru4rec")
    c = MlflowClient()
    for name, res in (("fanc", fanc), ("gru4rec", gru)):
        assert res["registry"]["promoted"] and res["registry"]["gate_metric"] == "valid_ndcg_at_10"
        assert c.get_model_version_by_alias(name, "champion_beauty").run_id == res["run_id"]
        # the DVC metrics file of the run holds the same numbers
        written = json.loads((tmp_path / "metrics" / "seqrec" / f"{name}-Beauty.json").read_text())
        assert written["test"] == {k: v for k, v in res["test"].items() if k != "test_eval_seconds"}
        assert written["training"]["epochs"] == res["epochs"] and "run_id" not in written
        assert not any(k.endswith(("_seconds", "_per_s")) for k in (*written["training"], *written["best_valid"], *written["test"]))
        specific = mlflow.artifacts.load_dict(f"runs:/{res['run_id']}/metrics/run_specific.json")  # timings: the run's own
        assert specific["run_id"] == res["run_id"] and specific["training"]["train_seq_per_s"] > 0
        assert 0 <= res["test"]["test_ndcg_at_10"] <= res["test"]["test_hr_at_10"] <= 1
        run = c.get_run(res["run_id"])
        assert run.data.tags["eval.protocol"] == "full ranking over all items" and run.data.tags["dataset"] == "Beauty"
        assert [m.step for m in c.get_metric_history(res["run_id"], "valid_ndcg_at_10")] == list(range(1, res["epochs"] + 1))
    assert c.get_run(fanc["run_id"]).data.tags["reconstruction"] == "true"
    # FaNC's analysis: gate histogram (shares sum to 1) and the trajectory figure, in DVC plots and MLflow
    hist = pd.read_csv(tmp_path / "plots" / "seqrec" / "fanc-Beauty" / "gate_hist.csv")
    assert hist.users_last_step.sum() == pytest.approx(1.0) and hist.all_steps.sum() == pytest.approx(1.0)
    assert (tmp_path / "plots" / "seqrec" / "fanc-Beauty" / "trajectory.png").stat().st_size > 0
    assert 0.0 <= fanc["fanc_analysis"]["gate_mean_last"] <= 1.0
    arts = {a.path for a in c.list_artifacts(fanc["run_id"], "figures")}
    assert {"figures/gate_hist.png", "figures/trajectory.png", "figures/gate_statistics.json"} <= arts
    model = mlflow.pyfunc.load_model("models:/fanc@champion_beauty")
    out = model.predict(pd.DataFrame([{"history": [3, 4, 5], "k": 4}]))
    assert list(out["rank"]) == [1, 2, 3, 4] and not set(out.item_id) & {3, 4, 5}
    assert out.score.is_monotonic_decreasing
    with pytest.raises(Exception, match=r"request 0: field 'history': no known item id \(ids are 1 to \d+; got \[999\]\)"):
        model.predict(pd.DataFrame([{"history": [999], "k": 2}]))
    # unknown ids are left out of the history, and the reply says so
    mixed = model.predict(pd.DataFrame([{"history": [3, 4, 5, 999], "k": 4}]))
    assert list(mixed.item_id) == list(out.item_id) and set(mixed.fallback) == {"ignored 1 unknown item id(s): [999]"}
    assert set(out.fallback) == {""}
    from mlflow.exceptions import MlflowException

    for rec, expect in (({"history": [], "k": 2}, "request 0: field 'history': empty list"),
                        ({"history": [3], "k": 0}, "request 0: field 'k': value 0; expected an integer from 1")):
        with pytest.raises(MlflowException, match=re.escape(expect)):
            model.predict(pd.DataFrame([rec]))


def test_ablation_is_tracked_but_not_registered_and_the_table_reads_it(prefect_harness, mlflow_store, tiny_seqrec, tmp_path, monkeypatch):
    from flows.model import main
    from models.seqrec.config import VARIANTS

    monkeypatch.chdir(tmp_path)
    assert main(["seqrec", "--params", tiny_seqrec, "--variant", "fanc_no_gravity", "--set", "train.epochs=1",
                 "--record", "run.json", "--model-out", "bundle"]) == 0
    res = json.loads((tmp_path / "metrics" / "seqrec" / "fanc_no_gravity-Beauty.json").read_text())
    assert res["variant"] == "fanc_no_gravity" and "registry" not in res and res["label"] == "FaNC (reconstruction)"
    card = json.loads((tmp_path / "bundle" / "model.json").read_text())  # the DVC output: weights + card, not registered
    assert card["registered_model"] is None and card["stage"] == "models/seqrec/dvc.yaml:train_seqrec@fanc_no_gravity-Beauty"
    assert (tmp_path / "bundle" / "model.pt").stat().st_size > 0 and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    run = MlflowClient().get_run(json.loads((tmp_path / "run.json").read_text())["run_id"])
    assert run.data.tags["variant"] == "fanc_no_gravity" and run.data.params["seqrec.model.fanc.gravity"] == "False"
    assert not MlflowClient().search_registered_models()
    # no gravity: the unconscious state never leaves u_0, so no trajectory is drawn
    assert not (tmp_path / "plots" / "seqrec" / "fanc_no_gravity-Beauty" / "trajectory.png").exists()
    assert set(VARIANTS) == {"gru4rec", "sasrec", "fanc", "fanc_no_gravity", "fanc_no_gate"}

    from scripts.seqrec_table import main as table

    assert table(["--metrics-dir", str(tmp_path / "metrics" / "seqrec"), "--out", str(tmp_path / "t"), "--plot", str(tmp_path / "t.png")]) == 0
    md = (tmp_path / "t.md").read_text()
    assert "FaNC (reconstruction), no gravity" in md and "full ranking over all items" in md
    assert f"{res['test']['test_ndcg_at_10']:.4f}" in md
