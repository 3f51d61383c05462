"""Training and evaluation of DisSAN and the BiLSTM-max baseline (spec dissan.md §3, §5).

- Data: train / dev / test of the chosen dataset; the vocabulary comes from the training split, word
  vectors are frozen (GloVe rows, OOV words U(-0.05, 0.05) fixed by the seed); OOV rate per split reported.
  SNLI without its train split (offline): a *pipeline check* that trains on 90% of SNLI dev, selects on the
  other 10% and tests on SNLI test; it is labelled ``comparable_to_paper = False`` everywhere.
- Training: Adam (lr 1e-3), batch 64, dropout 0.1, 20 epochs, cross-entropy; epoch checkpoints with resume;
  the epoch with the best dev accuracy is kept in ``best.pt`` (model selection on dev, never on test).
- Evaluation: accuracy, accuracy per length bucket (length = the longer sentence of the pair, the paper's
  claim is about long sentences), the 3x3 confusion matrix (rows gold, columns predicted).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.common.checkpoint import atomic_torch_save, check_finite, load_checkpoint, run_epochs
from models.common.config import fingerprint as config_fingerprint
from models.common.seed import generator, select_device, set_seed
from models.dissan.config import DissanConfig
from models.dissan.data import LABELS, NLIPairs, Vocab, build_vectors, encode, load_splits
from models.dissan.modeling import NLIClassifier

SELECT_METRIC = "dev_accuracy"  # best checkpoint (paper: best dev accuracy); the registry gate is registry.gate_metric
NOT_COMPARABLE = "SNLI pipeline check without the SNLI train split (trained on 90% of dev): not comparable to the paper"


@dataclass
class Prepared:
    vocab: Vocab
    vectors: torch.Tensor
    splits: dict[str, dict[str, torch.Tensor]]
    info: dict


def fingerprint(cfg: DissanConfig) -> str:
    """The checkpoint key: the data, model and train sections, minus their paths, device and resume switch."""
    return config_fingerprint({"data": cfg.data, "model": cfg.model, "train": cfg.train})


def _subset(p: NLIPairs, idx: np.ndarray) -> NLIPairs:
    return NLIPairs([p.premises[i] for i in idx], [p.hypotheses[i] for i in idx], [p.labels[i] for i in idx])


def prepare(cfg: DissanConfig) -> Prepared:
    d = cfg.data
    raw = load_splits(d.dataset, d.raw_dir)
    info: dict = {"dataset": d.dataset, "comparable_to_paper": True, "protocol": f"{d.dataset}: train -> dev (selection) -> test"}
    if "train" not in raw:  # SNLI offline
        perm = np.random.default_rng(cfg.train.init_seed).permutation(len(raw["dev"]))
        cut = int(0.9 * len(perm))
        raw = {"train": _subset(raw["dev"], perm[:cut]), "dev": _subset(raw["dev"], perm[cut:]), "test": raw["test"]}
        info.update({"comparable_to_paper": False, "protocol": NOT_COMPARABLE})
    vocab = Vocab.build(raw["train"], d.lowercase, d.min_count)
    vectors, vstats = build_vectors(vocab, d.vectors, d.oov_init, seed=cfg.train.init_seed)
    info.update({"vectors": vstats, "sizes": {k: len(v) for k, v in raw.items()},
                 "oov_rate": {k: vocab.oov_rate(v) for k, v in raw.items()},
                 "label_counts": {k: v.label_counts() for k, v in raw.items()}})
    return Prepared(vocab, vectors, {k: encode(v, vocab, d.max_len) for k, v in raw.items()}, info)


def batches(split: dict[str, torch.Tensor], idx: torch.Tensor, batch_size: int, device) -> Iterable[tuple]:
    """Mini-batches trimmed to their longest sentence."""
    for b in idx.split(batch_size):
        pl, hl = split["p_len"][b], split["h_len"][b]
        yield (split["p"][b, : int(pl.max())].to(device), pl.to(device), split["h"][b, : int(hl.max())].to(device), hl.to(device),
               split["y"][b].to(device))


@torch.no_grad()
def predict(model: NLIClassifier, split: dict[str, torch.Tensor], device, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    probs = [torch.softmax(model(p, pl, h, hl), -1).cpu() for p, pl, h, hl, _ in
             batches(split, torch.arange(len(split["y"])), batch_size, device)]
    model.train()
    return torch.cat(probs)


def length_bucket_edges(edges: list[int]) -> list[tuple[int, float]]:
    lows = [1, *[e + 1 for e in edges]]
    return list(zip(lows, [*edges, math.inf]))


def evaluate(model: NLIClassifier, split: dict[str, torch.Tensor], device, edges: Iterable[int] = (8, 10, 13, 16)) -> dict:
    """Accuracy, per-length-bucket accuracy and the confusion matrix of one split."""
    probs = predict(model, split, device)
    pred, gold = probs.argmax(-1), split["y"]
    correct = (pred == gold).float()
    length = torch.maximum(split["p_len"], split["h_len"])
    buckets = {}
    for lo, hi in length_bucket_edges(list(edges)):
        sel = (length >= lo) & (length <= hi)
        name = f"len_{lo}_{'inf' if math.isinf(hi) else int(hi)}"
        buckets[name] = {"n": int(sel.sum()), "accuracy": float(correct[sel].mean()) if sel.any() else None}
    confusion = torch.zeros(3, 3, dtype=torch.long)
    confusion.index_put_((gold, pred), torch.ones_like(gold), accumulate=True)
    return {"accuracy": float(correct.mean()), "n": len(gold), "buckets": buckets, "confusion": confusion.tolist(), "labels": list(LABELS)}


def train(cfg: DissanConfig, data: Prepared | None = None, ckpt_dir: str | None = None,
          on_epoch_end: Iterable[Callable[[int, dict[str, float]], None]] = (), progress: bool = True) -> tuple[NLIClassifier, list[dict], Prepared]:
    """Train for ``train.epochs``; returns the best-dev-accuracy model, the history and the prepared data."""
    device = select_device(cfg.train.device)
    data = data or prepare(cfg)
    t = cfg.train
    set_seed(t.init_seed)
    model = NLIClassifier(cfg.model, data.vectors).to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=t.lr, weight_decay=t.weight_decay)
    ckpt_dir = ckpt_dir or str(Path(t.checkpoint_dir) / fingerprint(cfg))
    best_path = Path(ckpt_dir) / "best.pt"
    best = {"score": -math.inf}
    if t.resume and best_path.exists():
        best["score"] = float(load_checkpoint(best_path)["score"])
    train_split = data.splits["train"]
    n = len(train_split["y"])

    def train_epoch(epoch: int) -> dict[str, float]:
        model.train()
        perm = torch.randperm(n, generator=generator(t.order_seed, epoch))
        total, correct, started = 0.0, 0, time.perf_counter()
        for step, (p, pl, h, hl, y) in enumerate(tqdm(batches(train_split, perm, t.batch_size, device), total=math.ceil(n / t.batch_size),
                                                      desc=f"epoch {epoch + 1}", leave=False, disable=not progress)):
            logits = model(p, pl, h, hl)
            loss = F.cross_entropy(logits, y)
            check_finite(loss, epoch=epoch, step=step, ckpt_dir=ckpt_dir)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            total += float(loss.detach()) * len(y)
            correct += int((logits.argmax(-1) == y).sum())
        seconds = time.perf_counter() - started
        dev = evaluate(model, data.splits["dev"], device, cfg.eval.length_buckets)
        metrics = {"train_loss": total / n, "train_accuracy": correct / n, SELECT_METRIC: dev["accuracy"],
                   "train_seconds": seconds, "train_pairs_per_s": n / seconds}
        if metrics[SELECT_METRIC] > best["score"]:
            best["score"] = metrics[SELECT_METRIC]
            atomic_torch_save({"model": {k: v.cpu() for k, v in model.state_dict().items()}, "score": best["score"], "epoch": epoch + 1}, best_path)
        return metrics

    history = run_epochs(model=model, optimizer=opt, epochs=t.epochs, ckpt_dir=ckpt_dir, fingerprint=fingerprint(cfg), seed=t.init_seed,
                         train_epoch=train_epoch, on_epoch_end=on_epoch_end, resume=t.resume, progress=progress)
    model.load_state_dict(load_checkpoint(best_path, map_location=device)["model"])
    return model, history, data
