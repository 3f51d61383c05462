"""The benchmark reference for MeLU: what the official code (hoyeoplee/MeLU @ f70c8ff) computes per meta-batch,
re-implemented (not copied) so its time can stand for the official code's on this machine.

What it does, as the official ``MeLU.py`` / ``embeddings.py`` / ``model_training.py`` do:

- inputs are the official dense rows, built before timing (the official code reads them from pre-built pickles):
  ``[rate id | genre 25 | director 2,186 | actor 8,030 multi-hot | gender age occupation zip]`` = 10,246 int64
  columns (our actor vocabulary has 7,978 entries; the other 52 official columns are never active, as in the
  official data); multi-hot blocks are embedded by ``Linear(n, 32, bias=False)`` on ``x.float()`` divided by the
  number of active entries, at every forward;
- one user at a time, ``l`` local steps: the whole network (embeddings included) runs on the support rows, the
  inner gradient is ``torch.autograd.grad(loss, every parameter, create_graph=True)``, fast weights are
  ``w - alpha * g`` for the six decision tensors and ``w`` for the rest (every ``state_dict`` entry), and they are
  written into the module by an in-place copy of every entry through ``.data`` (what ``load_state_dict`` did up to
  torch 1.1, the versions the code was written for); the query forward runs on the written weights, then the
  stored weights are copied back the same way;
- the meta-batch loss is the mean of the users' query MSEs; ``zero_grad``, ``backward``, Adam on every parameter,
  and ``store_parameters`` (a ``deepcopy`` of the ``state_dict``).

Because the copies go through ``.data``, the query loss has no autograd path through the inner steps (the
official update is first-order at best, spec §7.1) and its backward uses tensors that were overwritten after the
forward; :func:`official_update` therefore reproduces the official *cost*, not a meta-gradient to compare with.
:func:`exact_query_loss` runs the same model functionally (``torch.func.functional_call``) with exact first- or
second-order MAML, which tests/test_melu_reference.py checks against the batched implementation.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from models.melu.data import ITEM_BAGS, Episodes, MeluTables
from models.melu.modeling import MeLU

# official widths of the multi-hot blocks (options.py: num_genre, num_director, num_actor)
OFFICIAL_WIDTH = {"genre": 25, "director": 2186, "actor": 8030}
USER_FIELDS = ("gender", "age", "occupation", "zip")
DECISION = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "linear_out.weight", "linear_out.bias")


class OfficialLayoutMeLU(torch.nn.Module):
    """The official network on dense rows, with the weights of a project ``MeLU`` (same function)."""

    def __init__(self, model: MeLU, tables: MeluTables):
        super().__init__()
        v = tables.vocab_sizes
        d = model.item_encoder.rate.embedding_dim
        self.width = {k: max(OFFICIAL_WIDTH[k], v[k]) for k in ITEM_BAGS}
        self.rate = torch.nn.Embedding(v["rate"], d)
        self.bag = torch.nn.ModuleDict({k: torch.nn.Linear(self.width[k], d, bias=False) for k in ITEM_BAGS})
        self.user = torch.nn.ModuleDict({k: torch.nn.Embedding(v[k], d) for k in USER_FIELDS})
        (fc1, fc2), out = model.fc, model.out
        self.fc1 = torch.nn.Linear(fc1.in_features, fc1.out_features)
        self.fc2 = torch.nn.Linear(fc2.in_features, fc2.out_features)
        self.linear_out = torch.nn.Linear(out.in_features, 1)
        with torch.no_grad():
            self.rate.weight.copy_(model.item_encoder.rate.weight)
            for k in ITEM_BAGS:
                self.bag[k].weight.zero_()
                self.bag[k].weight[:, : v[k]].copy_(getattr(model.item_encoder, k).weight.T)
            for k in USER_FIELDS:
                self.user[k].weight.copy_(getattr(model.user_encoder, k).weight)
            for mine, theirs in ((self.fc1, fc1), (self.fc2, fc2), (self.linear_out, out)):
                mine.load_state_dict(theirs.state_dict())
        starts = np.cumsum([1, *(self.width[k] for k in ITEM_BAGS)])
        self.cols = {k: (int(starts[i]), int(starts[i + 1])) for i, k in enumerate(ITEM_BAGS)}
        self.n_cols = int(starts[-1]) + len(USER_FIELDS)
        self.tables = tables

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.rate(x[:, 0])]
        for k in ITEM_BAGS:
            lo, hi = self.cols[k]
            hot = x[:, lo:hi].float()
            parts.append(self.bag[k](hot) / hot.sum(1).view(-1, 1))
        parts += [self.user[k](x[:, -len(USER_FIELDS) + i]) for i, k in enumerate(USER_FIELDS)]
        h = F.relu(self.fc1(torch.cat(parts, 1)))
        return self.linear_out(F.relu(self.fc2(h)))

    def dense_rows(self, user_row: int, item_rows: list[int]) -> torch.Tensor:
        t = self.tables
        rows = torch.zeros(len(item_rows), self.n_cols, dtype=torch.long)
        for r, i in enumerate(item_rows):
            rows[r, 0] = t.item_rate[i]
            for k in ITEM_BAGS:
                b = t.item_bags[k]
                lo = self.cols[k][0]
                start = int(b.offsets[i])
                end = int(b.offsets[i + 1]) if i + 1 < len(b.offsets) else len(b.ids)
                rows[r, lo + b.ids[start:end]] = 1
        rows[:, -len(USER_FIELDS):] = t.user_fields[user_row]
        return rows

    def episodes(self, ep: Episodes) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(support rows, support ratings, query rows, query ratings) per user, built once (the official pickles)."""
        out = []
        for u in range(len(ep)):
            n = int(ep.support_mask[u].sum())
            row = int(ep.user_rows[u])
            out.append((self.dense_rows(row, ep.support_items[u, :n].tolist()), ep.support_y[u, :n].clone(),
                        self.dense_rows(row, ep.query_items[u].tolist()), ep.query_y[u].clone()))
        return out


