"""MeLU model math on tiny configs: embeddings, batched local updates, meta-gradients, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.melu.data import Bag, build_episodes, load_tables
from models.melu.meta import adapt, masked_mse, query_losses
from models.melu.metrics import mae, ndcg_at_k, rating_metrics
from models.melu.modeling import MeLU

VOCAB = {"gender": 2, "age": 7, "occupation": 21, "zip": 9, "rate": 6, "genre": 5, "director": 4, "actor": 6}


def test_embedding_bag_equals_official_multi_hot_layout():
    """EmbeddingBag(mean) over id lists == Linear(n, d, bias=False)(multi-hot) / number of active entries."""
    torch.manual_seed(0)
    n, d = 11, 4
    lists = [[0, 3, 7], [5], [1, 2, 3, 4, 10]]
    bag = torch.nn.EmbeddingBag(n, d, mode="mean")
    linear = torch.nn.Linear(n, d, bias=False)
    with torch.no_grad():
        linear.weight.copy_(bag.weight.T)
    b = Bag.from_lists(lists)
    multi_hot = torch.zeros(len(lists), n)
    for r, ids in enumerate(lists):
        multi_hot[r, ids] = 1.0
    official = linear(multi_hot) / multi_hot.sum(1, keepdim=True)
    torch.testing.assert_close(bag(b.ids, b.offsets), official)


def test_parameter_count_matches_spec_at_official_sizes():
    official = {"gender": 2, "age": 7, "occupation": 21, "zip": 3402, "rate": 6, "genre": 25, "director": 2186, "actor": 8030}
    model = MeLU(official, 32, [64, 64])
    assert sum(p.numel() for p in model.parameters()) == 458_401  # spec §2.3 (actor width 8,030)
    assert sum(p.numel() for n, p in model.named_parameters() if n in model.decision_names) == 20_673
    assert model.decision_names == ["fc.0.weight", "fc.0.bias", "fc.1.weight", "fc.1.bias", "out.weight", "out.bias"]


def _batch(B=3, S=6, Q=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_s = torch.randn(B, S, dim, generator=g, dtype=torch.float64)
    x_q = torch.randn(B, Q, dim, generator=g, dtype=torch.float64)
    y_s = torch.randint(1, 6, (B, S), generator=g).double()
    y_q = torch.randint(1, 6, (B, Q), generator=g).double()
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[0, 4:] = False  # padded support set
    return x_s, y_s, mask, x_q, y_q


def _model(dim=8, hidden=(5, 4)):
    torch.manual_seed(0)
    m = MeLU(VOCAB, embedding_dim=1, hidden=list(hidden)).double()
    # decision layers over an arbitrary input width for the math tests
    m.fc[0] = torch.nn.Linear(dim, hidden[0]).double()
    m.decision_names = [n for n, _ in m.named_parameters() if n.startswith(("fc.", "out."))]
    return m


def test_batched_local_update_equals_per_user_loop():
    m = _model()
    x_s, y_s, mask, _, _ = _batch()
    fast = adapt(m, x_s, y_s, mask, steps=3, lr=0.05, meta_order="first", track_meta_grad=False).materialize()
    for i in range(x_s.shape[0]):
        params = {k: v.detach().clone().requires_grad_(True) for k, v in m.decision_params().items()}
        keep = mask[i]
        for _ in range(3):
            loss = ((m.decide(x_s[i : i + 1, keep], params) - y_s[i : i + 1, keep]) ** 2).mean()
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {k: (v - 0.05 * g).detach().requires_grad_(True) for (k, v), g in zip(params.items(), grads)}
        for k in params:
            torch.testing.assert_close(fast[k][i], params[k].detach())


@pytest.mark.parametrize("order", ["first", "second"])
def test_split_user_input_is_the_same_adapted_function(order):
    """x0 = [I_j; U_i] with one U_i per user: adapting on the item parts with ``user=`` gives the same adapted
    weights, predictions and meta-gradient (embeddings included) as the joined inputs."""
    m = _model()
    x_s, y_s, mask, x_q, y_q = _batch()
    d_u = 3
    user = torch.randn(x_s.shape[0], d_u, dtype=x_s.dtype, requires_grad=True)
    i_s = x_s[..., :-d_u].clone().requires_grad_(True)
    i_q = x_q[..., :-d_u].clone().requires_grad_(True)
    join = lambda i: torch.cat([i, user.unsqueeze(1).expand(-1, i.shape[1], -1)], -1)  # noqa: E731
    full = adapt(m, join(i_s), y_s, mask, 3, 0.05, order)
    split = adapt(m, i_s, y_s, mask, 3, 0.05, order, user=user)
    for k, v in full.materialize().items():
        torch.testing.assert_close(split.materialize()[k], v)
    lf, ls = masked_mse(full.predict(join(i_q)), y_q).mean(), masked_mse(split.predict(i_q), y_q).mean()
    torch.testing.assert_close(ls, lf)
    wrt = [user, i_s, i_q, *m.decision_params().values()]
    g_split, g_full = torch.autograd.grad(ls, wrt, allow_unused=True), torch.autograd.grad(lf, wrt, allow_unused=True)
    assert (g_full[1] is None) == (order == "first")  # first order: the support inputs are constants
    for a, b in zip(g_split, g_full):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


def _meta_loss(m, batch, steps, lr, order):
    x_s, y_s, mask, x_q, y_q = batch
    fast = adapt(m, x_s, y_s, mask, steps, lr, order)
    return masked_mse(fast.predict(x_q), y_q).mean()


def test_second_order_meta_gradient_matches_finite_difference():
    m = _model()
    batch = _batch()
    loss = _meta_loss(m, batch, steps=2, lr=0.1, order="second")
    grads = torch.autograd.grad(loss, list(m.decision_params().values()))
    eps = 1e-6
    for (name, p), g in zip(m.decision_params().items(), grads):
        for idx in [(0,) * p.dim(), tuple(s - 1 for s in p.shape)]:
            old = p[idx].item()
            p.data[idx] = old + eps
            up = _meta_loss(m, batch, 2, 0.1, "second").item()
            p.data[idx] = old - eps
            down = _meta_loss(m, batch, 2, 0.1, "second").item()
            p.data[idx] = old
            fd = (up - down) / (2 * eps)
            assert abs(g[idx].item() - fd) < 1e-6 * max(1.0, abs(fd)), (name, idx, g[idx].item(), fd)


def test_first_order_gradient_is_query_gradient_at_adapted_params():
    m = _model()
    batch = _batch()
    x_s, y_s, mask, x_q, y_q = batch
    loss = _meta_loss(m, batch, steps=2, lr=0.1, order="first")
    grads = torch.autograd.grad(loss, list(m.decision_params().values()))
    # reference: adapt without any graph, then the gradient of the mean query loss at theta2_i, summed over users
    fast = adapt(m, x_s, y_s, mask, 2, 0.1, "first", track_meta_grad=False).materialize()
    leaf = {k: v.clone().requires_grad_(True) for k, v in fast.items()}
    q = masked_mse(m.decide(x_q, leaf), y_q).mean()
    ref = torch.autograd.grad(q, list(leaf.values()))
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r.sum(0))
    # and it differs from the second-order gradient (the local step has curvature)
    second = torch.autograd.grad(_meta_loss(m, batch, 2, 0.1, "second"), list(m.decision_params().values()))
    assert any((a - b).abs().max() > 1e-8 for a, b in zip(grads, second))


def test_first_order_leaves_embeddings_out_of_the_inner_loop(tiny_melu):
    """Embeddings get gradient only through the query path in first-order mode."""
    _, processed = tiny_melu
    tables = load_tables(processed)
    ep = build_episodes(tables, "warm_state", seed=0).subset(range(4))
    torch.manual_seed(0)
    m = MeLU(tables.vocab_sizes, 4, [8, 8])
    # with lr = 0 the adapted parameters equal theta2 for both orders, so gradients must coincide
    g1 = torch.autograd.grad(query_losses(m, tables, ep, 2, 0.0, "first").mean(), list(m.parameters()))
    g2 = torch.autograd.grad(query_losses(m, tables, ep, 2, 0.0, "second").mean(), list(m.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("order", ["first", "second"])
def test_length_buckets_give_the_same_losses_and_meta_gradient(tiny_melu, order):
    """Adapting a meta-batch in groups of similar support length (each padded to its own longest support set) gives
    every user's query loss, in the batch's order, and the meta-gradient of the unbucketed batch."""
    _, processed = tiny_melu
    tables = load_tables(processed)
    ep = build_episodes(tables, "warm_state", seed=0).subset(range(8))
    lengths = ep.support_mask.sum(1)
    assert int(lengths.min()) < int(lengths.max())  # the groups really are padded differently
    torch.manual_seed(0)
    m = MeLU(tables.vocab_sizes, 4, [8, 8])
    one = query_losses(m, tables, ep, 2, 0.1, order)
    g_one = torch.autograd.grad(one.mean(), list(m.parameters()), allow_unused=True)
    for k in (2, 3, 8):
        many = query_losses(m, tables, ep, 2, 0.1, order, length_buckets=k)
        torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-6)
        g_many = torch.autograd.grad(many.mean(), list(m.parameters()), allow_unused=True)
        for a, b in zip(g_many, g_one):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_metrics_on_hand_computed_rankings():
    pred = np.array([[3.0, 3.0, 1.0], [1.0, 2.0, 3.0]])
    true = np.array([[1.0, 5.0, 3.0], [5.0, 4.0, 1.0]])
    ids = np.array([[2, 1, 3], [7, 8, 9]])
    # user 0: tie between ids 2 and 1 is broken by id asc -> ranking [1 (r5), 2 (r1), 3 (r3)]
    dcg0 = 31 + 1 / np.log2(3) + 7 / np.log2(4)
    idcg0 = 31 + 7 / np.log2(3) + 1 / np.log2(4)
    # user 1: predicted ranking [9 (r1), 8 (r4), 7 (r5)]
    dcg1 = 1 + 15 / np.log2(3) + 31 / np.log2(4)
    idcg1 = 31 + 15 / np.log2(3) + 1 / np.log2(4)
    assert ndcg_at_k(pred, true, ids, 3) == pytest.approx((dcg0 / idcg0 + dcg1 / idcg1) / 2)
    assert ndcg_at_k(pred, true, ids, 1) == pytest.approx((31 / 31 + 1 / 31) / 2)
    assert mae(pred, true) == pytest.approx(np.mean([np.mean([2, 2, 2]), np.mean([4, 2, 2])]))
    assert set(rating_metrics(pred, true, ids, (1, 3))) == {"mae", "ndcg_at_1", "ndcg_at_3"}
    # swapping the movie ids flips the tie and changes nDCG@1 of user 0
    assert ndcg_at_k(pred, true, np.array([[1, 2, 3], [7, 8, 9]]), 1) == pytest.approx((1 / 31 + 1 / 31) / 2)
