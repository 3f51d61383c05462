"""The bilingual LM's training loop: packed rows, AdamW + warm-up/cosine, clipping, accumulation, DDP, resume.

One loop for pretraining and SFT (SFT passes a loss function with the assistant mask and the unlikelihood term).
It runs as one process or under ``torchrun`` on N processes (``torch.distributed``: gloo on CPU, NCCL on CUDA;
rendezvous from torchrun's environment):

* **Data order**: the packed rows are read in a seeded permutation per epoch (``np.random.default_rng([seed,
  epoch])``); global step k takes the next ``global_batch`` rows of that stream; rank r of W takes the r-th W-th of
  them and splits it into micro-batches of ``micro_batch`` rows (gradient accumulation = global_batch / (W *
  micro_batch) micro-steps). Every row has the same number of target tokens in pretraining, so the mean of the
  ranks' per-token means is the global per-token mean: 2 processes with half the per-process batch compute the same
  loss and update as 1 process with the whole batch (a test checks the curves agree within float error). With masks
  (SFT), each micro-batch's loss is its token-sum divided by the GLOBAL batch's target count (all-reduced first),
  so the same holds.
* **Optimiser** (spec §3.2): AdamW (beta 0.9 / 0.95, weight decay 0.1 on matrices only, not on norms or biases),
  linear warm-up over ``warmup_steps`` then cosine decay to ``min_lr_ratio * lr`` at ``max_steps``; gradient norm
  clipped to ``clip``. On CUDA: bf16 autocast (``dtype``) and the fused AdamW kernel.
* **Checkpoints**: every ``checkpoint_every`` steps rank 0 writes ``step-NNNNNNN.pt`` (model, optimizer, step,
  history, the global random generators, the settings fingerprint) through a temporary file + rename; every rank
  resumes from the newest one, so a run killed at any point continues to the same loss curve. A directory holding a
  run with different settings is refused (:class:`CheckpointMismatchError`).
* **Throughput**: tokens / s per logging window (and model FLOPs utilisation on CUDA: 6 N tokens/s over
  ``peak_flops``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.common import distributed
from models.common.checkpoint import CheckpointMismatchError, atomic_torch_save, rng_state, set_rng_state
from models.common.distributed import Dist

_STEP_RE = re.compile(r"^step-(\d+)\.pt$")


@dataclass(frozen=True)
class TrainSettings:
    seq_len: int = 128
    global_batch: int = 16  # rows per optimiser step, over all processes
    micro_batch: int = 4  # rows per forward/backward on one process
    max_steps: int = 100
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip: float = 1.0
    seed: int = 0
    dtype: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU | float32 | bfloat16
    checkpoint_every: int = 50
    keep_last: int = 2
    eval_every: int = 50
    log_every: int = 10
    peak_flops: float = 0.0  # for MFU on CUDA (e.g. 989e12 for H100/H200 bf16 dense); 0 = not reported
    extra: dict = field(default_factory=dict)  # recorded in the fingerprint (e.g. the data's hash)

    def __post_init__(self):
        for name in ("seq_len", "global_batch", "micro_batch", "max_steps", "checkpoint_every", "eval_every",
                     "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"warmup_steps: must be in [0, max_steps={self.max_steps}], got {self.warmup_steps}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype: expected auto, float32 or bfloat16, got {self.dtype!r}")

    def fingerprint(self) -> str:
        keep = {k: v for k, v in asdict(self).items() if k not in ("checkpoint_every", "keep_last", "log_every",
                                                                    "eval_every", "peak_flops")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def lr_at(step: int, s: TrainSettings) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then cosine to ``min_lr_ratio * lr``."""
    if s.warmup_steps and step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    span = max(1, s.max_steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    low = s.lr * s.min_lr_ratio
    return low + 0.5 * (s.lr - low) * (1.0 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------------------ data order
def global_batch_rows(step: int, n_rows: int, s: TrainSettings) -> np.ndarray:
    """Row indices of global step ``step``: the stream of seeded per-epoch permutations, ``global_batch`` at a time."""
    start = step * s.global_batch
    out, pos = [], start
    while len(out) < s.global_batch:
        epoch, offset = divmod(pos, n_rows)
        perm = np.random.default_rng([s.seed, epoch]).permutation(n_rows)
        take = min(s.global_batch - len(out), n_rows - offset)
        out.extend(perm[offset:offset + take].tolist())
        pos += take
    return np.asarray(out, dtype=np.int64)


def rank_micro_batches(rows: np.ndarray, d: Dist, s: TrainSettings) -> list[np.ndarray]:
    per_rank = s.global_batch // d.world
    mine = rows[d.rank * per_rank:(d.rank + 1) * per_rank]
    return [mine[i:i + s.micro_batch] for i in range(0, per_rank, s.micro_batch)]


def check_batching(s: TrainSettings, d: Dist) -> None:
    if s.global_batch % d.world or (s.global_batch // d.world) % s.micro_batch:
        raise ValueError(f"global_batch {s.global_batch} must split into {d.world} process(es) x whole micro-batches "
                         f"of {s.micro_batch} rows")


# ------------------------------------------------------------------------------------------------ loss
def lm_loss_sum(model, batch: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy of ``batch [B, L+1]`` (inputs = [:, :-1], targets = [:, 1:]) over the target
    positions where ``mask [B, L]`` is true (all when None), and the number of those positions."""
    logits = model(input_ids=batch[:, :-1]).logits
    targets = batch[:, 1:]
    nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    if mask is None:
        return nll.sum(), torch.tensor(float(nll.numel()), device=nll.device)
    m = mask.reshape(-1).to(nll.dtype)
    return (nll * m).sum(), m.sum()


# ------------------------------------------------------------------------------------------------ checkpoints
def list_steps(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_RE.match(p.name)))


def _save(ckpt_dir: Path, step: int, state: dict, keep_last: int) -> Path:
    path = atomic_torch_save(state, ckpt_dir / f"step-{step:07d}.pt")
    for _, old in list_steps(ckpt_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def _param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------------------------ the loop
def train(model, rows: np.ndarray, s: TrainSettings, ckpt_dir: str | Path, *,
          masks: np.ndarray | None = None,
          loss_fn: Callable | None = None,
          eval_fn: Callable[[torch.nn.Module, int], dict] | None = None,
          log_fn: Callable[[dict, int], None] | None = None,
          device: str | torch.device = "cpu", progress: bool = True, stop_after: int | None = None) -> list[dict]:
    """Train ``model`` on ``rows [N, seq_len + 1]`` (int ids) for ``s.max_steps`` optimiser steps; returns the
    history (one dict per step: loss, lr, grad_norm, tokens/s every ``log_every``, eval metrics every
    ``eval_every``). ``loss_fn(model, batch, mask) -> (sum, count)`` replaces :func:`lm_loss_sum` (SFT).
    ``stop_after``: return after that step without a checkpoint of its own (a stand-in for a kill, in tests)."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    d = distributed.init(device)
    check_batching(s, d)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"rows: no training rows (shape {tuple(rows.shape)})")
    if rows.shape[1] != s.seq_len + 1:
        raise ValueError(f"rows must be [N, seq_len + 1 = {s.seq_len + 1}], got {tuple(rows.shape)}")
    if masks is not None and masks.shape != (rows.shape[0], s.seq_len):
        raise ValueError(f"masks must be [N, seq_len] = {(rows.shape[0], s.seq_len)}, got {tuple(masks.shape)}")
    loss_fn = loss_fn or lm_loss_sum
    ckpt_dir = Path(ckpt_dir)
    model.to(device)
    cuda = device.type == "cuda"
    autocast_dtype = torch.bfloat16 if (s.dtype == "bfloat16" or (s.dtype == "auto" and cuda)) else None
    opt = torch.optim.AdamW(_param_groups(model, s.weight_decay), lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps,
                            **({"fused": True} if cuda else {}))
    fingerprint = s.fingerprint()
    start, history = 0, []
    found = list_steps(ckpt_dir)
    if found:
        state = torch.load(found[-1][1], map_location=device, weights_only=True)
        if state["fingerprint"] != fingerprint:
            raise CheckpointMismatchError(f"{ckpt_dir}: holds a run with settings {state['fingerprint']}, these are "
                                          f"{fingerprint}; use another directory or delete it")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start, history = int(state["step"]), list(state["history"])
        if d.main:
            print(f"resuming from {found[-1][1]}: {start} of {s.max_steps} steps done", file=sys.stderr, flush=True)
    ddp = distributed.wrap(model, d)
    n_params = sum(p.numel() for p in model.parameters())
    tokens_per_step = s.global_batch * s.seq_len
    model.train()
    bar = tqdm(total=s.max_steps, initial=start, desc="train", unit="step", disable=not (progress and d.main))
    window_t, window_tokens = time.perf_counter(), 0
    for step in range(start, s.max_steps):
        lr = lr_at(step, s)
        for g in opt.param_groups:
            g["lr"] = lr
        micro = rank_micro_batches(global_batch_rows(step, len(rows), s), d, s)
        if masks is not None:  # the global number of target tokens, so every micro-batch divides by the same
            local = float(sum(masks[idx].sum() for idx in micro))
            denom = distributed.all_reduce_sum(torch.tensor(local, dtype=torch.float64), d).item()
        else:
            denom = float(s.global_batch * s.seq_len)
        opt.zero_grad(set_to_none=True)
        loss_total = torch.zeros((), dtype=torch.float64)
        for j, idx in enumerate(micro):
            batch = torch.from_numpy(np.ascontiguousarray(rows[idx])).long().to(device)
            mask = None if masks is None else torch.from_numpy(np.ascontiguousarray(masks[idx])).to(device)
            sync = j == len(micro) - 1
            with distributed.no_sync(ddp, sync), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                total, _ = loss_fn(ddp, batch, mask)
                # DDP averages gradients over ranks; the global mean needs the sum over ranks, so scale by world
                (total * (d.world / denom)).backward()
            loss_total += total.detach().double().cpu()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip)
        opt.step()
        loss = distributed.all_reduce_sum(loss_total, d).item() / denom
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss} at step {step + 1}; the last good checkpoint is kept")
        rec = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": float(grad_norm),
               "tokens": (step + 1) * tokens_per_step}
        window_tokens += tokens_per_step
        if (step + 1) % s.log_every == 0 or step + 1 == s.max_steps:
            dt = time.perf_counter() - window_t
            rec["tokens_per_s"] = window_tokens / dt
            if cuda and s.peak_flops > 0:
                rec["mfu"] = 6 * n_params * rec["tokens_per_s"] / s.peak_flops
            window_t, window_tokens = time.perf_counter(), 0
        if eval_fn is not None and ((step + 1) % s.eval_every == 0 or step + 1 == s.max_steps):
            model.eval()
            with torch.no_grad():
                rec.update(eval_fn(model, step + 1))
            model.train()
            window_t = time.perf_counter()  # evaluation time is not training throughput
        history.append(rec)
        if log_fn is not None and d.main:
            log_fn(rec, step + 1)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if (step + 1) % s.checkpoint_every == 0 or step + 1 == s.max_steps:
            if d.main:
                _save(ckpt_dir, step + 1, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                           "step": step + 1, "history": history, "rng": rng_state(),
                                           "fingerprint": fingerprint, "settings": asdict(s)}, s.keep_last)
            distributed.barrier(d)
        if stop_after is not None and step + 1 >= stop_after:
            break
    bar.close()
    return history


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def bits_per_byte(model, ids: np.ndarray, token_bytes: np.ndarray, seq_len: int, batch: int = 8,
                  device: str | torch.device = "cpu") -> dict:
    """Held-out bits per byte: the stream ``ids`` (documents joined by ``<|eos|>``) cut into non-overlapping
    windows of ``seq_len + 1`` ids; the summed next-token NLL of the scored tokens (nats) / ln 2 / their UTF-8 bytes
    (``token_bytes[id]``: the byte length of each vocabulary entry, 0 for special tokens). The first id of each
    window is context only; a tail shorter than a window is not scored."""
    width = seq_len + 1
    n = (len(ids) - 1) // seq_len
    if n < 1:
        raise ValueError(f"the held-out stream has {len(ids)} tokens, fewer than one window of {width}")
    windows = np.stack([ids[i * seq_len:i * seq_len + width] for i in range(n)])
    n_bytes = int(token_bytes[windows[:, 1:]].sum())
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    for i in range(0, n, batch):
        b = torch.from_numpy(windows[i:i + batch].astype(np.int64)).to(device)
        s, c = lm_loss_sum(model, b)
        total += float(s)
        count += int(c)
    model.train(was_training)
    return {"bits_per_byte": total / math.log(2) / n_bytes, "loss_per_token": total / count, "tokens": count,
            "bytes": n_bytes}


def unigram_bits_per_byte(train_counts: np.ndarray, ids: np.ndarray, token_bytes: np.ndarray, seq_len: int) -> float:
    """The same measure, on the same scored positions, for a unigram model of the training tokens (add-one
    smoothed): the baseline of the results table."""
    p = (train_counts.astype(np.float64) + 1.0) / (train_counts.sum() + len(train_counts))
    n = (len(ids) - 1) // seq_len
    scored = np.stack([ids[i * seq_len + 1:(i + 1) * seq_len + 1] for i in range(n)])
    return float(-np.log2(p[scored]).sum() / token_bytes[scored].sum())
