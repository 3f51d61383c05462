"""The sequential recommenders' declaration for the generic flow, one model (fanc | gru4rec | sasrec) and dataset
per run: train (early stopping on validation NDCG@10 under a fixed maximum of epochs) -> test evaluation -> FaNC
gate and trajectory analysis -> metrics file -> log model -> register.

The registered model is named after the model (``registry.model_name``: ``fanc``, ``gru4rec``, ``sasrec``, set by
the variants) and gated per dataset: aliases ``champion_<dataset>`` / ``challenger_<dataset>`` (e.g.
``models:/fanc@champion_beauty``), gate metric ``registry.gate_metric`` (validation NDCG@10, higher is better). The FaNC ablations (variants ``fanc_no_gravity`` / ``fanc_no_gate``) are tracked and
written to the table but not registered. FaNC is a reconstruction (see models/seqrec/modeling.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.common import distributed, tracking
from models.common.checkpoint import atomic_torch_save
from models.common.contract import Evaluation, ModelSpec, RunIdentity, Stage, dvc_address
from models.common.seed import select_device
from models.seqrec import recipe, report
from models.seqrec.tiny import tiny
from models.seqrec.config import ABLATIONS, VARIANTS, SeqRecConfig, variant_of
from models.seqrec.metrics import FULL
from models.seqrec.modeling import build_model


def identity(cfg: SeqRecConfig) -> RunIdentity:
    name, dataset, variant, r = cfg.model.name, cfg.data.dataset, variant_of(cfg), cfg.registry
    return RunIdentity(
        experiment=f"{r.experiment}-{dataset}", run_name=f"{variant}-{dataset}", dvc_stage=dvc_address("seqrec", f"train_seqrec@{variant}-{dataset}"),
        registered_model=None if variant in ABLATIONS else r.model_name, gate_metric=r.gate_metric, gate_mode=r.gate_mode,
        scope=dataset.lower(), data_paths=("data/raw/s3rec_sequences", cfg.data.processed_dir),
        tags={"model": name, "dataset": dataset, "variant": variant, "reconstruction": str(name == "fanc").lower(),
              "reproducible": str(recipe.stop_rule(cfg).reproducible).lower()})


def _load(cfg: SeqRecConfig, weights: str):
    device = select_device(cfg.train.device)
    data = recipe.load_data(cfg)
    model = build_model(cfg.model, data.n_items, cfg.data.max_len).to(device)
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    return model, data, device


def train(cfg: SeqRecConfig, run_id: str, done: dict) -> dict:
    """Train until the stopping rule; per-epoch metrics to ``run_id``; the best weights' path and why it stopped."""
    log_epoch = tracking.EpochLogger(run_id)
    model, history = recipe.train(cfg, on_epoch_end=[log_epoch])
    weights = Path("outputs") / "seqrec" / run_id / "model.pt"
    if not distributed.is_main():  # under torchrun rank 0 writes and reports; the flow takes its result
        return {"weights": str(weights)}
    log_epoch.backfill(history)  # epochs restored from a checkpoint of an earlier attempt
    atomic_torch_save({k: v.cpu() for k, v in model.state_dict().items()}, weights)
    curves = tracking.write_history_csv(history, report.plots_dir(cfg) / "learning_curve.csv")
    tracking.log_file(run_id, curves, "plots")
    best = max(history, key=lambda h: h[recipe.SELECT_METRIC])
    budget = {
        "epochs": len(history),
        "train_seconds": sum(h["train_seconds"] for h in history),
        "valid_seconds": sum(h["valid_seconds"] for h in history),
        "train_seq_per_s": sum(h["train_seq_per_s"] for h in history) / len(history),
        "train_targets_per_s": sum(h["train_targets_per_s"] for h in history) / len(history),
        "valid_eval_seconds_per_epoch": sum(h["valid_seconds"] for h in history) / len(history),
    }
    if "clip_fraction" in history[-1]:
        budget["train_clip_fraction_last_epoch"] = history[-1]["clip_fraction"]
    return {"weights": str(weights), "epochs": len(history), "best_valid": best, "training": budget,
            "stopping": recipe.stop_rule(cfg).summary(history)}


def evaluate(cfg: SeqRecConfig, run_id: str, done: dict) -> Evaluation:
    """Test metrics of the best-validation model (protocol recorded with the numbers), FaNC's figures, metrics file."""
    import time

    trained = done["train"]
    model, data, device = _load(cfg, trained["weights"])
    started = time.perf_counter()
    test = {f"test_{k}": v for k, v in recipe.evaluate(model, data.test, cfg, device).items()}
    test["test_eval_seconds"] = time.perf_counter() - started
    tracking.log_metrics(run_id, test)
    protocol = FULL if cfg.eval.protocol == "full" else f"sampled: {cfg.eval.n_negatives} negatives"
    c = tracking.client()
    c.set_tag(run_id, "eval.protocol", protocol)
    c.set_tag(run_id, "eval.mask_history", str(cfg.eval.mask_history).lower())
    analysis = report.fanc_figures(cfg, run_id, model, data, device)
    name, dataset, variant = cfg.model.name, cfg.data.dataset, variant_of(cfg)
    result = {
        "run_id": run_id, "model": name, "variant": variant, "dataset": dataset,
        "label": "FaNC (reconstruction)" if name == "fanc" else name,
        "protocol": FULL if cfg.eval.protocol == "full" else f"sampled: {cfg.eval.n_negatives} negatives (not comparable to full ranking)",
        "mask_history": cfg.eval.mask_history, "stopping": trained["stopping"],
        "best_valid": trained["best_valid"], "test": test, "epochs": trained["epochs"],
        "training": trained["training"], "fanc_analysis": analysis,
    }
    tracking.write_metrics(Path(cfg.outputs.metrics_dir) / f"{variant}-{dataset}.json", result, run_id)
    return Evaluation(result, trained["best_valid"][cfg.registry.gate_metric])


def log_model(cfg: SeqRecConfig, run_id: str, done: dict) -> str:
    import pandas as pd

    from models.seqrec.pyfunc import SeqRecPyfunc

    weights = done["train"]["weights"]
    data = recipe.load_data(cfg)
    meta = Path(weights).with_name("pyfunc_meta.json")
    meta.write_text(json.dumps({"n_items": data.n_items, "max_len": cfg.data.max_len, "model": cfg.model.model_dump(mode="json")}))
    example = pd.DataFrame([{"history": [int(i) for i in data.test.history[0][-5:]], "k": 5}])
    return tracking.log_pyfunc(run_id, SeqRecPyfunc(), {"weights": weights, "meta": str(meta)}, example)


MODEL = ModelSpec.of(
    __name__,
    name="seqrec",
    description="Sequential recommenders: FaNC (reconstruction), GRU4Rec, SASRec on the S3-Rec sequences.",
    config=SeqRecConfig,
    stages=(Stage("train", train, distributed=True),),
    variants=VARIANTS,
    data_targets=("download@s3rec_sequences", "preprocess_seqrec"),
    example="data.dataset=Yelp --set train.epochs=5",
)
