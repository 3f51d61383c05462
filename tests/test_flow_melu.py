"""End-to-end: the MeLU Prefect flow on a tiny config into a temporary MLflow store, then serving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import free_port

pytestmark = pytest.mark.slow


def _params_file(tmp_path, cfg) -> str:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"melu": cfg.model_dump(mode="json")}))
    return str(p)


@pytest.fixture
def flow_result(prefect_harness, mlflow_store, tiny_cfg, tmp_path, monkeypatch):
    from flows.model import model_flow

    monkeypatch.chdir(tmp_path)
    params = _params_file(tmp_path, tiny_cfg)
    return model_flow("melu", params_path=params), params


def test_flow_trains_evaluates_registers_and_serves_pyfunc(flow_result, tiny_cfg, tmp_path):
    result, params = flow_result
    c = MlflowClient()
    run = c.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    for key in ("git_commit", "prefect.flow_run_id", "model"):
        assert key in run.data.tags
    assert run.data.tags["prefect.flow_run_id"]
    assert run.data.params["melu.train.local_steps"] == str(tiny_cfg.train.local_steps)
    history = c.get_metric_history(result["run_id"], "train_query_mse")
    assert [m.step for m in history] == list(range(1, tiny_cfg.train.epochs + 1))
    for state in ("warm", "user_cold", "item_cold", "user_and_item_cold"):
        assert 0 < result["metrics"][f"{state}_mae"] < 4 and 0 < result["metrics"][f"{state}_ndcg_at_3"] <= 1
    # DVC metrics/plots files and MLflow artifacts
    metrics = json.loads(open(tmp_path / "metrics" / "melu.json").read())["melu"]
    assert metrics["cold_mae_mean"] == pytest.approx(result["metrics"]["cold_mae_mean"])
    assert (tmp_path / "plots" / "melu" / "learning_curve.csv").read_text().count("\n") == tiny_cfg.train.epochs + 1
    arts = {a.path for a in c.list_artifacts(result["run_id"], "evidence")}
    assert {"evidence/evidence_candidates.csv", "evidence/top_k.json"} <= arts
    top = json.loads(open(mlflow.artifacts.download_artifacts(run_id=result["run_id"], artifact_path="evidence/top_k.json")).read())
    assert len(top) == tiny_cfg.evidence.top_k and [t["rank"] for t in top] == list(range(1, tiny_cfg.evidence.top_k + 1))
    # registry: first version is champion
    assert result["registry"]["promoted"]
    champ = c.get_model_version_by_alias("melu", "champion")
    assert champ.run_id == result["run_id"]
    # the pyfunc adapts on the support set and ranks candidates best first
    model = mlflow.pyfunc.load_model("models:/melu@champion")
    req = pd.DataFrame([{"gender": "M", "age": "25", "occupation": "4", "zip": "10003", "support_items": [1, 2, 3],
                         "support_ratings": [5.0, 1.0, 4.0], "candidate_items": [10, 11, 12, 13]}])
    out = model.predict(req)
    assert list(out.movie_id.sort_values()) == [10, 11, 12, 13] and list(out["rank"]) == [1, 2, 3, 4]
    assert out.predicted_rating.is_monotonic_decreasing
    # an unseen zip code (a new user's often is) falls back to the mean zip embedding, and says so
    new_zip = model.predict(req.assign(zip="99999"))
    assert set(new_zip.fallback) == {"zip 99999 unseen: mean zip embedding"} and set(out.fallback) == {""}
    assert sorted(new_zip.movie_id) == [10, 11, 12, 13]
    with pytest.raises(Exception, match=r"request 0: field 'gender': unknown value 'X'; expected one of"):
        model.predict(req.assign(gender="X"))
    # integer ratings pass the signature; ratings off the 1-5 scale, NaN and an empty candidate list are refused
    assert model.predict(req.assign(support_ratings=[[5, 1, 4]])).equals(out)
    for bad, field in (([50, 1, 4], "support_ratings"), ([-3, 1, 4], "support_ratings"), ([float("nan"), 1, 4], "support_ratings")):
        with pytest.raises(Exception, match=f"request 0: field '{field}'"):
            model.predict(req.assign(support_ratings=[bad]))
    with pytest.raises(Exception, match="request 0: field 'candidate_items': empty list"):
        model.predict(req.assign(candidate_items=[[]]))


def test_rerun_of_the_same_config_registers_nothing_new(flow_result, tiny_cfg, tmp_path):
    from flows.model import model_flow

    result, params = flow_result
    again = model_flow("melu", params_path=params)  # reuses the finished checkpoint: the same weights
    c = MlflowClient()
    assert again["registry"]["reused"] and again["registry"]["candidate_version"] == result["registry"]["candidate_version"]
    assert len(c.search_model_versions("name='melu'")) == 1
    assert again["bundle"]["card"] == result["bundle"]["card"] and again["metrics"] == result["metrics"]
    assert c.get_run(again["run_id"]).data.tags["registry.reused"] == "true"


def test_second_flow_with_worse_gate_stays_challenger(flow_result, tiny_cfg, tmp_path):
    from flows.model import model_flow

    result, params = flow_result
    worse = model_flow("melu", params_path=params, overrides={"train.epochs": 1, "train.global_lr": 1e-6, "evidence.enabled": False})
    c = MlflowClient()
    assert worse["metrics"]["cold_mae_mean"] > result["metrics"]["cold_mae_mean"]
    assert not worse["registry"]["promoted"]
    assert c.get_model_version_by_alias("melu", "champion").run_id == result["run_id"]
    assert c.get_model_version_by_alias("melu", "challenger").run_id == worse["run_id"]
    comparison = json.loads(open(mlflow.artifacts.download_artifacts(run_id=worse["run_id"], artifact_path="registry/comparison.json")).read())
    assert comparison["champion_version"] == str(c.get_model_version_by_alias("melu", "champion").version)


def test_mlflow_models_serve_answers(flow_result, mlflow_store, tmp_path):
    port = free_port()
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    mlflow_bin = os.path.join(bindir, "mlflow")
    proc = subprocess.Popen([mlflow_bin, "models", "serve", "-m", "models:/melu@champion", "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port), "-w", "1"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"mlflow models serve exited: {proc.stdout.read()[-3000:]}")
                time.sleep(1)
        body = json.dumps({"dataframe_records": [{"gender": "F", "age": "35", "occupation": "1", "zip": "10002",
                                                  "support_items": [4, 5], "support_ratings": [2, 5],  # integers, as people write them
                                                  "candidate_items": [20, 21, 22]}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=60).read())
        rows = answer["predictions"]
        assert sorted(r["movie_id"] for r in rows) == [20, 21, 22]
        assert [r["rank"] for r in rows] == [1, 2, 3]
        assert rows[0]["predicted_rating"] >= rows[-1]["predicted_rating"]
        # bad input: a 400 whose top-level message names request, field and value, with no traceback or path
        good = {"gender": "F", "age": "35", "occupation": "1", "zip": "10002", "support_items": [4, 5],
                "support_ratings": [2, 5], "candidate_items": [20, 21, 22]}
        for change, expect in (({"support_ratings": [50, 5]}, "request 0: field 'support_ratings': value 50"),
                               ({"support_ratings": [-3, 5]}, "request 0: field 'support_ratings': value -3"),
                               ({"candidate_items": []}, "request 0: field 'candidate_items': empty list"),
                               ({"candidate_items": [999999]}, "request 0: field 'candidate_items': movie id 999999")):
            body = json.dumps({"dataframe_records": [{**good, **change}]}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=60)
            assert err.value.code == 400
            reply = json.loads(err.value.read())
            assert expect in reply["message"], reply
            assert "stack_trace" not in reply and "/work" not in reply["message"] and str(tmp_path) not in json.dumps(reply)
        # NaN is not valid JSON; as the scoring server parses it (pandas), it must still be refused
        body = b'{"dataframe_records": [{"gender": "F", "age": "35", "occupation": "1", "zip": "10002", "support_items": [4, 5], "support_ratings": [NaN, 5], "candidate_items": [20]}]}'
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=60)
        assert err.value.code == 400 and "NaN" not in json.loads(err.value.read()).get("predictions", "")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_failed_flow_marks_its_run_failed(prefect_harness, mlflow_store, tiny_cfg, tmp_path, monkeypatch):
    from flows.model import model_flow

    monkeypatch.chdir(tmp_path)
    bad = tiny_cfg.model_copy(update={"data": tiny_cfg.data.model_copy(update={"processed_dir": str(tmp_path / "missing")})})
    with pytest.raises(Exception, match="missing"):
        model_flow("melu", params_path=_params_file(tmp_path, bad))
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("melu").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