def _copy_into(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict`` as torch <= 1.1 wrote it: every entry copied in place through ``.data``."""
    for name, p in module.state_dict(keep_vars=True).items():
        p.data.copy_(state[name])


def official_update(model: OfficialLayoutMeLU, opt: torch.optim.Optimizer, batch: list, steps: int, lr: float,
                    keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One official ``global_update`` on ``batch`` (pre-built dense episodes); returns the new ``keep_weight``."""
    names = list(keep)
    params = list(model.parameters())
    losses = []
    for xs, ys, xq, yq in batch:
        fast: dict[str, torch.Tensor] = {}
        for idx in range(steps):
            if idx > 0:
                _copy_into(model, fast)
            current = list(model.state_dict().values())
            loss = F.mse_loss(model(xs), ys.view(-1, 1))
            model.zero_grad()
            grad = torch.autograd.grad(loss, params, create_graph=True)
            for i, name in enumerate(names):
                fast[name] = current[i] - lr * grad[i] if name in DECISION else current[i]
        _copy_into(model, fast)
        pred = model(xq)
        _copy_into(model, keep)
        losses.append(F.mse_loss(pred, yq.view(-1, 1)))
    loss = torch.stack(losses).mean(0)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return copy.deepcopy(model.state_dict())


def exact_query_loss(model: OfficialLayoutMeLU, batch: list, steps: int, lr: float, meta_order: str) -> torch.Tensor:
    """The mean query MSE of ``batch`` with exact first- or second-order MAML on the decision layers."""
    theta = dict(model.named_parameters())
    losses = []
    for xs, ys, xq, yq in batch:
        fast = dict(theta)
        for _ in range(steps):
            loss = F.mse_loss(functional_call(model, fast, (xs,)), ys.view(-1, 1))
            grads = torch.autograd.grad(loss, [fast[n] for n in DECISION], create_graph=meta_order == "second")
            for n, g in zip(DECISION, grads):
                fast[n] = fast[n] - lr * (g if meta_order == "second" else g.detach())
        losses.append(F.mse_loss(functional_call(model, fast, (xq,)), yq.view(-1, 1)))
    return torch.stack(losses).mean()
