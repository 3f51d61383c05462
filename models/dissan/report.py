"""DisSAN's committed outputs: learning curve, per-length-bucket test accuracy (CSV for ``dvc plots``) and the test
confusion matrix (PNG), under ``outputs.plots_dir/<variant>-<dataset>/``."""

from __future__ import annotations

from pathlib import Path

from models.common import tracking
from models.dissan.config import DissanConfig, variant_of


def plots_dir(cfg: DissanConfig) -> Path:
    return Path(cfg.outputs.plots_dir) / f"{variant_of(cfg)}-{cfg.data.dataset}"


def plot_confusion(confusion: list[list[int]], labels: list[str], title: str, path: Path) -> Path:
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


def write_test_figures(cfg: DissanConfig, run_id: str, test: dict) -> None:
    d = plots_dir(cfg)
    rows = ["bucket,n,accuracy"] + [f"{k},{b['n']},{'' if b['accuracy'] is None else round(b['accuracy'], 6)}" for k, b in test["buckets"].items()]
    files = [tracking.atomic_write_text(d / "test_length_buckets.csv", "\n".join(rows) + "\n"),
             plot_confusion(test["confusion"], test["labels"],
                            f"{variant_of(cfg)} on {cfg.data.dataset} test (acc {test['accuracy']:.4f})", d / "confusion_test.png")]
    for f in files:
        tracking.log_file(run_id, f, "figures")
