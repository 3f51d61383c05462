"""EGTR's committed outputs under ``plots_dir/<dataset>/``: learning curves of both stages (CSV for ``dvc plots``)
and the per-predicate test recall (CSV + bar chart)."""

from __future__ import annotations

from pathlib import Path

from models.common import tracking
from models.egtr.config import EgtrConfig


def plots_dir(cfg: EgtrConfig) -> Path:
    return Path(cfg.outputs.plots_dir) / cfg.dataset


def plot_predicate_recall(per_predicate: list[float], names: list[str], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    vals = np.asarray([np.nan if v is None else v for v in per_predicate], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(names) + 1.5), 3.2))
    ax.bar(range(len(names)), np.nan_to_num(vals), color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("R@50 (graph constraint)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return tracking.save_figure(fig, path)


def write_predicate_recall(cfg: EgtrConfig, run_id: str, per_pred: list, predicates: list[str]) -> None:
    fig = plot_predicate_recall(per_pred, predicates, f"EGTR on {cfg.dataset} test: per-predicate R@50",
                                plots_dir(cfg) / "test_predicate_recall.png")
    tracking.log_file(run_id, fig, "figures")
    rows = ["predicate,R_at_50"] + [f"{n},{'' if v is None or v != v else round(v, 6)}" for n, v in zip(predicates, per_pred)]
    tracking.atomic_write_text(plots_dir(cfg) / "test_predicate_recall.csv", "\n".join(rows) + "\n")
