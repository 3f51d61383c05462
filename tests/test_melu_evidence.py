"""Evidence-candidate selection (paper §3.3): gradient norms per pair and the per-item score."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from models.melu.data import build_episodes, load_tables
from models.melu.evidence import pair_gradient_norms, select_candidates
from models.melu.modeling import MeLU


def _reference_norms(model, tables, user_row, item_row, y, steps, lr, grad_params, norm):
    """Autograd on a copy of the real module for one (user, item) pair: local steps on theta2 with L/|L|."""
    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    wrt = ref.decision_names if grad_params == "decision" else list(params)
    total = 0.0
    for _ in range(steps):
        x = MeLU.join(ref.item_table(tables)[torch.tensor([[item_row]])], ref.user_vectors(tables, torch.tensor([user_row])))
        loss = (ref.decide(x).squeeze() - y) ** 2
        grads = dict(zip(wrt, torch.autograd.grad(loss / loss.detach().abs(), [params[n] for n in wrt])))
        if norm == "sum_per_tensor":
            total += sum(float(g.norm()) for g in grads.values())
        else:
            total += float(torch.sqrt(sum((g ** 2).sum() for g in grads.values())))
        with torch.no_grad():
            for n in ref.decision_names:
                params[n] -= lr * grads[n]
    return total / steps


@pytest.mark.parametrize("grad_params,norm", [("decision", "sum_per_tensor"), ("all", "sum_per_tensor"), ("all", "global")])
def test_batched_pair_norms_equal_per_pair_autograd(tiny_melu, grad_params, norm):
    _, processed = tiny_melu
    tables = load_tables(processed)
    ep = build_episodes(tables, "warm_state", seed=0).subset(range(3))
    torch.manual_seed(0)
    model = MeLU(tables.vocab_sizes, 4, [8, 8])
    pairs = pair_gradient_norms(model, tables, ep, steps=2, lr=0.05, grad_params=grad_params, norm=norm, batch_pairs=7, progress=False)
    assert len(pairs) == int(ep.support_mask.sum())
    item_row = tables.item_row
    for k in (0, 5, len(pairs) - 1):
        row = pairs.iloc[k]
        u = list(ep.user_ids).index(row.user_id)
        expected = _reference_norms(model, tables, int(ep.user_rows[u]), item_row[int(row.movie_id)], float(row.rating), 2, 0.05, grad_params, norm)
        assert row.grad_norm == pytest.approx(expected, rel=1e-4)


def test_select_candidates_normalises_and_ranks():
    pairs = pd.DataFrame({"user_id": [1, 2, 3, 1, 2, 1], "movie_id": [10, 10, 10, 20, 20, 30], "grad_norm": [1.0, 1.0, 1.0, 4.0, 2.0, 9.0]})
    table = select_candidates(pairs, top_k=2)
    # disc: 10 -> 1, 20 -> 3, 30 -> 9 (max 9); pop: 10 -> 3, 20 -> 2, 30 -> 1 (max 3)
    scores = dict(zip(table.movie_id, table.score))
    assert scores[10] == pytest.approx(1 / 9 * 1) and scores[20] == pytest.approx(3 / 9 * 2 / 3) and scores[30] == pytest.approx(1 * 1 / 3)
    assert list(table.movie_id) == [30, 20, 10] and list(table.top_k) == [True, True, False]
