"""The paper's two baselines for MeLU's Table 2, on the same features and splits.

- **Wide&Deep** (Cheng et al., 2016) as a rating regressor: the wide part is a linear model over the
  binary user and item features (one-hot single-valued fields, multi-hot bags); the deep part is MeLU's
  estimator (same embeddings, same 2x64 ReLU MLP, linear output); prediction = wide + deep, MSE loss.
  The cross-product transformations of the original paper are not used (MeLU's paper does not list any).
- **PPR** (Park & Chu, RecSys 2009), as the spec defines it: bilinear regression on one-hot user x item
  content, s(u, i) = x_u^T W z_i, with a constant 1 appended to both vectors so that W also holds the
  linear terms and the global bias. W is (3,433 x 10,196), stored as a sparse-gradient embedding over
  the active (user feature, item feature) pairs of each rating and fitted with MSE + L2 on the touched
  entries. (Park & Chu also describe a pairwise per-user loss; the regression form is the spec's.)

Training data [reconstruction; the paper does not say]: the warm-state episodes (support and query), so
new users and new items are scored from their content features alone (the reason the paper excludes
collaborative filtering). ``use_test_support`` also trains on the support sets of the cold-state users:
the ratings MeLU sees at test time, but pooled across users, so a "new" item becomes known to the
global model from other test users' supports (transductive; reported separately as "+S").
Baselines are not adapted per user.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from models.common.seed import generator, set_seed
from models.melu.data import ITEM_BAGS, Episodes, MeluTables
from models.melu.modeling import MeLU

USER_KEYS = ("gender", "age", "occupation", "zip")
ITEM_KEYS = ("rate", *ITEM_BAGS)


class FeatureIndex:
    """Global one-hot indices of every user and item feature (each field offset into one space)."""

    def __init__(self, tables: MeluTables):
        v = tables.vocab_sizes
        self.user_offsets = np.cumsum([0] + [v[k] for k in USER_KEYS])
        self.item_offsets = np.cumsum([0] + [v[k] for k in ITEM_KEYS])
        self.n_user = int(self.user_offsets[-1]) + 1  # + constant feature
        self.n_item = int(self.item_offsets[-1]) + 1
        uf = tables.user_fields.cpu().numpy()
        self.user_feats = [list(uf[r] + self.user_offsets[:-1]) + [self.n_user - 1] for r in range(len(uf))]
        rate = tables.item_rate.cpu().numpy()
        bags = {}
        for name in ITEM_BAGS:
            b = tables.item_bags[name]
            ids, off = b.ids.cpu().numpy(), b.offsets.cpu().numpy()
            ends = np.append(off[1:], len(ids))
            bags[name] = [ids[s:e] for s, e in zip(off, ends)]
        self.item_feats = []
        for r in range(len(rate)):
            f = [rate[r] + self.item_offsets[0]]
            for j, name in enumerate(ITEM_BAGS, start=1):
                f.extend(bags[name][r] + self.item_offsets[j])
            self.item_feats.append(np.asarray(f + [self.n_item - 1], dtype=np.int64))


class WideDeep(nn.Module):
    def __init__(self, tables: MeluTables, embedding_dim: int, hidden: list[int]):
        super().__init__()
        self.features = FeatureIndex(tables)
        self.deep = MeLU(tables.vocab_sizes, embedding_dim, hidden)
        self.wide = nn.EmbeddingBag(self.features.n_user + self.features.n_item, 1, mode="sum")
        nn.init.zeros_(self.wide.weight)

    def forward(self, tables: MeluTables, user_rows: torch.Tensor, item_rows: torch.Tensor) -> torch.Tensor:
        x = MeLU.join(self.deep.item_table(tables)[item_rows].unsqueeze(1), self.deep.user_vectors(tables, user_rows))
        deep = self.deep.decide(x).squeeze(1)
        fi = self.features
        bags = [np.concatenate([fi.user_feats[u], fi.item_feats[i] + fi.n_user]) for u, i in zip(user_rows.tolist(), item_rows.tolist())]
        ids = torch.as_tensor(np.concatenate(bags), device=x.device)
        offsets = torch.as_tensor(np.cumsum([0] + [len(b) for b in bags[:-1]]), device=x.device)
        return deep + self.wide(ids, offsets).squeeze(1)


class PPR(nn.Module):
    def __init__(self, tables: MeluTables):
        super().__init__()
        self.features = FeatureIndex(tables)
        self.W = nn.EmbeddingBag(self.features.n_user * self.features.n_item, 1, mode="sum", sparse=True)
        nn.init.zeros_(self.W.weight)

    def pair_ids(self, user_rows: torch.Tensor, item_rows: torch.Tensor):
        fi = self.features
        bags = [(np.asarray(fi.user_feats[u])[:, None] * fi.n_item + fi.item_feats[i][None, :]).ravel()
                for u, i in zip(user_rows.tolist(), item_rows.tolist())]
        ids = torch.as_tensor(np.concatenate(bags))
        offsets = torch.as_tensor(np.cumsum([0] + [len(b) for b in bags[:-1]]))
        return ids, offsets

    def score(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        dev = self.W.weight.device
        return self.W(ids.to(dev), offsets.to(dev)).squeeze(1)

    def forward(self, tables: MeluTables, user_rows: torch.Tensor, item_rows: torch.Tensor) -> torch.Tensor:
        return self.score(*self.pair_ids(user_rows.cpu(), item_rows.cpu()))


def training_pairs(train_eps: Episodes, extra_support: list[Episodes]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(user_rows, item_rows, ratings) of the warm support+query sets plus extra support sets."""
    us, its, ys = [], [], []
    def add(ep: Episodes, with_query: bool) -> None:
        m = ep.support_mask
        us.append(ep.user_rows.unsqueeze(1).expand_as(ep.support_items)[m]); its.append(ep.support_items[m]); ys.append(ep.support_y[m])
        if with_query:
            us.append(ep.user_rows.unsqueeze(1).expand_as(ep.query_items).reshape(-1)); its.append(ep.query_items.reshape(-1)); ys.append(ep.query_y.reshape(-1))
    add(train_eps, True)
    for ep in extra_support:
        add(ep, False)
    return torch.cat(us).cpu(), torch.cat(its).cpu(), torch.cat(ys).cpu()


