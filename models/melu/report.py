"""MeLU's committed outputs: the metrics file (DVC metrics) and the learning curves (CSV for ``dvc plots``, PNG)."""

from __future__ import annotations

from pathlib import Path

from models.common import tracking
from models.melu.config import MeluConfig
from models.melu.metrics import TIE_RULE


def metrics_path(cfg: MeluConfig) -> Path:
    return Path(cfg.outputs.metrics_dir) / "melu.json"


def plots_dir(cfg: MeluConfig) -> Path:
    return Path(cfg.outputs.plots_dir) / "melu"


def plot_curves(history: list[dict[str, float]], path: Path) -> Path:
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


def write(cfg: MeluConfig, run_id: str, metrics: dict[str, float], history: list[dict[str, float]]) -> dict:
    """``metrics_path(cfg)`` (the final metrics of every state, the gate metric, tie rule and settings) and the curves."""
    payload = {"melu": {**metrics, "gate_metric": cfg.registry.gate_metric, "tie_rule": TIE_RULE,
                        "local_steps": cfg.train.local_steps, "meta_order": cfg.train.meta_order,
                        "episode_seed": cfg.data.episode_seed, "epochs": cfg.train.epochs}}
    tracking.atomic_write_json(metrics_path(cfg), payload)
    if history:
        curves = tracking.write_history_csv(history, plots_dir(cfg) / "learning_curve.csv")
        png = plot_curves(history, plots_dir(cfg) / "learning_curve.png")
        tracking.log_file(run_id, curves, "plots")
        tracking.log_file(run_id, png, "plots")
    return payload
