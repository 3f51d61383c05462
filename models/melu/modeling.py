"""MeLU: the meta-learned user preference estimator (Lee et al., KDD 2019), paper §3.1-3.2.

Layout (spec §2): field embeddings of size d_e -> item vector [rate; genre; director; actor] and user
vector [gender; age; occupation; zip] -> x0 = [item; user] (item first, as in the official code) ->
decision layers ReLU(W1 x + b1), ReLU(W2 x + b2) -> linear output (explicit 1-5 ratings).

Multi-valued fields (genre, director, actor) are the *mean* of their members' embeddings, computed with
``nn.EmbeddingBag(mode="mean")`` over id lists. This equals the official ``Linear(n, d, bias=False)``
applied to the multi-hot row divided by its number of active entries (tested), without the 10,246-wide
dense rows. Initialisation follows the official modules: single-valued tables N(0, 1) (``nn.Embedding``),
multi-valued tables U(-1/sqrt(n), 1/sqrt(n)) (``nn.Linear``'s default on a width-n input).

Parameter groups (spec §2.4): theta1 = embedding tables (global update only), theta2 = decision and output
layers (adapted per user). :meth:`MeLU.decide` runs the decision layers with either the shared
parameters or a per-user batch of parameters (leading dimension B), which is how the meta-batch is
processed without a Python loop over users.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.melu.data import ITEM_BAGS, Bag, MeluTables


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x (B, S, in) with w (out, in) shared or (B, out, in) per user."""
    if w.dim() == 3:
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
    return F.linear(x, w, b)


class ItemEncoder(nn.Module):
    def __init__(self, n_rate: int, n_genre: int, n_director: int, n_actor: int, dim: int):
        super().__init__()
        self.rate = nn.Embedding(n_rate, dim)
        self.genre = nn.EmbeddingBag(n_genre, dim, mode="mean")
        self.director = nn.EmbeddingBag(n_director, dim, mode="mean")
        self.actor = nn.EmbeddingBag(n_actor, dim, mode="mean")
        for bag in (self.genre, self.director, self.actor):
            bound = 1.0 / math.sqrt(bag.num_embeddings)
            nn.init.uniform_(bag.weight, -bound, bound)

    def forward(self, rate: torch.Tensor, bags: dict[str, Bag]) -> torch.Tensor:
        parts = [self.rate(rate)]
        for name in ITEM_BAGS:
            parts.append(getattr(self, name)(bags[name].ids, bags[name].offsets))
        return torch.cat(parts, dim=-1)


class UserEncoder(nn.Module):
    def __init__(self, n_gender: int, n_age: int, n_occupation: int, n_zip: int, dim: int):
        super().__init__()
        self.gender = nn.Embedding(n_gender, dim)
        self.age = nn.Embedding(n_age, dim)
        self.occupation = nn.Embedding(n_occupation, dim)
        self.zip = nn.Embedding(n_zip, dim)

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.gender(fields[..., 0]), self.age(fields[..., 1]), self.occupation(fields[..., 2]), self.zip(fields[..., 3])], dim=-1)


class MeLU(nn.Module):
    """The MeLU estimator; ``decision_names`` lists theta2 (the locally adapted parameters)."""

    def __init__(self, vocab_sizes: dict[str, int], embedding_dim: int = 32, hidden: list[int] | tuple[int, ...] = (64, 64)):
        super().__init__()
        v = vocab_sizes
        self.item_encoder = ItemEncoder(v["rate"], v["genre"], v["director"], v["actor"], embedding_dim)
        self.user_encoder = UserEncoder(v["gender"], v["age"], v["occupation"], v["zip"], embedding_dim)
        widths = [8 * embedding_dim, *hidden]
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(widths[-1], 1)
        self.decision_names = [n for n, _ in self.named_parameters() if n.startswith(("fc.", "out."))]

    @classmethod
    def from_config(cls, cfg, vocab_sizes: dict[str, int]) -> "MeLU":
        return cls(vocab_sizes, cfg.embedding_dim, list(cfg.hidden))

    def decision_params(self) -> dict[str, torch.Tensor]:
        params = dict(self.named_parameters())
        return {n: params[n] for n in self.decision_names}

    def embedding_params(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.named_parameters() if n not in self.decision_names}

    def item_table(self, tables: MeluTables) -> torch.Tensor:
        """Item vectors I_j for every item row: (n_items, 4 d_e)."""
        return self.item_encoder(tables.item_rate, tables.item_bags)

    def user_vectors(self, tables: MeluTables, user_rows: torch.Tensor) -> torch.Tensor:
        return self.user_encoder(tables.user_fields[user_rows])

    @staticmethod
    def join(item_vecs: torch.Tensor, user_vecs: torch.Tensor) -> torch.Tensor:
        """x0 = [I_j; U_i] for item_vecs (B, S, 4d) and user_vecs (B, 4d) -> (B, S, 8d)."""
        return torch.cat([item_vecs, user_vecs.unsqueeze(1).expand(-1, item_vecs.shape[1], -1)], dim=-1)

    def decide(self, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Decision + output layers on x (B, S, 8d) -> predicted ratings (B, S)."""
        p = params if params is not None else self.decision_params()
        h = x
        for i in range(len(self.fc)):
            h = F.relu(_linear(h, p[f"fc.{i}.weight"], p[f"fc.{i}.bias"]))
        return _linear(h, p["out.weight"], p["out.bias"]).squeeze(-1)
