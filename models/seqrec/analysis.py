"""What FaNC is about, measured on a trained model: the gate and the unconscious trajectory.

- :func:`gate_statistics`: the gate g_t of h_t = g_t * c_t + (1 - g_t) * u_t (conscious weight; 1 - g_t is
  the unconscious weight), averaged over the d dimensions, at the last step of every evaluated user's
  input and at every non-padding step; histogram, mean and quantiles, plus the share of steps whose
  gravitational acceleration was clipped.
- :func:`trajectory`: one user's unconscious states u_0..u_T and the consumed items, projected to 2-D by
  the PCA of the whole item-embedding table (so the picture is in the item space the states live in).

FaNC is a reconstruction (see ``models.seqrec.modeling``); the figures show the reconstructed cell.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.common.tracking import save_figure
from models.seqrec.data import EvalSplit
from models.seqrec.modeling import FaNC

BINS = np.linspace(0.0, 1.0, 21)


@torch.no_grad()
def gate_statistics(model: FaNC, split: EvalSplit, batch_users: int = 512, device: torch.device | str = "cpu") -> dict:
    """Distribution of the per-step mean gate over users (last step) and over all non-padding steps."""
    model.eval()
    last, every, clipped, steps = [], [], 0.0, 0
    for start in range(0, len(split.targets), batch_users):
        seq = split.inputs[start:start + batch_users].to(device)
        _, states = model(seq, return_states=True)
        g = states["gate"].mean(-1)  # (B, T)
        valid = seq > 0
        last.append(g[:, -1].cpu())
        every.append(g[valid].cpu())
        n = int(valid.sum())
        clipped += float(states["clip_fraction"]) * n
        steps += n
    model.train()
    last_t, every_t = torch.cat(last).double().numpy(), torch.cat(every).double().numpy()
    hist_last, _ = np.histogram(last_t, BINS)
    hist_every, _ = np.histogram(every_t, BINS)
    q = np.quantile(last_t, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {
        "gate_mean_last": float(last_t.mean()),
        "gate_std_last": float(last_t.std()),
        "gate_mean_all_steps": float(every_t.mean()),
        "gate_quantiles_last": {f"q{int(p * 100):02d}": float(v) for p, v in zip([0.05, 0.25, 0.5, 0.75, 0.95], q)},
        "clip_fraction": clipped / max(steps, 1),
        "histogram": {
            "bin_left": BINS[:-1].tolist(),
            "bin_right": BINS[1:].tolist(),
            "users_last_step": (hist_last / max(len(last_t), 1)).tolist(),
            "all_steps": (hist_every / max(len(every_t), 1)).tolist(),
        },
    }


def pca_basis(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, the top-2 principal directions (d, 2) and their explained-variance ratios of the rows."""
    x = table.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    var = s.pow(2)
    return mean, vh[:2].T, var[:2] / var.sum()


@torch.no_grad()
def trajectory(model: FaNC, seq: torch.Tensor, target: int | None = None) -> dict:
    """2-D PCA projection of one user's unconscious states u_t (after each consumed item) and items.

    ``seq`` is one left-padded input (T,). Returns the projected states (u_0 first), the consumed items'
    points, the target item's point and the gate at each step.
    """
    model.eval()
    _, states = model(seq.unsqueeze(0), return_states=True)
    model.train()
    valid = seq > 0
    items = seq[valid]
    u = states["u"][0][valid]
    gate = states["gate"][0][valid].mean(-1)
    table = model.item_emb.weight[1:]
    mean, basis, ratio = pca_basis(table)
    proj = lambda x: ((x.double() - mean) @ basis).tolist()  # noqa: E731
    return {
        "items": items.tolist(),
        "u": proj(torch.cat([model.u0.unsqueeze(0), u])),
        "item_points": proj(model.item_emb.weight[items]),
        "target": target,
        "target_point": proj(model.item_emb.weight[target].unsqueeze(0))[0] if target else None,
        "gate": gate.tolist(),
        "explained_variance": ratio.tolist(),
        "background": proj(table[torch.randperm(len(table), generator=torch.Generator().manual_seed(0))[:2000]]),
    }


def plot_gate_histogram(stats: dict, title: str, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = stats["histogram"]
    centers = (np.array(h["bin_left"]) + np.array(h["bin_right"])) / 2
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.bar(centers - 0.012, h["users_last_step"], width=0.024, label="last step, per user")
    ax.bar(centers + 0.012, h["all_steps"], width=0.024, label="all non-padding steps")
    ax.set_xlabel("gate g (mean over d): 1 = conscious, 0 = unconscious")
    ax.set_ylabel("share")
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_trajectory(traj: dict, title: str, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    bg = np.array(traj["background"])
    ax.scatter(bg[:, 0], bg[:, 1], s=3, c="0.85", label="item embeddings (sample)")
    items = np.array(traj["item_points"])
    u = np.array(traj["u"])
    sc = ax.scatter(items[:, 0], items[:, 1], c=np.arange(len(items)), cmap="viridis", s=30, marker="s", label="consumed items (colour = order)")
    ax.plot(u[:, 0], u[:, 1], "-o", c="tab:red", ms=3, lw=1.2, label="unconscious state u_t")
    ax.annotate("u_0", u[0], fontsize=8)
    ax.annotate("u_T", u[-1], fontsize=8)
    if traj["target_point"] is not None:
        ax.scatter(*traj["target_point"], marker="*", s=160, c="gold", edgecolors="k", label="next (test) item")
    fig.colorbar(sc, ax=ax, label="step")
    ev = traj["explained_variance"]
    ax.set_xlabel(f"PC1 of item embeddings ({ev[0]:.1%})")
    ax.set_ylabel(f"PC2 ({ev[1]:.1%})")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)
