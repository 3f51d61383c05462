"""Training and evaluation of the sequential recommenders (FaNC, GRU4Rec, SASRec): one loop for all.

Features:
- next-item prediction at every position of the training sequences, full-softmax cross-entropy over all
  items (padding id 0 excluded), Adam;
- early stopping on validation NDCG@10 with ``patience``; the best epoch's weights are kept in
  ``best.pt`` beside the epoch checkpoints (atomic writes), and a resumed run stops where an
  uninterrupted one would;
- the stopping rule is :class:`models.common.stopping.StopRule` (patience on validation NDCG@10 under
  ``train.epochs``); a wall-clock budget (``train.time_budget_s`` > 0, summed train + validation seconds
  of the checkpointed history) is an exploration option only: the run is then marked not reproducible;
- the per-epoch seconds, training throughput (sequences/s, targets/s) and, for FaNC, the share of steps
  whose gravitational acceleration was clipped are part of the history;
- evaluation by full ranking (default) or the sampled-negatives protocol (labelled), HR/NDCG@K and MRR.

Raises:
    NonFiniteLossError: a batch loss is NaN or infinite.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.common import distributed
from models.common.checkpoint import atomic_torch_save, check_finite, load_checkpoint, run_epochs
from models.common.config import fingerprint as config_fingerprint
from models.common.seed import generator, select_device, set_seed
from models.common.stopping import StopRule
from models.seqrec.config import SeqRecConfig
from models.seqrec.data import EvalSplit, LeaveOneOut, leave_one_out, load_sequences
from models.seqrec.metrics import ranking_metrics, ranks_from_scores, sampled_ranks
from models.seqrec.modeling import build_model

SELECT_METRIC = "valid_ndcg_at_10"  # best checkpoint and early stopping (spec); the registry gate is registry.gate_metric


def fingerprint(cfg: SeqRecConfig) -> str:
    """The checkpoint key: the data, model and train sections, minus their paths, device and resume switch."""
    return config_fingerprint({"data": cfg.data, "model": cfg.model, "train": cfg.train})


def load_data(cfg: SeqRecConfig) -> LeaveOneOut:
    seqs, n_items = load_sequences(cfg.data.processed_dir, cfg.data.dataset)
    return leave_one_out(seqs, n_items, cfg.data.max_len)


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: EvalSplit, cfg: SeqRecConfig, device: torch.device, seed: int = 0,
             ks: Iterable[int] | None = None) -> dict[str, float]:
    model.eval()
    ranks = []
    # under torchrun each rank ranks a contiguous share of the batches; gathered in rank order, the ranks are in the
    # single-process order (and the sampled protocol's seeds, seed + start, are the same)
    for start in distributed.shard(range(0, len(split.targets), cfg.eval.batch_users)):
        sl = slice(start, start + cfg.eval.batch_users)
        h = model(split.inputs[sl].to(device))[:, -1]
        scores = model.score(h).float().cpu()
        history = split.history[sl]
        if cfg.eval.protocol == "full":
            ranks.append(ranks_from_scores(scores, split.targets[sl], history if cfg.eval.mask_history else None))
        else:
            ranks.append(sampled_ranks(scores, split.targets[sl], history, cfg.eval.n_negatives, seed + start))
    model.train()
    local = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    return ranking_metrics(torch.cat(distributed.gather_objects(local)), ks or cfg.eval.ks)


def stop_rule(cfg: SeqRecConfig) -> StopRule:
    """Early stopping on validation NDCG@10 with ``train.patience`` under ``train.epochs`` (+ exploration budget)."""
    t = cfg.train
    return StopRule(SELECT_METRIC, "max", t.patience, t.epochs, t.time_budget_s)


def train(
    cfg: SeqRecConfig,
    data: LeaveOneOut | None = None,
    ckpt_dir: str | None = None,
    on_epoch_end: Iterable[Callable[[int, dict[str, float]], None]] = (),
    progress: bool = True,
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Train until early stopping; returns the best-validation model and the per-epoch history.

    Under torchrun (:mod:`models.common.distributed`) each global batch of ``train.batch_size`` users is split
    over the ranks and the cross-entropy sum is divided by the global number of targets, so W processes make the
    update of one; rank 0 writes ``best.pt`` and the checkpoints."""
    d = distributed.current()
    device = distributed.device_for(select_device(cfg.train.device))
    data = data or load_data(cfg)
    t = cfg.train
    set_seed(t.init_seed)
    model = build_model(cfg.model, data.n_items, cfg.data.max_len).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, betas=(0.9, t.adam_beta2), weight_decay=t.weight_decay)
    ckpt_dir = ckpt_dir or str(Path(t.checkpoint_dir) / fingerprint(cfg))
    best_path = Path(ckpt_dir) / "best.pt"
    best = {"score": -math.inf}
    if t.resume and best_path.exists():
        best["score"] = float(load_checkpoint(best_path)["score"])
    users = len(data.train_inputs)
    step_model = distributed.wrap(_TrainStep(model), d)

    def train_epoch(epoch: int) -> dict[str, float]:
        model.train()
        perm = torch.randperm(users, generator=generator(t.order_seed, epoch))
        total, n, clip_sum, clip_batches = 0.0, 0, 0.0, 0
        started = time.perf_counter()
        batches = perm.split(t.batch_size)
        for step, idx in enumerate(tqdm(batches, desc=f"epoch {epoch + 1}", leave=False, disable=not (progress and d.main))):
            idx = distributed.shard(idx, d)
            inputs = distributed.to_device(data.train_inputs[idx], device)
            targets = distributed.to_device(data.train_targets[idx], device)
            valid = targets > 0
            if d.world == 1:
                if not valid.any():
                    continue
                loss = F.cross_entropy(step_model(inputs, valid), targets[valid])
                count = int(valid.sum())
                loss_sum = float(loss.detach()) * count
            else:  # the sum over this rank's targets / (global targets / world): DDP's mean is the global mean
                count = int(valid.sum())
                n_global = distributed.global_sum(count, d)
                if not n_global:
                    continue
                summed = F.cross_entropy(step_model(inputs, valid), targets[valid], reduction="sum")
                loss = summed / (n_global / d.world)
                loss_sum = float(summed.detach())
            check_finite(loss, epoch=epoch, step=step, ckpt_dir=ckpt_dir)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss_sum
            n += count
            if getattr(model, "last_clip_fraction", None) is not None and getattr(model.cfg, "gravity", False):
                clip_sum, clip_batches = clip_sum + float(model.last_clip_fraction), clip_batches + 1
        train_seconds = time.perf_counter() - started
        if d.world > 1:
            sums = distributed.sum_dict({"total": total, "n": n, "clip_sum": clip_sum, "clip_batches": clip_batches}, d)
            total, n, clip_sum, clip_batches = sums["total"], int(sums["n"]), sums["clip_sum"], int(sums["clip_batches"])
        metrics = {"train_loss": total / max(n, 1), "train_seconds": train_seconds,
                   "train_seq_per_s": users / train_seconds, "train_targets_per_s": n / train_seconds}
        if clip_batches:
            metrics["clip_fraction"] = clip_sum / clip_batches
        ks = cfg.valid_ks()
        started = time.perf_counter()
        metrics.update({f"valid_{k}": v for k, v in evaluate(model, data.valid, cfg, device, ks=ks).items()})
        metrics["valid_seconds"] = time.perf_counter() - started
        if metrics[SELECT_METRIC] > best["score"]:
            best["score"] = metrics[SELECT_METRIC]
            if d.main:  # the other ranks read it after run_epochs' barrier
                state = {k: v.cpu() for k, v in model.state_dict().items()}
                atomic_torch_save({"model": state, "score": best["score"], "epoch": epoch + 1}, best_path)
        return metrics

    history = run_epochs(model=model, optimizer=opt, epochs=t.epochs, ckpt_dir=ckpt_dir, fingerprint=fingerprint(cfg),
                         seed=t.init_seed, train_epoch=train_epoch, on_epoch_end=on_epoch_end,
                         should_stop=stop_rule(cfg), resume=t.resume, progress=progress)
    distributed.barrier(d)
    model.load_state_dict(load_checkpoint(best_path, map_location=device)["model"])
    return model, history


class _TrainStep(torch.nn.Module):
    """The training forward (hidden states -> logits over the items at the target positions), as one module so
    that DDP sees the whole computation (``score`` shares the item table with the input embedding)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        logits = self.model.score(self.model(inputs)[valid])
        logits[:, 0] = -math.inf
        return logits
