"""DisSAN's declaration for the generic flow, one dataset (sick | snli) and variant (dissan | dissan_no_distance |
bilstm_max) per run: train (selection on dev accuracy) -> dev/test evaluation (length buckets, confusion matrix) ->
metrics file -> log model -> register.

Only the ``dissan`` variant registers, as model ``dissan`` gated per dataset on dev accuracy (aliases
``champion_sick`` / ``champion_snli``); the ablation and the BiLSTM-max baseline are tracked, not registered. An
SNLI run without the SNLI train split is a pipeline check, tagged ``comparable_to_paper=false`` and never
registered.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.common import tracking
from models.common.checkpoint import atomic_torch_save
from models.common.contract import Evaluation, ModelSpec, RunIdentity, Stage, dvc_address
from models.common.seed import select_device
from models.dissan import recipe, report
from models.dissan.tiny import tiny
from models.dissan.config import VARIANTS, DissanConfig, variant_of
from models.dissan.modeling import NLIClassifier


def identity(cfg: DissanConfig) -> RunIdentity:
    dataset, variant, r = cfg.data.dataset, variant_of(cfg), cfg.registry
    return RunIdentity(
        experiment=f"{r.experiment}-{dataset}", run_name=f"{variant}-{dataset}", dvc_stage=dvc_address("dissan", f"train_dissan@{variant}-{dataset}"),
        registered_model=r.model_name if variant == "dissan" else None, gate_metric=r.gate_metric, gate_mode=r.gate_mode,
        scope=dataset, data_paths=(f"{cfg.data.raw_dir}/{dataset}", cfg.data.vectors),
        tags={"model": "dissan", "dataset": dataset, "variant": variant})


def train(cfg: DissanConfig, run_id: str, done: dict) -> dict:
    """Train for the configured epochs; per-epoch metrics to ``run_id``; the best-dev weights + vocabulary."""
    log_epoch = tracking.EpochLogger(run_id)
    model, history, data = recipe.train(cfg, on_epoch_end=[log_epoch])
    log_epoch.backfill(history)  # epochs restored from a checkpoint of an earlier attempt
    out_dir = Path("outputs") / "dissan" / run_id
    weights = atomic_torch_save({k: v.cpu() for k, v in model.state_dict().items()}, out_dir / "model.pt")
    meta = tracking.atomic_write_json(out_dir / "pyfunc_meta.json", {
        "itos": data.vocab.itos, "lowercase": data.vocab.lowercase, "max_len": cfg.data.max_len,
        "model": cfg.model.model_dump(mode="json"), "tokenizer": "PTB regex rules (models.dissan.data.ptb_tokenize)"})
    tracking.log_file(run_id, tracking.write_history_csv(history, report.plots_dir(cfg) / "learning_curve.csv"), "plots")
    tracking.log_json(run_id, data.info, "data/info.json")
    c = tracking.client()
    c.set_tag(run_id, "eval.protocol", data.info["protocol"])
    c.set_tag(run_id, "comparable_to_paper", str(data.info["comparable_to_paper"]).lower())
    best = max(history, key=lambda h: h[recipe.SELECT_METRIC])
    return {"weights": str(weights), "meta": str(meta), "epochs": len(history), "best_dev": best, "data": data.info,
            "n_trainable": model.n_trainable()}


def evaluate(cfg: DissanConfig, run_id: str, done: dict) -> Evaluation:
    """Dev and test accuracy of the selected model, per length bucket, and the test confusion matrix."""
    trained = done["train"]
    device = select_device(cfg.train.device)
    data = recipe.prepare(cfg)
    model = NLIClassifier(cfg.model, data.vectors).to(device)
    model.load_state_dict(torch.load(trained["weights"], map_location=device, weights_only=True))
    out = {split: recipe.evaluate(model, data.splits[split], device, cfg.eval.length_buckets) for split in ("dev", "test")}
    metrics = {f"{split}_accuracy": out[split]["accuracy"] for split in out}
    for name, b in out["test"]["buckets"].items():
        if b["accuracy"] is not None:
            metrics[f"test_accuracy_{name}"] = b["accuracy"]
    tracking.log_metrics(run_id, metrics)
    report.write_test_figures(cfg, run_id, out["test"])
    tracking.log_json(run_id, out, "evaluation/dev_test.json")
    dataset, variant = cfg.data.dataset, variant_of(cfg)
    result = {
        "run_id": run_id, "variant": variant, "dataset": dataset, "protocol": trained["data"]["protocol"],
        "comparable_to_paper": trained["data"]["comparable_to_paper"], "epochs": trained["epochs"],
        "n_trainable_parameters": trained["n_trainable"], "best_dev": trained["best_dev"],
        "dev_accuracy": metrics["dev_accuracy"], "test_accuracy": metrics["test_accuracy"],
        "test_buckets": out["test"]["buckets"], "test_confusion": out["test"]["confusion"],
        "oov_rate": trained["data"]["oov_rate"], "vectors": trained["data"]["vectors"],
    }
    tracking.write_metrics(Path(cfg.outputs.metrics_dir) / f"{variant}-{dataset}.json", result, run_id)
    comparable = bool(result["comparable_to_paper"])
    return Evaluation(result, metrics[cfg.registry.gate_metric], registrable=comparable,
                      dvc_stage=None if comparable else dvc_address("dissan", f"{dataset}_check_dissan"))


def log_model(cfg: DissanConfig, run_id: str, done: dict) -> str:
    import pandas as pd

    from models.dissan.pyfunc import NLIPyfunc

    example = pd.DataFrame([{"premise": "A man is playing a guitar on stage.", "hypothesis": "A person is performing music."}])
    return tracking.log_pyfunc(run_id, NLIPyfunc(), {"weights": done["train"]["weights"], "meta": done["train"]["meta"]}, example)


MODEL = ModelSpec.of(
    __name__,
    name="dissan",
    description="DisSAN (distance-based self-attention NLI encoder) and the BiLSTM-max baseline.",
    config=DissanConfig,
    stages=(Stage("train", train),),
    variants=VARIANTS,
    data_targets=("download@snli", "download@sick", "download@glove_6b_50d"),
    example="data.dataset=snli",
)
