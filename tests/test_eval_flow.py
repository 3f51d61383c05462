"""``eval_lm`` (eval_harness/flow.py): a registered model (``models:/bilingual_lm@champion`` in a temporary MLflow) is
resolved to the version its alias names, evaluated on mirror tasks, and logged as one MLflow run (records, results
table, bar chart, metrics), the model version tagged with that run; the DVC outputs hold the numbers, no run id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import mirror_dir

pytestmark = [pytest.mark.mirror, pytest.mark.slow]


@pytest.fixture
def registered_tiny(mlflow_store, tmp_path):
    """A tiny random Llama + tokenizer logged with the transformers flavour and registered as bilingual_lm v1, alias
    champion (the layout the bilingual LM's own log_model gives: model/ + components/tokenizer/)."""
    import mlflow
    import torch
    from mlflow import MlflowClient
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from eval_harness.tiny import build_tiny_lm

    torch.set_num_threads(1)
    texts = (mirror_dir("kobest") / "v1.0" / "COPA" / "train.tsv").read_text(encoding="utf-8").splitlines()[:400]
    d = build_tiny_lm(tmp_path / "tiny", texts, vocab_size=300, max_position_embeddings=256)
    pipe = pipeline("text-generation", model=AutoModelForCausalLM.from_pretrained(d),
                    tokenizer=AutoTokenizer.from_pretrained(d), device="cpu")
    exp = MlflowClient().create_experiment("bilingual_lm")  # not set_experiment: no active experiment leaks out
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.transformers.log_model(transformers_model=pipe, name="model", task="text-generation",
                                      pip_requirements=["transformers"], input_example="Hello")
    c = MlflowClient()
    v = mlflow.register_model(f"runs:/{run.info.run_id}/model", "bilingual_lm")
    c.set_registered_model_alias("bilingual_lm", "champion", v.version)
    return {"run_id": run.info.run_id, "version": v.version, "dir": d}


def test_eval_lm_flow_logs_a_run_and_writes_the_dvc_outputs(prefect_harness, registered_tiny, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from eval_harness.flow import eval_lm_flow

    root = mirror_dir("kobest").parent
    mirror_dir("humaneval")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"eval_lm": {
        "model": "models:/bilingual_lm@champion", "data_root": str(root), "tasks": ["kobest_copa"],
        "generation_tasks": ["humaneval"], "generation_limit": 2, "gen_kwargs": {"max_gen_toks": 8},
        "batch_size": 16, "torch_threads": 1, "experiment": "bilingual_lm-eval",
        "out_dir": str(tmp_path / "out"), "metrics": str(tmp_path / "metrics" / "eval_lm.json"),
        "plot": str(tmp_path / "plots" / "eval_lm.png")}}))
    monkeypatch.chdir(tmp_path)
    res = eval_lm_flow(str(params))
    assert res["model"]["version"] == registered_tiny["version"] and res["model"]["alias"] == "champion"
    assert res["model"]["run_id"] == registered_tiny["run_id"]
    copa, he = res["results"]["kobest_copa"], res["results"]["humaneval"]
    assert copa["n"] == 1000 and 0.3 < copa["acc"] < 0.7  # a random model on the full test split
    assert he["n"] == 2 and he["pass@1"] == 0.0

    c = MlflowClient()
    run = c.get_run(res["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["model.version"] == str(registered_tiny["version"])
    assert run.data.tags["model.run_id"] == registered_tiny["run_id"]
    assert run.data.metrics["kobest_copa/acc"] == pytest.approx(copa["acc"])
    assert run.data.metrics["humaneval/pass_at_1"] == 0.0
    arts = {a.path for a in c.list_artifacts(res["run_id"])}
    assert {"results.json", "results.md", "results_bar.png", "samples", "eval_config.json"} <= arts
    samples = {a.path for a in c.list_artifacts(res["run_id"], "samples")}
    assert samples == {"samples/samples_kobest_copa.jsonl", "samples/samples_humaneval.jsonl"}
    mv = c.get_model_version("bilingual_lm", registered_tiny["version"])
    assert mv.tags["eval_lm.run_id"] == res["run_id"]

    written = json.loads((tmp_path / "metrics" / "eval_lm.json").read_text())
    assert written["results"]["kobest_copa"]["acc"] == copa["acc"] and not {"run_id", "version"} & set(written["model"])
    assert written["config"]["limit"] == {"kobest_copa": None, "humaneval": 2}
    assert (tmp_path / "plots" / "eval_lm.png").read_bytes()[:4] == b"\x89PNG"
    recs = (tmp_path / "out" / "samples_kobest_copa.jsonl").read_text().splitlines()
    assert len(recs) == 1000 and json.loads(recs[0])["choices"]


def test_an_unregistered_model_is_a_clear_error(mlflow_store, tmp_path):
    from eval_harness.mlflow_log import resolve_model

    with pytest.raises(FileNotFoundError, match=r"models:/bilingual_lm@champion: not in the registry of sqlite"):
        resolve_model("models:/bilingual_lm@champion", tmp_path / "m")


def test_bad_config_fails_before_any_work(tmp_path):
    from data.config import ConfigError
    from eval_harness.flow import load_config, main

    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"eval_lm": {"tasks": ["kobest_nope"]}}))
    with pytest.raises(ConfigError, match="unknown task 'kobest_nope'"):
        load_config(p)
    p.write_text(yaml.safe_dump({"eval_lm": {"generation_limit": 0}}))
    assert main(["--params", str(p)]) == 2


def test_metric_names_and_primary_metrics():
    from eval_harness.mlflow_log import flat_metrics, metric_name, primary

    assert metric_name("humaneval", "pass@1") == "humaneval/pass_at_1"
    assert metric_name("gsm8k", "exact_match,strict-match") == "gsm8k/exact_match/strict-match"
    out = {"results": {"t": {"acc": 0.5, "acc_stderr": 0.1, "n": 10}, "c": {"korean_text": {"chars_per_token": 2.0,
                                                                                         "texts": 11}}},
           "groups": {"g": {"acc": 0.4, "f1": None}}}
    assert flat_metrics(out) == {"t/acc": 0.5, "t/acc_stderr": 0.1, "c/korean_text/chars_per_token": 2.0, "g/acc": 0.4}
    assert primary({"acc": 0.5, "f1": 0.2}) == ("acc", 0.5) and primary({"bits_per_byte": 1.5}) == ("bits_per_byte", 1.5)
    assert primary({"korean_text": {}}) is None