def fit_baseline(kind: str, tables: MeluTables, train_eps: Episodes, extra_support: list[Episodes], cfg, model_cfg,
                 seed: int = 0, progress: bool = True) -> nn.Module:
    """Train ``kind`` in {'wide_deep', 'ppr'} with MSE; returns the fitted module (eval mode)."""
    set_seed(seed)
    tables = tables.to("cpu")
    if kind == "wide_deep":
        model: nn.Module = WideDeep(tables, model_cfg.embedding_dim, list(model_cfg.hidden))
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.l2)
    elif kind == "ppr":
        model = PPR(tables)
        opt = torch.optim.SparseAdam(list(model.parameters()), lr=cfg.lr)
    else:
        raise ValueError(f"unknown baseline {kind!r}")
    u, i, y = training_pairs(train_eps, extra_support if cfg.use_test_support else [])
    for epoch in tqdm(range(cfg.epochs), desc=f"{kind} epochs", disable=not progress):
        perm = torch.randperm(len(y), generator=generator(seed, epoch))
        for idx in perm.split(cfg.batch_size):
            if kind == "ppr":  # the (user feature, item feature) pairs are built once per batch
                ids, offsets = model.pair_ids(u[idx], i[idx])
                loss = F.mse_loss(model.score(ids, offsets), y[idx])
                if cfg.l2 > 0:
                    loss = loss + cfg.l2 * F.embedding(ids, model.W.weight, sparse=True).pow(2).sum() / len(idx)
            else:
                loss = F.mse_loss(model(tables, u[idx], i[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def predict_baseline(model: nn.Module, tables: MeluTables, ep: Episodes, batch: int = 4096) -> torch.Tensor:
    tables = tables.to("cpu")
    users = ep.user_rows.unsqueeze(1).expand_as(ep.query_items).reshape(-1).cpu()
    items = ep.query_items.reshape(-1).cpu()
    out = torch.cat([model(tables, users[s : s + batch], items[s : s + batch]) for s in range(0, len(items), batch)])
    return out.reshape(ep.query_items.shape)
