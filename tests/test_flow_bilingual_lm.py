"""End-to-end: the bilingual LM flow on its tiny preset into a temporary MLflow: the base model (pretraining only)
registered with kind=base under champion_base, then the SFT run reusing that pretraining (by fingerprint) and
registered as champion, served as a chat model; bits per byte against the unigram baseline in the metrics file."""

from __future__ import annotations

import json
import math

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_lm(tmp_path):
    from models.bilingual_lm.tiny import tiny

    section = tiny(tmp_path / "tiny")
    section["pretrain"]["max_steps"] = 12
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"bilingual_lm": section}, allow_unicode=True))
    return str(p), section


def test_base_then_sft_register_reuse_and_serve(prefect_harness, mlflow_store, tiny_lm, tmp_path, monkeypatch):
    from flows.model import model_flow

    params, section = tiny_lm
    monkeypatch.chdir(tmp_path)
    base = model_flow("bilingual_lm", params_path=params, variant="base")
    assert base["kind"] == "base" and base["registry"]["champion_alias"] == "champion_base"
    assert base["pretrain"]["steps"] == 12 and math.isfinite(base["heldout_bpb_mean"])
    assert base["heldout_bpb_mean"] == pytest.approx((base["heldout_bpb_ko"] + base["heldout_bpb_en"]) / 2)
    written = json.loads((tmp_path / "tiny" / "metrics" / "tiny-base-plain.json").read_text())
    assert written["heldout_bpb_mean"] == base["heldout_bpb_mean"] and "run_id" not in written
    assert written["unigram_bpb_ko"] > 0 and len(written["generations"]) == 1
    curve = (tmp_path / "tiny" / "plots" / "tiny-base-plain" / "pretrain_curve.csv").read_text().splitlines()
    assert curve[0].startswith("epoch,loss,lr,grad_norm") and len(curve) == 13
    losses = [float(line.split(",")[1]) for line in curve[1:]]
    assert losses[-1] < losses[0]

    sft = model_flow("bilingual_lm", params_path=params)
    assert sft["kind"] == "sft" and sft["registry"]["champion_alias"] == "champion"
    assert sft["pretrain"] == base["pretrain"]  # the same pretraining, reused from outputs/.../pretrain
    c = MlflowClient()
    assert c.get_run(sft["run_id"]).data.tags["pretrain.reused"].endswith("tiny/pretrain-plain")
    assert sft["sft"]["steps"] == section["sft"]["max_steps"] and set(sft["sft"]["mix"]) >= {"gsm8k", "refusal"}
    versions = {v.version: v for v in c.search_model_versions("name='bilingual_lm'")}
    assert len(versions) == 2
    kinds = sorted(c.get_run(v.run_id).data.tags["kind"] for v in versions.values())
    assert kinds == ["base", "sft"]
    assert c.get_model_version_by_alias("bilingual_lm", "champion").run_id == sft["run_id"]
    assert c.get_model_version_by_alias("bilingual_lm", "champion_base").run_id == base["run_id"]
    model = mlflow.pyfunc.load_model("models:/bilingual_lm@champion")
    out = model.predict({"messages": [{"role": "user", "content": "What is 1 + 1?"}], "max_tokens": 3})
    assert out[0]["object"] == "chat.completion" and out[0]["choices"][0]["message"]["role"] == "assistant"
    assert out[0]["usage"]["completion_tokens"] <= 3
