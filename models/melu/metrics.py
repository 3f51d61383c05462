"""MeLU evaluation metrics (paper Eq. 4-5): MAE and nDCG@k with gain 2^r - 1.

Tie rule (stated in every report): items are ranked by predicted rating, descending, with a stable sort
whose secondary key is the movie id, ascending; IDCG ranks by true rating (independent of tie order).
"""

from __future__ import annotations

import numpy as np

TIE_RULE = "rank by predicted rating desc; ties broken by movie id asc (stable)"


def mae(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over users of the per-user mean |y - y_hat| (every user has the same number of query items)."""
    return float(np.abs(np.asarray(pred) - np.asarray(true)).mean(axis=1).mean())


def _dcg(gains_in_rank_order: np.ndarray, k: int) -> np.ndarray:
    k = min(k, gains_in_rank_order.shape[1])
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    return (gains_in_rank_order[:, :k] * disc).sum(axis=1)


def ndcg_at_k(pred: np.ndarray, true: np.ndarray, item_ids: np.ndarray, k: int) -> float:
    """Mean over users of DCG@k / IDCG@k; users whose IDCG is 0 cannot occur with ratings >= 1."""
    pred, true, item_ids = (np.asarray(a) for a in (pred, true, item_ids))
    order = np.lexsort((item_ids, -pred), axis=-1)
    gains = 2.0 ** true - 1.0
    dcg = _dcg(np.take_along_axis(gains, order, axis=1), k)
    idcg = _dcg(-np.sort(-gains, axis=1), k)
    return float(np.mean(dcg / np.where(idcg > 0, idcg, 1.0)))


def rating_metrics(pred: np.ndarray, true: np.ndarray, item_ids: np.ndarray, ks=(1, 3)) -> dict[str, float]:
    out = {"mae": mae(pred, true)}
    for k in ks:
        out[f"ndcg_at_{k}"] = ndcg_at_k(pred, true, item_ids, k)
    return out
