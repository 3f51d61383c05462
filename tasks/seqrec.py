"""Prefect tasks of the sequential-recommendation flow: train (resumable), evaluate on test, analyse FaNC's
gate and unconscious trajectory, log the pyfunc.

Files for DVC go under ``outputs.plots_dir/<variant>-<dataset>/`` (learning curve, gate histogram,
trajectory); the same files are logged to the MLflow run.
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
from models.seqrec import recipe
from models.seqrec.config import SeqRecConfig, variant_of
from models.seqrec.metrics import FULL
from models.seqrec.modeling import build_model


def _cfg(params_path: str, overrides: dict) -> SeqRecConfig:
    return load_section(SeqRecConfig, "seqrec", params_path, overrides)


def plots_dir(cfg: SeqRecConfig) -> Path:
    return Path(cfg.outputs.plots_dir) / f"{variant_of(cfg)}-{cfg.data.dataset}"


def _load(cfg: SeqRecConfig, weights: str):
    device = select_device(cfg.train.device)
    data = recipe.load_data(cfg)
    model = build_model(cfg.model, data.n_items, cfg.data.max_len).to(device)
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    return model, data, device


@task(retries=1, retry_delay_seconds=5)
def train_seqrec(params_path: str, overrides: dict, run_id: str, out_dir: str) -> dict:
    """Train until the stopping rule; per-epoch metrics to ``run_id``; returns the best weights' path and why it stopped."""
    cfg = _cfg(params_path, overrides)
    log_epoch = tracking.EpochLogger(run_id)
    model, history = recipe.train(cfg, on_epoch_end=[log_epoch])
    log_epoch.backfill(history)  # epochs restored from a checkpoint of an earlier attempt
    weights = atomic_torch_save({k: v.cpu() for k, v in model.state_dict().items()}, Path(out_dir) / "model.pt")
    curves = tracking.write_history_csv(history, plots_dir(cfg) / "learning_curve.csv")
    tracking.log_file(run_id, curves, "plots")
    best = max(history, key=lambda h: h[recipe.GATE_METRIC])
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


@task
def evaluate_seqrec(params_path: str, overrides: dict, run_id: str, weights: str) -> dict:
    """Test metrics of the best-validation model (protocol recorded with the numbers)."""
    import time

    cfg = _cfg(params_path, overrides)
    model, data, device = _load(cfg, weights)
    started = time.perf_counter()
    metrics = {f"test_{k}": v for k, v in recipe.evaluate(model, data.test, cfg, device).items()}
    metrics["test_eval_seconds"] = time.perf_counter() - started
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


@task
def analyze_fanc(params_path: str, overrides: dict, run_id: str, weights: str) -> dict:
    """FaNC only: gate distribution on the test inputs and one user's unconscious trajectory (2-D PCA).

    The trajectory user is the one with the longest test input (first such user), so the figure is
    reproducible. Without the gate (ablation) there is no distribution to show; without gravity the
    trajectory is a single point and is not drawn.
    """
    from models.seqrec import analysis

    cfg = _cfg(params_path, overrides)
    if cfg.model.name != "fanc" or not cfg.model.fanc.gate:
        return {}
    model, data, device = _load(cfg, weights)
    out = plots_dir(cfg)
    title = f"FaNC (reconstruction), {variant_of(cfg)}, {cfg.data.dataset}: test inputs"
    stats = analysis.gate_statistics(model, data.test, cfg.eval.batch_users, device)
    h = stats["histogram"]
    rows = ["bin_left,bin_right,users_last_step,all_steps"]
    rows += [f"{a:.2f},{b:.2f},{c:.6f},{d:.6f}" for a, b, c, d in zip(h["bin_left"], h["bin_right"], h["users_last_step"], h["all_steps"])]
    files = [tracking.atomic_write_text(out / "gate_hist.csv", "\n".join(rows) + "\n"),
             analysis.plot_gate_histogram(stats, title, out / "gate_hist.png")]
    summary = {k: v for k, v in stats.items() if k != "histogram"}
    if cfg.model.fanc.gravity:
        lengths = (data.test.inputs > 0).sum(1)
        user = int(torch.argmax(lengths))
        traj = analysis.trajectory(model, data.test.inputs[user].to(device), int(data.test.targets[user]))
        rows = ["step,kind,item,pc1,pc2,gate"]
        rows += [f"{t},u,,{x:.6f},{y:.6f},{traj['gate'][t - 1] if t else ''}" for t, (x, y) in enumerate(traj["u"])]
        rows += [f"{t},item,{i},{x:.6f},{y:.6f}," for t, (i, (x, y)) in enumerate(zip(traj["items"], traj["item_points"]), 1)]
        files += [tracking.atomic_write_text(out / "trajectory.csv", "\n".join(rows) + "\n"),
                  analysis.plot_trajectory(traj, f"{title.replace(': test inputs', '')}: user index {user}, unconscious trajectory", out / "trajectory.png")]
        summary["trajectory_user_index"] = user
    for f in files:
        tracking.log_file(run_id, f, "figures")
    tracking.log_metrics(run_id, {"test_gate_mean_last": stats["gate_mean_last"], "test_clip_fraction": stats["clip_fraction"]})
    tracking.log_json(run_id, stats, "figures/gate_statistics.json")
    return summary
