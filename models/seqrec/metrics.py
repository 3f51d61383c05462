"""Ranking metrics for next-item prediction with a single target per user.

Full ranking (default): the target is ranked against every item 1..N (padding id 0 excluded).
rank = 1 + #{candidates scoring higher} + #{other candidates scoring equal} (pessimistic: constant
scores earn no credit). HR@K = 1[rank <= K]; NDCG@K = 1 / log2(rank + 1) if rank <= K else 0.
History: by default the user's already-consumed items stay candidates (as in S3-Rec); with
``mask_history`` they are removed (the target itself is never removed).
Sampled protocol (option, labelled wherever reported): the target against ``n_negatives`` items drawn
uniformly from the items the user has not consumed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FULL = "full ranking over all items"


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor, history: list[np.ndarray] | None = None) -> torch.Tensor:
    """scores (B, N + 1) with column 0 = padding; targets (B,) in 1..N -> pessimistic ranks (B,)."""
    scores = scores.clone()
    scores[:, 0] = -math.inf
    if history is not None:
        rows = np.concatenate([np.full(len(h), r, dtype=np.int64) for r, h in enumerate(history)] + [np.zeros(0, np.int64)])
        cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in history] + [np.zeros(0, np.int64)])
        keep = cols != targets.cpu().numpy()[rows]
        scores[torch.as_tensor(rows[keep]), torch.as_tensor(cols[keep])] = -math.inf
    t = scores.gather(1, targets.view(-1, 1))
    higher = (scores > t).sum(1)
    ties = (scores == t).sum(1) - 1  # minus the target itself
    return 1 + higher + ties


def sampled_ranks(scores: torch.Tensor, targets: torch.Tensor, history: list[np.ndarray], n_negatives: int, seed: int) -> torch.Tensor:
    """Rank of the target among ``n_negatives`` uniformly sampled unconsumed items (pessimistic ties)."""
    rng = np.random.default_rng(seed)
    n_items = scores.shape[1] - 1
    out = torch.empty(len(targets), dtype=torch.long)
    for r in range(len(targets)):
        seen = set(history[r].tolist()) | {int(targets[r])}
        negs = []
        while len(negs) < n_negatives:
            cand = rng.integers(1, n_items + 1, size=2 * n_negatives)
            negs.extend(int(c) for c in cand if c not in seen)
        t = scores[r, targets[r]]
        neg_scores = scores[r, torch.as_tensor(negs[:n_negatives])]
        out[r] = 1 + int((neg_scores >= t).sum())
    return out


def ranking_metrics(ranks: torch.Tensor, ks=(5, 10, 20)) -> dict[str, float]:
    r = ranks.double()
    out = {}
    for k in ks:
        hit = r <= k
        out[f"hr_at_{k}"] = float(hit.double().mean())
        out[f"ndcg_at_{k}"] = float(torch.where(hit, 1.0 / torch.log2(r + 1), torch.zeros_like(r)).mean())
    out["mrr"] = float((1.0 / r).mean())
    return out
