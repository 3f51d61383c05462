"""The bilingual LM's training loop: the schedule, the data order, 1 process vs 2 under torchrun (gloo, c10d on
127.0.0.1), resume after an interruption to the same curve, masked losses, bits per byte."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from models.bilingual_lm.modeling import build_model
from models.bilingual_lm.trainer import (
    CheckpointMismatchError,
    Dist,
    TrainSettings,
    bits_per_byte,
    global_batch_rows,
    list_steps,
    lm_loss_sum,
    lr_at,
    rank_micro_batches,
    train,
    unigram_bits_per_byte,
)
from tests.conftest import REPO

S = TrainSettings(seq_len=16, global_batch=8, micro_batch=2, max_steps=6, lr=3e-3, warmup_steps=2,
                  checkpoint_every=2, eval_every=100, log_every=2, seed=3)


def rows_of(n: int = 40, seq_len: int = 16, vocab: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # a learnable stream: repeating short patterns, so the loss falls within a few steps
    base = rng.integers(3, vocab, size=32)
    stream = np.concatenate([np.roll(base, k) for k in range(n * (seq_len + 1) // 32 + 1)])
    return stream[:n * (seq_len + 1)].reshape(n, seq_len + 1).astype(np.int32)


def test_schedule_warmup_then_cosine():
    s = TrainSettings(max_steps=110, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, s) == pytest.approx(0.1) and lr_at(9, s) == pytest.approx(1.0)
    assert lr_at(10, s) == pytest.approx(1.0) and lr_at(60, s) == pytest.approx(0.55)
    assert lr_at(110, s) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainSettings(max_steps=5, warmup_steps=6)


def test_data_order_covers_every_row_once_per_epoch_and_splits_over_ranks():
    s = TrainSettings(global_batch=8, micro_batch=2, seed=1)
    rows = np.concatenate([global_batch_rows(k, 40, s) for k in range(5)])  # 40 rows = one epoch
    assert sorted(rows.tolist()) == list(range(40))
    assert not np.array_equal(global_batch_rows(5, 40, s), global_batch_rows(0, 40, s))  # epoch 2: a new order
    g = global_batch_rows(3, 40, s)
    one = np.concatenate(rank_micro_batches(g, Dist(0, 1), s))
    two = np.concatenate(rank_micro_batches(g, Dist(0, 2), s) + rank_micro_batches(g, Dist(1, 2), s))
    assert one.tolist() == g.tolist() == two.tolist()


def test_training_reduces_the_loss_and_logs(tmp_path):
    model = build_model("tiny", seed=0)
    hist = train(model, rows_of(), replace(S, max_steps=12), tmp_path / "ckpt", progress=False)
    assert len(hist) == 12 and hist[-1]["loss"] < hist[0]["loss"] - 0.5
    assert abs(hist[0]["loss"] - math.log(512)) < 0.2
    assert all("tokens_per_s" in h for h in hist[1::2]) and hist[-1]["tokens"] == 12 * 8 * 16
    assert [s for s, _ in list_steps(tmp_path / "ckpt")] == [10, 12]  # keep_last = 2


def test_resume_continues_the_same_curve(tmp_path):
    full = train(build_model("tiny", seed=0), rows_of(), S, tmp_path / "a", progress=False)
    # interrupted after step 3 (as a kill would: the last checkpoint is step 2's), then started again with a
    # differently initialised model object: everything comes from the checkpoint
    part = train(build_model("tiny", seed=0), rows_of(), S, tmp_path / "b", progress=False, stop_after=3)
    assert len(part) == 3 and [st for st, _ in list_steps(tmp_path / "b")] == [2]
    resumed = train(build_model("tiny", seed=9), rows_of(), S, tmp_path / "b", progress=False)
    assert [h["step"] for h in resumed] == list(range(1, 7))
    assert [h["loss"] for h in resumed] == pytest.approx([h["loss"] for h in full], abs=1e-6)
    with pytest.raises(CheckpointMismatchError, match="holds a run with settings"):
        train(build_model("tiny"), rows_of(), replace(S, lr=1e-3), tmp_path / "a", progress=False)


def test_masked_loss_counts_only_masked_targets():
    model = build_model("tiny", seed=0)
    batch = torch.from_numpy(rows_of(2)).long()
    full_sum, full_n = lm_loss_sum(model, batch)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 5:9] = True
    s, n = lm_loss_sum(model, batch, mask)
    logits = model(input_ids=batch[:, :-1]).logits
    nll = torch.nn.functional.cross_entropy(logits[0, 5:9], batch[0, 6:10], reduction="sum")
    assert n.item() == 4 and s.item() == pytest.approx(nll.item(), rel=1e-5) and full_n.item() == 32


def test_bits_per_byte_against_hand_computation():
    model = build_model("tiny", seed=0)
    ids = rows_of(3).reshape(-1)[:33]  # exactly 2 windows of 16 + 1
    token_bytes = np.full(512, 2, dtype=np.int64)
    token_bytes[:3] = 0
    r = bits_per_byte(model, ids, token_bytes, seq_len=16)
    w = torch.from_numpy(np.stack([ids[0:17], ids[16:33]]).astype(np.int64))
    s, n = lm_loss_sum(model, w)
    assert r["tokens"] == 32 and r["bytes"] == 64
    assert r["bits_per_byte"] == pytest.approx(s.item() / math.log(2) / 64, rel=1e-6)
    counts = np.bincount(ids, minlength=512)
    u = unigram_bits_per_byte(counts, ids, token_bytes, 16)
    p = (counts + 1) / (counts.sum() + 512)
    assert u == pytest.approx(-np.log2(p[np.concatenate([ids[1:17], ids[17:33]])]).sum() / 64)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_with_half_the_batch_equal_one_process(tmp_path):
    """torchrun, gloo on CPU, c10d rendezvous on 127.0.0.1: 2 processes x 4 rows (micro 2) = 1 process x 8 rows."""
    rows = tmp_path / "rows.npy"
    np.save(rows, rows_of())
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(asdict(S)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    common = ["-m", "models.bilingual_lm.launch", "--rows", str(rows), "--preset", "tiny", "--settings",
              str(settings), "--threads", "1"]
    one = subprocess.run([sys.executable, *common, "--ckpt-dir", str(tmp_path / "c1"), "--history",
                          str(tmp_path / "h1.json")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                          "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--max-restarts=0",
                          *common, "--ckpt-dir", str(tmp_path / "c2"), "--history", str(tmp_path / "h2.json"),
                          "--model-out", str(tmp_path / "model")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    h1, h2 = json.loads((tmp_path / "h1.json").read_text()), json.loads((tmp_path / "h2.json").read_text())
    assert len(h1) == len(h2) == S.max_steps
    assert [h["loss"] for h in h2] == pytest.approx([h["loss"] for h in h1], abs=2e-5)
    assert [h["grad_norm"] for h in h2] == pytest.approx([h["grad_norm"] for h in h1], rel=1e-4)
    assert h1[-1]["loss"] < h1[0]["loss"]
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert loaded.config.model_type == "hyperclovax"
