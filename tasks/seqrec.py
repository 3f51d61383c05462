"""Prefect tasks of the sequential-recommendation flow: train (resumable), evaluate on test, log the pyfunc."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from prefect import task

from models.common import tracking
from models.common.checkpoint import atomic_torch_save
from models.common.config import load_section
from models.common.seed import select_device
from models.seqrec import recipe
from models.seqrec.config import SeqRecConfig
from models.seqrec.metrics import FULL
from models.seqrec.modeling import build_model


def _cfg(params_path: str, overrides: dict) -> SeqRecConfig:
    return load_section(SeqRecConfig, "seqrec", params_path, overrides)


@task(retries=1, retry_delay_seconds=5)
def train_seqrec(params_path: str, overrides: dict, run_id: str, out_dir: str) -> dict:
    """Train with early stopping; per-epoch metrics to ``run_id``; returns the best weights' path."""
    cfg = _cfg(params_path, overrides)
    logged: set[int] = set()

    def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
        tracking.log_metrics(run_id, metrics, step=epoch + 1)
        logged.add(epoch)

    model, history = recipe.train(cfg, on_epoch_end=[log_epoch])
    for epoch, metrics in enumerate(history):
        if epoch not in logged:
            tracking.log_metrics(run_id, metrics, step=epoch + 1)
    weights = atomic_torch_save({k: v.cpu() for k, v in model.state_dict().items()}, Path(out_dir) / "model.pt")
    curves = tracking.write_history_csv(history, Path(out_dir) / "learning_curve.csv")
    tracking.log_file(run_id, curves, "plots")
    best = max(history, key=lambda h: h[recipe.GATE_METRIC])
    return {"weights": str(weights), "epochs": len(history), "best_valid": best}


@task
def evaluate_seqrec(params_path: str, overrides: dict, run_id: str, weights: str) -> dict:
    """Test metrics of the best-validation model (protocol recorded with the numbers)."""
    cfg = _cfg(params_path, overrides)
    device = select_device(cfg.train.device)
    data = recipe.load_data(cfg)
    model = build_model(cfg.model, data.n_items, cfg.data.max_len).to(device)
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    metrics = {f"test_{k}": v for k, v in recipe.evaluate(model, data.test, cfg, device).items()}
    tracking.log_metrics(run_id, metrics)
    protocol = FULL if cfg.eval.protocol == "full" else f"sampled: {cfg.eval.n_negatives} negatives"
    c = tracking.client()
    c.set_tag(run_id, "eval.protocol", protocol)
    c.set_tag(run_id, "eval.mask_history", str(cfg.eval.mask_history).lower())
    return metrics


@task(retries=2, retry_delay_seconds=[2, 8])
def log_seqrec_model(params_path: str, overrides: dict, run_id: str, weights: str) -> str:
    import pandas as pd

    from models.seqrec.pyfunc import SeqRecPyfunc

    cfg = _cfg(params_path, overrides)
    data = recipe.load_data(cfg)
    meta = Path(weights).with_name("pyfunc_meta.json")
    meta.write_text(json.dumps({"n_items": data.n_items, "max_len": cfg.data.max_len, "model": cfg.model.model_dump(mode="json")}))
    example = pd.DataFrame([{"history": [int(i) for i in data.test.history[0][-5:]], "k": 5}])
    return tracking.log_pyfunc(run_id, SeqRecPyfunc(), {"weights": weights, "meta": str(meta)}, example)
