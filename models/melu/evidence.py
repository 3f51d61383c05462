"""Evidence-candidate selection (paper §3.3, spec §3.3): which items a new user should be asked about.

For every (warm-state user, support item) pair the item alone is a one-item support set. We take ``l``
local steps on the unit-normalised loss L/|L| (|L| held constant, because the literal ratio has zero
gradient) and record, at each step, the gradient norm; the pair's value is the mean over the steps.

- ``grad_params="decision"`` (paper): the gradient with respect to theta2 only;
  ``"all"`` (official code): every parameter tensor, embedding tables included. The per-pair gradient of
  a table is nonzero only on the rows the pair touched: a single-valued field puts the x0 gradient
  slice g_f on one row, a bag of n distinct members puts g_f / n on n rows, so its Frobenius norm is
  ||g_f|| / sqrt(n); this is computed in closed form from the x0 gradient, batched over pairs.
- ``norm="sum_per_tensor"`` (official code): the sum of per-tensor Frobenius norms;
  ``"global"``: one norm over the concatenated gradient.

Per item: discriminative value = mean over its pairs; popularity = number of warm-state support sets
containing it. Both are divided by their maximum over items; score = product; the top ``k`` are the
evidence candidates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from models.melu.data import ITEM_BAGS, Episodes, MeluTables
from models.melu.modeling import MeLU


def _bag_sizes(tables: MeluTables) -> torch.Tensor:
    """(n_items, 3) number of distinct members of each item bag (genre, director, actor)."""
    n = len(tables.item_ids)
    sizes = []
    for name in ITEM_BAGS:
        b = tables.item_bags[name]
        ends = torch.cat([b.offsets[1:], torch.tensor([len(b.ids)], device=b.ids.device)])
        sizes.append((ends - b.offsets).float())
    return torch.stack(sizes, dim=1)[:n]


def pair_gradient_norms(model: MeLU, tables: MeluTables, ep: Episodes, steps: int, lr: float,
                        grad_params: str = "decision", norm: str = "sum_per_tensor", batch_pairs: int = 1024,
                        progress: bool = True) -> pd.DataFrame:
    """One row per (user, support item) pair: user_id, movie_id, item row, mean gradient norm over steps."""
    model.eval()
    d = model.item_encoder.rate.embedding_dim
    users = ep.user_rows.unsqueeze(1).expand_as(ep.support_items)[ep.support_mask]
    items = ep.support_items[ep.support_mask]
    user_ids = torch.as_tensor(ep.user_ids).unsqueeze(1).expand_as(ep.support_items.cpu())[ep.support_mask.cpu()]
    ratings = ep.support_y[ep.support_mask]
    with torch.no_grad():
        item_vecs = model.item_table(tables)
        bag_sizes = _bag_sizes(tables)
    values = []
    for start in tqdm(range(0, len(items), batch_pairs), desc="evidence pairs", disable=not progress):
        sl = slice(start, start + batch_pairs)
        with torch.no_grad():
            x = MeLU.join(item_vecs[items[sl]].unsqueeze(1), model.user_vectors(tables, users[sl]))
        x = x.detach().requires_grad_(grad_params == "all")
        y = ratings[sl].unsqueeze(1)
        P = x.shape[0]
        fast = {k: p.detach().unsqueeze(0).expand(P, *p.shape).clone().requires_grad_(True) for k, p in model.decision_params().items()}
        acc = torch.zeros(P, device=x.device)
        for _ in range(steps):
            with torch.enable_grad():
                loss = ((model.decide(x, fast) - y) ** 2).squeeze(1)
                normed = loss / loss.detach().abs().clamp_min(1e-12)
                wrt = list(fast.values()) + ([x] if grad_params == "all" else [])
                grads = torch.autograd.grad(normed.sum(), wrt)
            sq = [g.reshape(P, -1).pow(2).sum(1) for g in grads[: len(fast)]]
            if grad_params == "all":
                gx = grads[-1].squeeze(1)  # (P, 8d): item [rate, genre, director, actor], user [4 fields]
                fields = gx.reshape(P, 8, d).pow(2).sum(-1)  # squared norm of each field slice
                div = torch.ones(P, 8, device=x.device)
                div[:, 1:4] = bag_sizes[items[sl]]
                sq += list((fields / div).unbind(1))
            if norm == "sum_per_tensor":
                acc += torch.stack([s.sqrt() for s in sq]).sum(0)
            else:
                acc += torch.stack(sq).sum(0).sqrt()
            with torch.no_grad():
                fast = {k: (v - lr * g).requires_grad_(True) for (k, v), g in zip(fast.items(), grads[: len(fast)])}
        values.append((acc / steps).cpu())
    model.train()
    return pd.DataFrame({
        "user_id": user_ids.numpy(),
        "movie_id": tables.item_ids[items.cpu().numpy()],
        "rating": ratings.cpu().numpy(),
        "grad_norm": torch.cat(values).numpy(),
    })


def select_candidates(pairs: pd.DataFrame, top_k: int = 20, titles: dict[int, str] | None = None) -> pd.DataFrame:
    """Per-item discriminative value, popularity and score, sorted best first; column ``rank`` (1 = best)."""
    per_item = pairs.groupby("movie_id").agg(discriminative=("grad_norm", "mean"), popularity=("user_id", "nunique"))
    per_item["discriminative_norm"] = per_item.discriminative / per_item.discriminative.max()
    per_item["popularity_norm"] = per_item.popularity / per_item.popularity.max()
    per_item["score"] = per_item.discriminative_norm * per_item.popularity_norm
    per_item = per_item.reset_index().sort_values(["score", "movie_id"], ascending=[False, True], kind="stable")
    per_item["rank"] = np.arange(1, len(per_item) + 1)
    per_item["top_k"] = per_item["rank"] <= top_k
    if titles is not None:
        per_item.insert(1, "title", per_item.movie_id.map(titles))
    return per_item.reset_index(drop=True)
