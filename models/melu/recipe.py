"""MeLU training and evaluation recipe (paper Alg. 1, spec §3), independent of Prefect and MLflow.

Features:
- meta-training over warm-state users with meta-batches of 32 users, processed as one batched
  computation (``models.melu.meta``); first- or second-order meta-gradient; Adam on the batch mean
  (official code) or SGD on the batch sum (paper Alg. 1);
- the task order of epoch e is a permutation drawn from a generator seeded with (order_seed, e), the
  initialisation from ``init_seed`` and the episodes from ``episode_seed``: the same seeds give the same
  metrics, and a resumed run ends exactly where an uninterrupted one does;
- a checkpoint after every epoch (atomic), resume from the newest, a NaN/inf loss stops the run;
- optional per-epoch evaluation of every state (learning curves only; the model kept is the last epoch,
  as in the official code, which has no validation-based selection).

Raises:
    NonFiniteLossError: a meta-batch loss is NaN or infinite.
    CheckpointMismatchError: the checkpoint directory holds a run with another configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from models.common.checkpoint import check_finite, run_epochs
from models.common.config import fingerprint as config_fingerprint
from models.common.seed import generator, select_device, set_seed
from models.melu.config import MeluConfig
from models.melu.data import Episodes, MeluTables, build_episodes, load_tables
from models.melu.meta import predict_query, query_losses
from models.melu.metrics import rating_metrics
from models.melu.modeling import MeLU


def fingerprint(cfg: MeluConfig) -> str:
    """Hash of everything that changes the trained weights (data, model, train sections, minus I/O keys)."""
    return config_fingerprint({"data": cfg.data, "model": cfg.model, "train": cfg.train})


@dataclass
class MeluData:
    tables: MeluTables
    episodes: dict[str, Episodes]


def load_data(cfg: MeluConfig, states: Iterable[str] | None = None, device: torch.device | str = "cpu") -> MeluData:
    tables = load_tables(cfg.data.processed_dir)
    d = cfg.data
    wanted = list(dict.fromkeys(["warm_state", *(states or cfg.eval.states)]))
    eps = {s: build_episodes(tables, s, d.episode_seed, d.min_ratings, d.max_ratings, d.query_size).to(device) for s in wanted}
    return MeluData(tables.to(device), eps)


def meta_batches(n_users: int, batch: int, order_seed: int, epoch: int, drop_last: bool) -> list[torch.Tensor]:
    perm = torch.randperm(n_users, generator=generator(order_seed, epoch))
    chunks = list(perm.split(batch))
    if drop_last and len(chunks) > 1 and len(chunks[-1]) < batch:
        chunks = chunks[:-1]
    return chunks


def evaluate_states(model: MeLU, data: MeluData, cfg: MeluConfig, states: Iterable[str] | None = None,
                    local_steps: int | None = None) -> dict[str, float]:
    """MAE and nDCG@k per state (``<state>_mae``, ``<state>_ndcg_at_1``...) and the mean cold-state MAE.

    ``local_steps``: the test-time adaptation steps (default ``train.local_steps``; 0 = the global model without
    adaptation, an evaluation-only setting that a training config may not have)."""
    steps = cfg.train.local_steps if local_steps is None else local_steps
    if steps < 0:
        raise ValueError(f"local_steps must be >= 0, got {steps}")
    model.eval()
    out: dict[str, float] = {}
    for state in states or cfg.eval.states:
        ep = data.episodes[state]
        pred = predict_query(model, data.tables, ep, steps, cfg.train.local_lr, cfg.eval.batch_users)
        m = rating_metrics(pred.cpu().numpy(), ep.query_y.cpu().numpy(), ep.query_movie_ids.cpu().numpy(), cfg.eval.ndcg_k)
        short = state.removesuffix("_state")
        out.update({f"{short}_{k}": v for k, v in m.items()})
    cold = [out[f"{s}_mae"] for s in ("user_cold", "item_cold", "user_and_item_cold") if f"{s}_mae" in out]
    if cold:
        out["cold_mae_mean"] = float(np.mean(cold))
    model.train()
    return out


def train(
    cfg: MeluConfig,
    data: MeluData | None = None,
    ckpt_dir: str | None = None,
    on_epoch_end: Iterable[Callable[[int, dict[str, float]], None]] = (),
    eval_every_epoch: bool = True,
    progress: bool = True,
) -> tuple[MeLU, list[dict[str, float]]]:
    """Meta-train MeLU on the warm state; returns the final model and the per-epoch history."""
    device = select_device(cfg.train.device)
    data = data or load_data(cfg, device=device)
    t = cfg.train
    set_seed(t.init_seed)
    model = MeLU.from_config(cfg.model, data.tables.vocab_sizes).to(device)
    if t.global_optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=t.global_lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=t.global_lr)
    warm = data.episodes["warm_state"]
    ckpt_dir = ckpt_dir or t.checkpoint_dir

    def train_epoch(epoch: int) -> dict[str, float]:
        model.train()
        batches = meta_batches(len(warm), t.meta_batch_size, t.order_seed, epoch, t.drop_last)
        total, n = 0.0, 0
        for step, idx in enumerate(tqdm(batches, desc=f"epoch {epoch + 1}", leave=False, disable=not progress)):
            losses = query_losses(model, data.tables, warm.subset(idx), t.local_steps, t.local_lr, t.meta_order, t.length_buckets)
            loss = losses.mean() if t.global_optimizer == "adam" else losses.sum()
            check_finite(loss, epoch=epoch, step=step, ckpt_dir=ckpt_dir)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(losses.detach().sum())
            n += len(idx)
        metrics = {"train_query_mse": total / max(n, 1)}
        if eval_every_epoch:
            metrics.update(evaluate_states(model, data, cfg))
        return metrics

    history = run_epochs(
        model=model, optimizer=opt, epochs=t.epochs, ckpt_dir=ckpt_dir, fingerprint=fingerprint(cfg),
        seed=t.init_seed, train_epoch=train_epoch, on_epoch_end=on_epoch_end, resume=t.resume, progress=progress,
    )
    return model, history
