"""Shared training pieces on MeLU's tiny config: seeding, resume after a kill, NaN guard, config mismatch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from models.common.checkpoint import CheckpointMismatchError, NonFiniteLossError, list_checkpoints, load_checkpoint
from models.melu import recipe
from tests.conftest import REPO


def _train(cfg, ckpt_dir, **kw):
    model, history = recipe.train(cfg, ckpt_dir=str(ckpt_dir), progress=False, **kw)
    return model, history


def test_same_seed_same_metrics_and_seed_changes_them(tiny_cfg, tmp_path):
    _, h1 = _train(tiny_cfg, tmp_path / "a")
    _, h2 = _train(tiny_cfg, tmp_path / "b")
    assert h1 == h2
    other = tiny_cfg.model_copy(update={"train": tiny_cfg.train.model_copy(update={"init_seed": 1})})
    _, h3 = _train(other, tmp_path / "c")
    assert h3 != h1
    assert len(h1) == tiny_cfg.train.epochs and "user_cold_mae" in h1[-1]


def test_resume_after_kill_matches_uninterrupted_run(tiny_cfg, tmp_path):
    cfg = tiny_cfg.model_copy(update={"train": tiny_cfg.train.model_copy(update={"epochs": 4})})
    _, full = _train(cfg, tmp_path / "full")
    ckpt = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal
        from models.melu.config import MeluConfig
        from models.melu import recipe
        cfg = MeluConfig.model_validate_json({cfg.model_dump_json()!r})
        def die(epoch, metrics):
            if epoch == 1:
                os.kill(os.getpid(), signal.SIGKILL)
        recipe.train(cfg, ckpt_dir={str(ckpt)!r}, on_epoch_end=[die], progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [e for e, _ in list_checkpoints(ckpt)] == [1, 2]  # killed right after the 2nd checkpoint
    model, resumed = _train(cfg, ckpt)
    assert resumed == full
    assert load_checkpoint(list_checkpoints(ckpt)[-1][1])["epoch"] == 4


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tiny_cfg, tmp_path):
    ckpt = tmp_path / "nan"
    cfg = tiny_cfg.model_copy(update={"train": tiny_cfg.train.model_copy(update={"epochs": 3})})

    def poison(epoch, metrics):
        if epoch == 0:  # after the first good checkpoint, blow the weights up
            torch.nn.init.constant_(model_ref["m"].out.weight, float("nan"))

    orig = recipe.MeLU.from_config
    model_ref = {}

    def capture(*a, **k):
        model_ref["m"] = orig(*a, **k)
        return model_ref["m"]

    recipe.MeLU.from_config = capture
    try:
        with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at epoch 2, step 0.*epoch-0001\.pt"):
            _train(cfg, ckpt, on_epoch_end=[poison], eval_every_epoch=False)
    finally:
        recipe.MeLU.from_config = orig
    good = list_checkpoints(ckpt)
    assert [e for e, _ in good] == [1]
    state = load_checkpoint(good[0][1])
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_resume_refuses_a_checkpoint_of_another_config(tiny_cfg, tmp_path):
    _train(tiny_cfg, tmp_path / "x")
    other = tiny_cfg.model_copy(update={"train": tiny_cfg.train.model_copy(update={"local_steps": 1})})
    with pytest.raises(CheckpointMismatchError, match="fingerprint"):
        _train(other, tmp_path / "x")


def test_history_is_json_serialisable(tiny_cfg, tmp_path):
    _, h = _train(tiny_cfg, tmp_path / "j", eval_every_epoch=False)
    assert json.loads(json.dumps(h)) == h


def test_resume_restores_the_random_generators_dropout_draws_from(tmp_path):
    """A model with dropout (the global torch RNG) and a NumPy draw per epoch: 2 epochs, then a fresh start (as a new
    process: the generators re-seeded, the model re-initialised) resumed to 4, equals 4 uninterrupted epochs."""
    import numpy as np

    from models.common.checkpoint import run_epochs

    x, y = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)), torch.randn(64, 1, generator=torch.Generator().manual_seed(1))

    def run(ckpt_dir, epochs):
        torch.manual_seed(0)
        np.random.seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(32, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def train_epoch(epoch):
            model.train()
            idx = torch.from_numpy(np.random.permutation(64))  # global NumPy RNG, as some data pipelines use
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            return {"loss": float(loss)}

        history = run_epochs(model=model, optimizer=opt, epochs=epochs, ckpt_dir=ckpt_dir, fingerprint="f", seed=0,
                             train_epoch=train_epoch, progress=False)
        return history, model

    full, m_full = run(tmp_path / "full", 4)
    run(tmp_path / "cut", 2)
    resumed, m_resumed = run(tmp_path / "cut", 4)
    assert resumed == full and len(full) == 4
    for a, b in zip(m_full.parameters(), m_resumed.parameters()):
        assert torch.equal(a, b)
    assert load_checkpoint(list_checkpoints(tmp_path / "cut")[-1][1])["rng"]["torch"].dtype == torch.uint8
