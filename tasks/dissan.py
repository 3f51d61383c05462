"""Prefect tasks of the DisSAN flow: train (resumable, selection on dev), evaluate (accuracy, length
buckets, confusion matrix), log the pyfunc. Files for DVC go under ``outputs.plots_dir/<variant>-<dataset>/``."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task

from models.common import tracking
from models.common.checkpoint import atomic_torch_save
from models.common.config import load_section
from models.common.seed import select_device
from models.dissan import recipe
from models.dissan.config import DissanConfig, variant_of
from models.dissan.modeling import NLIClassifier


def _cfg(params_path: str, overrides: dict) -> DissanConfig:
    return load_section(DissanConfig, "dissan", params_path, overrides)


def plots_dir(cfg: DissanConfig) -> Path:
    return Path(cfg.outputs.plots_dir) / f"{variant_of(cfg)}-{cfg.data.dataset}"


@task(retries=1, retry_delay_seconds=5)
def train_dissan(params_path: str, overrides: dict, run_id: str, out_dir: str) -> dict:
    """Train for the configured epochs; per-epoch metrics to ``run_id``; the best-dev weights + vocabulary."""
    cfg = _cfg(params_path, overrides)
    log_epoch = tracking.EpochLogger(run_id)
    model, history, data = recipe.train(cfg, on_epoch_end=[log_epoch])
    log_epoch.backfill(history)  # epochs restored from a checkpoint of an earlier attempt
    weights = atomic_torch_save({k: v.cpu() for k, v in model.state_dict().items()}, Path(out_dir) / "model.pt")
    meta = tracking.atomic_write_json(Path(out_dir) / "pyfunc_meta.json", {
        "itos": data.vocab.itos, "lowercase": data.vocab.lowercase, "max_len": cfg.data.max_len,
        "model": cfg.model.model_dump(mode="json"), "tokenizer": "PTB regex rules (models.dissan.data.ptb_tokenize)"})
    tracking.log_file(run_id, tracking.write_history_csv(history, plots_dir(cfg) / "learning_curve.csv"), "plots")
    tracking.log_json(run_id, data.info, "data/info.json")
    c = tracking.client()
    c.set_tag(run_id, "eval.protocol", data.info["protocol"])
    c.set_tag(run_id, "comparable_to_paper", str(data.info["comparable_to_paper"]).lower())
    best = max(history, key=lambda h: h[recipe.GATE_METRIC])
    return {"weights": str(weights), "meta": str(meta), "epochs": len(history), "best_dev": best, "data": data.info,
            "n_trainable": model.n_trainable()}


def _plot_confusion(confusion: list[list[int]], labels: list[str], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(m / m.sum(1, keepdims=True).clip(min=1), cmap="Blues", vmin=0, vmax=1)
    for i in range(3):
        for j in range(3):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=9)
    ax.set_xticks(range(3), labels, rotation=20)
    ax.set_yticks(range(3), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return tracking.save_figure(fig, path)


@task
def evaluate_dissan(params_path: str, overrides: dict, run_id: str, weights: str) -> dict:
    """Dev and test accuracy of the selected model, per length bucket, and the test confusion matrix."""
    cfg = _cfg(params_path, overrides)
    device = select_device(cfg.train.device)
    data = recipe.prepare(cfg)
    model = NLIClassifier(cfg.model, data.vectors).to(device)
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    out = {split: recipe.evaluate(model, data.splits[split], device, cfg.eval.length_buckets) for split in ("dev", "test")}
    metrics = {f"{split}_accuracy": out[split]["accuracy"] for split in out}
    for name, b in out["test"]["buckets"].items():
        if b["accuracy"] is not None:
            metrics[f"test_accuracy_{name}"] = b["accuracy"]
    tracking.log_metrics(run_id, metrics)
    d = plots_dir(cfg)
    rows = ["bucket,n,accuracy"] + [f"{k},{b['n']},{'' if b['accuracy'] is None else round(b['accuracy'], 6)}" for k, b in out["test"]["buckets"].items()]
    files = [tracking.atomic_write_text(d / "test_length_buckets.csv", "\n".join(rows) + "\n"),
             _plot_confusion(out["test"]["confusion"], out["test"]["labels"],
                             f"{variant_of(cfg)} on {cfg.data.dataset} test (acc {out['test']['accuracy']:.4f})", d / "confusion_test.png")]
    for f in files:
        tracking.log_file(run_id, f, "figures")
    tracking.log_json(run_id, out, "evaluation/dev_test.json")
    return {"metrics": metrics, "dev": out["dev"], "test": out["test"]}


@task(retries=2, retry_delay_seconds=[2, 8])
def log_dissan_model(run_id: str, weights: str, meta: str) -> str:
    import pandas as pd

    from models.dissan.pyfunc import NLIPyfunc

    example = pd.DataFrame([{"premise": "A man is playing a guitar on stage.", "hypothesis": "A person is performing music."}])
    return tracking.log_pyfunc(run_id, NLIPyfunc(), {"weights": weights, "meta": meta}, example)

