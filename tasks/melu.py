"""Prefect tasks of the MeLU flow: train (resumable), evaluate, evidence candidates, log the pyfunc.

Tasks take and return paths, ids and small dicts (never tensors), and log to MLflow through an explicit
``run_id``. Training is retried once: a retry resumes from the newest epoch checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from prefect import task

from models.common import tracking
from models.common.checkpoint import atomic_torch_save
from models.common.config import load_section
from models.common.seed import select_device
from models.melu import recipe
from models.melu.config import MeluConfig
from models.melu.metrics import TIE_RULE
from models.melu.modeling import MeLU


def _cfg(params_path: str, overrides: dict) -> MeluConfig:
    return load_section(MeluConfig, "melu", params_path, overrides)


def _load_model(cfg: MeluConfig, weights: str, vocab_sizes: dict[str, int], device) -> MeLU:
    model = MeLU.from_config(cfg.model, vocab_sizes).to(device)
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    return model


@task(retries=1, retry_delay_seconds=5)
def train_melu(params_path: str, overrides: dict, run_id: str, out_dir: str) -> dict:
    """Meta-train; log per-epoch metrics to ``run_id``; return {'weights': path, 'history': [...]}."""
    cfg = _cfg(params_path, overrides)
    ckpt_dir = str(Path(cfg.train.checkpoint_dir) / recipe.fingerprint(cfg))
    log_epoch = tracking.EpochLogger(run_id)
    model, history = recipe.train(cfg, ckpt_dir=ckpt_dir, on_epoch_end=[log_epoch])
    log_epoch.backfill(history)  # epochs restored from a checkpoint of an earlier attempt
    weights = atomic_torch_save({k: v.cpu() for k, v in model.state_dict().items()}, Path(out_dir) / "model.pt")
    return {"weights": str(weights), "history": history, "checkpoint_dir": ckpt_dir}


def _plot_curves(history: list[dict[str, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history) + 1)
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(epochs, [h["train_query_mse"] for h in history], label="train query MSE")
    ax[0].set_xlabel("epoch"); ax[0].set_ylabel("MSE"); ax[0].legend()
    for k in history[0]:
        if k.endswith("_mae") and k != "cold_mae_mean":
            ax[1].plot(epochs, [h[k] for h in history], label=k)
    ax[1].set_xlabel("epoch"); ax[1].set_ylabel("MAE (query sets)"); ax[1].legend()
    fig.tight_layout()
    return tracking.save_figure(fig, path, dpi=100)


@task
def evaluate_melu(params_path: str, overrides: dict, run_id: str, weights: str, history: list[dict[str, float]]) -> dict:
    """Final metrics on every state; writes the DVC metrics JSON and learning-curve CSV, logs to MLflow."""
    cfg = _cfg(params_path, overrides)
    device = select_device(cfg.train.device)
    data = recipe.load_data(cfg, device=device)
    model = _load_model(cfg, weights, data.tables.vocab_sizes, device)
    metrics = recipe.evaluate_states(model, data, cfg)
    tracking.log_metrics(run_id, metrics, step=cfg.train.epochs)
    payload = {"melu": {**metrics, "gate_metric": cfg.registry.gate_metric, "tie_rule": TIE_RULE,
                        "local_steps": cfg.train.local_steps, "meta_order": cfg.train.meta_order,
                        "episode_seed": cfg.data.episode_seed, "epochs": cfg.train.epochs}}
    tracking.atomic_write_json(cfg.metrics_path, payload)
    if history:
        curves = tracking.write_history_csv(history, Path(cfg.plots_dir) / "learning_curve.csv")
        png = _plot_curves(history, Path(cfg.plots_dir) / "learning_curve.png")
        tracking.log_file(run_id, curves, "plots")
        tracking.log_file(run_id, png, "plots")
    return metrics


@task
def evidence_candidates(params_path: str, overrides: dict, run_id: str, weights: str, out_dir: str) -> str:
    """Paper §3.3: per-item scores and the top-k list, written as CSV and logged as an artifact."""
    from models.melu.evidence import pair_gradient_norms, select_candidates

    cfg = _cfg(params_path, overrides)
    device = select_device(cfg.train.device)
    data = recipe.load_data(cfg, states=["warm_state"], device=device)
    model = _load_model(cfg, weights, data.tables.vocab_sizes, device)
    e = cfg.evidence
    pairs = pair_gradient_norms(model, data.tables, data.episodes["warm_state"], cfg.train.local_steps,
                                cfg.train.local_lr, e.grad_params, e.norm, e.batch_pairs)
    import pandas as pd

    titles = pd.read_parquet(Path(cfg.data.processed_dir) / "items.parquet").set_index("movie_id").title.to_dict()
    table = select_candidates(pairs, e.top_k, titles)
    path = Path(out_dir) / "evidence_candidates.csv"
    table.to_csv(path, index=False)
    tracking.log_file(run_id, path, "evidence")
    top = table[table.top_k][["rank", "movie_id", "title", "score"]]
    tracking.log_json(run_id, top.to_dict(orient="records"), "evidence/top_k.json")
    return str(path)


@task(retries=2, retry_delay_seconds=[2, 8])
def log_melu_model(params_path: str, overrides: dict, run_id: str, weights: str) -> str:
    """Log the pyfunc (weights + item table + vocabularies) with signature and input example."""
    import pandas as pd

    from models.melu.pyfunc import MeluPyfunc

    cfg = _cfg(params_path, overrides)
    proc = Path(cfg.data.processed_dir)
    meta_path = Path(weights).with_name("pyfunc_meta.json")
    meta_path.write_text(json.dumps({"local_steps": cfg.train.local_steps, "local_lr": cfg.train.local_lr,
                                     "embedding_dim": cfg.model.embedding_dim, "hidden": list(cfg.model.hidden)}))
    items = pd.read_parquet(proc / "items.parquet")
    mids = items.movie_id.tolist()
    vocab = json.loads((proc / "vocab.json").read_text())
    example = pd.DataFrame([{"gender": vocab["gender"][-1], "age": vocab["age"][min(2, len(vocab["age"]) - 1)],
                             "occupation": vocab["occupation"][0], "zip": vocab["zip"][0],
                             "support_items": mids[:3], "support_ratings": [5.0, 3.0, 4.0], "candidate_items": mids[3:8]}])
    artifacts = {"weights": weights, "items": str(proc / "items.parquet"), "vocab": str(proc / "vocab.json"), "meta": str(meta_path)}
    return tracking.log_pyfunc(run_id, MeluPyfunc(), artifacts, example)
