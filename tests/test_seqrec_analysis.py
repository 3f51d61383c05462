"""FaNC analysis (gate distribution, unconscious trajectory), the time budget and the clip counter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.seqrec import analysis
from models.seqrec.config import FancConfig
from models.seqrec.data import leave_one_out
from models.seqrec.modeling import FaNC


def _model(**kw) -> FaNC:
    torch.manual_seed(0)
    m = FaNC(n_items=20, hidden=6, dropout=0.0, cfg=FancConfig(**kw))
    with torch.no_grad():
        m.item_emb.weight[1:].normal_(std=0.5)
    return m


def _split():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 21, rng.integers(3, 12)) for _ in range(37)]
    return leave_one_out(seqs, 20, max_len=10).test


def test_gate_statistics_are_distributions_in_bounds():
    m, split = _model(), _split()
    stats = analysis.gate_statistics(m, split, batch_users=8)
    h = stats["histogram"]
    assert sum(h["users_last_step"]) == pytest.approx(1.0) and sum(h["all_steps"]) == pytest.approx(1.0)
    assert 0.0 <= stats["gate_mean_last"] <= 1.0 and 0.0 <= stats["clip_fraction"] <= 1.0
    # the last-step mean equals the mean of the model's own gate at the last position
    _, st = m(split.inputs, return_states=True)
    assert stats["gate_mean_last"] == pytest.approx(st["gate"][:, -1].mean().item(), rel=1e-5)
    q = stats["gate_quantiles_last"]
    assert q["q05"] <= q["q50"] <= q["q95"]
    assert m.training  # restored to training mode


def test_clip_fraction_counts_only_real_steps():
    m = _model(accel_clip=1e-6)  # every real step clips
    m.eval()
    _, st = m(torch.tensor([[0, 0, 0, 1, 2], [0, 3, 4, 5, 6]]), return_states=True)
    assert st["clip_fraction"].item() == pytest.approx(1.0)  # 6 real steps out of 6, padding excluded
    m_big = _model(accel_clip=1e9).eval()
    _, st = m_big(torch.tensor([[0, 0, 0, 1, 2]]), return_states=True)
    assert st["clip_fraction"].item() == 0.0


def test_trajectory_projects_every_state_into_the_item_pca_plane():
    m = _model()
    seq = torch.tensor([0, 0, 4, 7, 7, 2])
    traj = analysis.trajectory(m, seq, target=5)
    assert traj["items"] == [4, 7, 7, 2] and len(traj["u"]) == 5 and len(traj["item_points"]) == 4
    assert len(traj["gate"]) == 4 and all(0 <= g <= 1 for g in traj["gate"])
    mean, basis, ratio = analysis.pca_basis(m.item_emb.weight[1:].detach())
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=basis.dtype), atol=1e-8)
    assert 0 < ratio[1] <= ratio[0] < 1
    e7 = ((m.item_emb.weight[7].double() - mean) @ basis).tolist()
    assert traj["item_points"][1] == pytest.approx(e7)
    # consuming item 4 first moves u towards item 4 (in the full space: the pull's direction)
    _, st = m(seq.unsqueeze(0), return_states=True)
    u = torch.cat([m.u0.unsqueeze(0), st["u"][0, 2:]])
    assert (m.item_emb.weight[4] - u[1]).norm() < (m.item_emb.weight[4] - u[0]).norm()
    static = analysis.trajectory(_model(gravity=False), seq)
    assert all(p == pytest.approx(static["u"][0]) for p in static["u"])


def test_plots_are_written_atomically(tmp_path):
    m, split = _model(), _split()
    stats = analysis.gate_statistics(m, split)
    p1 = analysis.plot_gate_histogram(stats, "t", tmp_path / "a" / "gate.png")
    p2 = analysis.plot_trajectory(analysis.trajectory(m, split.inputs[0], int(split.targets[0])), "t", tmp_path / "traj.png")
    assert p1.stat().st_size > 1000 and p2.stat().st_size > 1000
    assert not list(tmp_path.rglob(".*tmp*"))


def test_training_history_reports_time_throughput_and_clips(tmp_path):
    from models.seqrec import recipe
    from models.seqrec.config import SeqRecConfig

    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 13, rng.integers(4, 9)) for _ in range(64)]
    data = leave_one_out(seqs, 12, max_len=8)
    cfg = SeqRecConfig.model_validate({
        "data": {"max_len": 8}, "model": {"name": "fanc", "hidden": 8},
        "train": {"epochs": 5, "batch_size": 16, "device": "cpu", "time_budget_s": 1e-9},
    })
    _, history = recipe.train(cfg, data, ckpt_dir=str(tmp_path), progress=False)
    assert len(history) == 1  # the budget is spent by the first epoch
    e = history[0]
    assert e["train_seconds"] > 0 and e["valid_seconds"] > 0 and 0 <= e["clip_fraction"] <= 1
    assert e["train_seq_per_s"] == pytest.approx(64 / e["train_seconds"])
    assert e["train_targets_per_s"] > e["train_seq_per_s"]  # several next-item targets per sequence
    summary = recipe.stop_rule(cfg).summary(history)
    assert summary["stopped_by"] == "time_budget" and summary["reproducible"] is False
