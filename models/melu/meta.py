"""Local adaptation and the meta-objective of MeLU (paper Alg. 1), batched over users.

The per-user copies theta2_i are ``theta2.expand(B, ...)``: one tensor with a leading user dimension.
Because user i's loss depends only on slice i, the gradient of the *sum* of per-user losses with respect
to the batched tensor is exactly the stack of per-user gradients, so one ``autograd.grad`` call does the
local step for the whole meta-batch (equivalent to ``torch.func.vmap(grad(...))``, cheaper here).

- ``meta_order="second"``: inner gradients keep their graph (``create_graph=True``); the meta-gradient
  differentiates through the local updates, including the path through the embeddings (Alg. 1).
- ``meta_order="first"``: inner gradients are detached; the meta-gradient is the query-loss gradient
  evaluated at theta2_i and applied to theta (what the official code effectively computes).
"""

from __future__ import annotations

import torch

from models.melu.data import Episodes, MeluTables
from models.melu.modeling import MeLU


def masked_mse(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-user mean squared error over the (valid) items: (B, S) -> (B,)."""
    se = (pred - y) ** 2
    if mask is None:
        return se.mean(dim=1)
    m = mask.to(se.dtype)
    return (se * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def adapt(
    model: MeLU,
    x_s: torch.Tensor,
    y_s: torch.Tensor,
    mask_s: torch.Tensor | None,
    steps: int,
    lr: float,
    meta_order: str = "second",
    track_meta_grad: bool = True,
) -> dict[str, torch.Tensor]:
    """``steps`` local SGD steps on the support MSE; returns per-user parameters {name: (B, ...)}."""
    B = x_s.shape[0]
    second = meta_order == "second" and track_meta_grad
    if meta_order not in ("first", "second"):
        raise ValueError(f"meta_order must be 'first' or 'second', got {meta_order!r}")
    fast = {}
    for name, p in model.decision_params().items():
        base = p if track_meta_grad else p.detach().requires_grad_(True)
        fast[name] = base.unsqueeze(0).expand(B, *p.shape)
    if not second:
        x_s = x_s.detach()
    for _ in range(steps):
        loss = masked_mse(model.decide(x_s, fast), y_s, mask_s).sum()
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second)
        fast = {k: v - lr * (g if second else g.detach()) for (k, v), g in zip(fast.items(), grads)}
    if not track_meta_grad:
        fast = {k: v.detach() for k, v in fast.items()}
    return fast


def episode_inputs(model: MeLU, tables: MeluTables, ep: Episodes, item_vecs: torch.Tensor | None = None):
    """x0 for the support and query sets of a batch of episodes."""
    if item_vecs is None:
        item_vecs = model.item_table(tables)
    users = model.user_vectors(tables, ep.user_rows)
    x_s = MeLU.join(item_vecs[ep.support_items], users)
    x_q = MeLU.join(item_vecs[ep.query_items], users)
    return x_s, x_q


def query_losses(model: MeLU, tables: MeluTables, ep: Episodes, steps: int, lr: float, meta_order: str) -> torch.Tensor:
    """L'_i = MSE(query_i; theta1, theta2_i) for every user of the batch: (B,)."""
    x_s, x_q = episode_inputs(model, tables, ep)
    fast = adapt(model, x_s, ep.support_y, ep.support_mask, steps, lr, meta_order)
    return masked_mse(model.decide(x_q, fast), ep.query_y)




def predict_query(model: MeLU, tables: MeluTables, ep: Episodes, steps: int, lr: float, batch_users: int = 256) -> torch.Tensor:
    """Adapt on each user's support set, then predict the query items: (U, Q). No meta-gradient."""
    out = []
    with torch.no_grad():
        item_vecs = model.item_table(tables)
    for start in range(0, len(ep), batch_users):
        b = ep.subset(range(start, min(start + batch_users, len(ep))))
        with torch.no_grad():
            x_s, x_q = episode_inputs(model, tables, b, item_vecs)
        with torch.enable_grad():
            fast = adapt(model, x_s, b.support_y, b.support_mask, steps, lr, "first", track_meta_grad=False)
        with torch.no_grad():
            out.append(model.decide(x_q, fast))
    return torch.cat(out)
