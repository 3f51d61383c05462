"""MeLU data: the preprocessed id tables and the per-state episodes (support / query sets).

Episodes follow the spec (§4.2): a user of a state is kept when 13 <= n <= 100 ratings *within that
state*; the user's ratings are shuffled with a generator seeded by (episode_seed, user_id) (the
official script shuffles without a seed); the last ``query_size`` items are the query set and the rest
the support set. Tensors are padded to the longest support set with a boolean mask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

STATES = ("warm_state", "user_cold_state", "item_cold_state", "user_and_item_cold_state")
ITEM_BAGS = ("genre", "director", "actor")
USER_FIELDS = ("gender", "age", "occupation", "zip")


@dataclass
class Bag:
    """CSR layout of a multi-valued field: members of row r are ids[offsets[r]:offsets[r+1]]."""

    ids: torch.Tensor  # (nnz,) int64
    offsets: torch.Tensor  # (rows,) int64, start offsets (EmbeddingBag convention)

    @classmethod
    def from_lists(cls, lists) -> "Bag":
        lengths = np.array([len(x) for x in lists], dtype=np.int64)
        if (lengths == 0).any():
            raise ValueError("every bag needs at least one member (missing values map to 'nan')")
        ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists])
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        return cls(torch.from_numpy(ids), torch.from_numpy(offsets))

    def to(self, device) -> "Bag":
        return Bag(self.ids.to(device), self.offsets.to(device))


@dataclass
class MeluTables:
    """Everything the model needs about users and items, as tensors indexed by a dense row id."""

    vocab_sizes: dict[str, int]
    item_ids: np.ndarray  # row -> movie_id
    item_rate: torch.Tensor  # (n_items,)
    item_bags: dict[str, Bag]
    user_ids: np.ndarray  # row -> user_id
    user_fields: torch.Tensor  # (n_users, 4): gender, age, occupation, zip
    ratings: pd.DataFrame
    vocab: dict[str, list[str]]

    @property
    def item_row(self) -> dict[int, int]:
        return {int(m): i for i, m in enumerate(self.item_ids)}

    @property
    def user_row(self) -> dict[int, int]:
        return {int(u): i for i, u in enumerate(self.user_ids)}

    def to(self, device) -> "MeluTables":
        return MeluTables(
            self.vocab_sizes,
            self.item_ids,
            self.item_rate.to(device),
            {k: b.to(device) for k, b in self.item_bags.items()},
            self.user_ids,
            self.user_fields.to(device),
            self.ratings,
            self.vocab,
        )


def load_tables(processed_dir: str | Path) -> MeluTables:
    d = Path(processed_dir)
    missing = [f for f in ("items.parquet", "users.parquet", "ratings.parquet", "vocab.json") if not (d / f).exists()]
    if missing:
        raise FileNotFoundError(f"{d}: missing {', '.join(missing)}; run `dvc repro preprocess_melu` first")
    items = pd.read_parquet(d / "items.parquet")
    users = pd.read_parquet(d / "users.parquet")
    vocab = json.loads((d / "vocab.json").read_text())
    return MeluTables(
        vocab_sizes={k: len(v) for k, v in vocab.items()},
        item_ids=items.movie_id.to_numpy(),
        item_rate=torch.as_tensor(items.rate.to_numpy().copy(), dtype=torch.long),
        item_bags={f: Bag.from_lists(items[f].tolist()) for f in ITEM_BAGS},
        user_ids=users.user_id.to_numpy(),
        user_fields=torch.as_tensor(users[list(USER_FIELDS)].to_numpy(), dtype=torch.long),
        ratings=pd.read_parquet(d / "ratings.parquet"),
        vocab=vocab,
    )


@dataclass
class Episodes:
    """All kept users of one state; support sets padded to the longest one."""

    state: str
    user_ids: np.ndarray  # (U,)
    user_rows: torch.Tensor  # (U,)
    support_items: torch.Tensor  # (U, S) item rows (0 where padded)
    support_y: torch.Tensor  # (U, S) float
    support_mask: torch.Tensor  # (U, S) bool
    query_items: torch.Tensor  # (U, Q)
    query_y: torch.Tensor  # (U, Q) float
    query_movie_ids: torch.Tensor  # (U, Q) movie ids (tie-break key of the ranking metrics)

    def __len__(self) -> int:
        return len(self.user_ids)

    def subset(self, idx) -> "Episodes":
        """The episodes of users ``idx``, with the support padding cut to the longest support set among them."""
        idx_t = torch.as_tensor(idx, dtype=torch.long, device=self.user_rows.device)
        mask = self.support_mask[idx_t]
        width = int(mask.sum(1).max()) if len(idx_t) else 0
        return Episodes(
            self.state,
            self.user_ids[np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx)],
            self.user_rows[idx_t],
            self.support_items[idx_t, :width],
            self.support_y[idx_t, :width],
            mask[:, :width],
            self.query_items[idx_t],
            self.query_y[idx_t],
            self.query_movie_ids[idx_t],
        )

    def to(self, device) -> "Episodes":
        t = lambda x: x.to(device)  # noqa: E731
        return Episodes(self.state, self.user_ids, t(self.user_rows), t(self.support_items), t(self.support_y),
                        t(self.support_mask), t(self.query_items), t(self.query_y), t(self.query_movie_ids))


def build_episodes(tables: MeluTables, state: str, seed: int, min_ratings: int = 13, max_ratings: int = 100, query_size: int = 10) -> Episodes:
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}; expected one of {STATES}")
    if min_ratings <= query_size:
        raise ValueError(f"min_ratings ({min_ratings}) must exceed query_size ({query_size}) to leave a support set")
    df = tables.ratings[tables.ratings.state == state].sort_values(["user_id", "pos"])
    # users in the order of the state file (first appearance), as the official generator iterates them
    order = tables.ratings[tables.ratings.state == state].drop_duplicates("user_id").user_id.to_numpy()
    groups = {u: g for u, g in df.groupby("user_id", sort=False)}
    item_row, user_row = tables.item_row, tables.user_row
    kept = [u for u in order if min_ratings <= len(groups[u]) <= max_ratings]
    if not kept:
        raise ValueError(f"state {state}: no user has between {min_ratings} and {max_ratings} ratings")
    s_max = max(len(groups[u]) for u in kept) - query_size
    U = len(kept)
    s_items = np.zeros((U, s_max), dtype=np.int64)
    s_y = np.zeros((U, s_max), dtype=np.float32)
    s_mask = np.zeros((U, s_max), dtype=bool)
    q_items = np.zeros((U, query_size), dtype=np.int64)
    q_y = np.zeros((U, query_size), dtype=np.float32)
    q_mid = np.zeros((U, query_size), dtype=np.int64)
    for r, u in enumerate(kept):
        g = groups[u]
        perm = np.random.default_rng([seed, int(u)]).permutation(len(g))
        movies = g.movie_id.to_numpy()[perm]
        y = g.rating.to_numpy()[perm].astype(np.float32)
        rows = np.fromiter((item_row[int(m)] for m in movies), dtype=np.int64, count=len(movies))
        n_s = len(g) - query_size
        s_items[r, :n_s], s_y[r, :n_s], s_mask[r, :n_s] = rows[:n_s], y[:n_s], True
        q_items[r], q_y[r], q_mid[r] = rows[n_s:], y[n_s:], movies[n_s:]
    return Episodes(
        state=state,
        user_ids=np.asarray(kept),
        user_rows=torch.as_tensor([user_row[int(u)] for u in kept], dtype=torch.long),
        support_items=torch.from_numpy(s_items),
        support_y=torch.from_numpy(s_y),
        support_mask=torch.from_numpy(s_mask),
        query_items=torch.from_numpy(q_items),
        query_y=torch.from_numpy(q_y),
        query_movie_ids=torch.from_numpy(q_mid),
    )
