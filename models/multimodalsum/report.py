"""MultimodalSum's committed outputs: ``<outputs.metrics_dir>/<run>.json`` (DVC metrics; run ids and times go to the
MLflow run instead, :func:`models.common.tracking.write_metrics`) and, per training step,
``<outputs.plots_dir>/<run>/<stage>_curve.csv`` + ``.png`` (train and validation loss per epoch; DVC plots)."""

from __future__ import annotations

from pathlib import Path

from models.common import tracking

LABELS = {"denoise": "step 0 denoising", "text": "step 1 text", "image": "step 2a image", "table": "step 2b table",
          "multimodal": "step 3 multimodal"}


def plots_dir(cfg) -> Path:
    return Path(cfg.outputs.plots_dir) / cfg.run


def metrics_path(cfg) -> Path:
    return Path(cfg.outputs.metrics_dir) / f"{cfg.run}.json"


def write_curve(cfg, run_id: str | None, stage: str, history: list[dict]) -> list[Path]:
    """The learning curve of one step: CSV (every non-timing column) and a PNG of train / validation loss."""
    if not history:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = plots_dir(cfg)
    csv = tracking.write_history_csv(history, out_dir / f"{stage}_curve.csv")
    epochs = list(range(1, len(history) + 1))
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="s", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss (pad_in_loss={cfg.model.pad_in_loss})")
    label = " (TEXT-ONLY)" if cfg.modalities.text_only else ""
    ax.set_title(f"MultimodalSum {cfg.run}{label}: {LABELS[stage]}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = tracking.save_figure(fig, out_dir / f"{stage}_curve.png")
    if run_id:
        for p in (csv, png):
            tracking.log_file(run_id, p, "plots")
    return [csv, png]


def write_metrics(cfg, run_id: str, result: dict) -> dict:
    """The committed metrics file (stable part of ``result``); returns it."""
    return tracking.write_metrics(metrics_path(cfg), result, run_id)
