"""Sequential recommenders' committed outputs: the FaNC gate histogram and unconscious-trajectory files (CSV for
``dvc plots``, PNG), under ``outputs.plots_dir/<variant>-<dataset>/``."""

from __future__ import annotations

from pathlib import Path

import torch

from models.common import tracking
from models.seqrec import analysis
from models.seqrec.config import SeqRecConfig, variant_of


def plots_dir(cfg: SeqRecConfig) -> Path:
    return Path(cfg.outputs.plots_dir) / f"{variant_of(cfg)}-{cfg.data.dataset}"


def fanc_figures(cfg: SeqRecConfig, run_id: str, model, data, device) -> dict:
    """FaNC only: gate distribution on the test inputs and one user's unconscious trajectory (2-D PCA).

    The trajectory user is the one with the longest test input (first such user), so the figure is
    reproducible. Without the gate (ablation) there is no distribution to show; without gravity the
    trajectory is a single point and is not drawn.
    """
    if cfg.model.name != "fanc" or not cfg.model.fanc.gate:
        return {}
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
