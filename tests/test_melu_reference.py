"""The MeLU benchmark reference (scripts/melu_reference.py): the official network on dense rows computes the same
function and the same first- and second-order meta-gradient as the batched implementation, and the official update
(in-place ``.data`` copies) is the official global update."""

from __future__ import annotations

import torch

from models.melu.data import build_episodes, load_tables
from models.melu.meta import query_losses
from models.melu.modeling import MeLU
from scripts.melu_reference import OFFICIAL_WIDTH, OfficialLayoutMeLU, exact_query_loss, official_update


def _setup(tiny_melu, users=5):
    tables = load_tables(tiny_melu[1])
    ep = build_episodes(tables, "warm_state", seed=0).subset(range(users))
    torch.manual_seed(0)
    model = MeLU(tables.vocab_sizes, 4, [8, 8])
    ref = OfficialLayoutMeLU(model, tables)
    return tables, ep, model, ref


def _pairs(model: MeLU, tables):
    """(batched parameter, reference parameter name, reference tensor -> batched layout) for every parameter."""
    v = tables.vocab_sizes
    same = lambda t: t  # noqa: E731
    yield model.item_encoder.rate.weight, "rate.weight", same
    for k in ("genre", "director", "actor"):
        yield getattr(model.item_encoder, k).weight, f"bag.{k}.weight", lambda t, n=v[k]: t[:, :n].T
    for k in ("gender", "age", "occupation", "zip"):
        yield getattr(model.user_encoder, k).weight, f"user.{k}.weight", same
    for mine, theirs in ((model.fc[0], "fc1"), (model.fc[1], "fc2"), (model.out, "linear_out")):
        yield mine.weight, f"{theirs}.weight", same
        yield mine.bias, f"{theirs}.bias", same


def test_dense_rows_have_the_official_layout(tiny_melu):
    tables, ep, model, ref = _setup(tiny_melu, users=1)
    assert ref.n_cols == 1 + sum(OFFICIAL_WIDTH.values()) + 4 == 10246
    xs, ys, xq, yq = ref.episodes(ep)[0]
    assert xs.dtype == torch.long and xs.shape == (int(ep.support_mask[0].sum()), 10246) and xq.shape[0] == ep.query_items.shape[1]
    lo, hi = ref.cols["actor"]
    assert hi - lo == 8030 and int(xs[:, lo + tables.vocab_sizes["actor"]: hi].sum()) == 0  # never-active columns
    assert torch.equal(xs[:, -4:], tables.user_fields[int(ep.user_rows[0])].expand(len(xs), 4))


def test_reference_meta_gradient_equals_batched_first_and_second_order(tiny_melu):
    tables, ep, model, ref = _setup(tiny_melu)
    batch = ref.episodes(ep)
    for order in ("first", "second"):
        g_batched = torch.autograd.grad(query_losses(model, tables, ep, 3, 0.05, order).mean(), list(model.parameters()))
        names, params = zip(*ref.named_parameters())
        g_ref = dict(zip(names, torch.autograd.grad(exact_query_loss(ref, batch, 3, 0.05, order), list(params))))
        by_param = dict(zip([id(p) for p in model.parameters()], g_batched))
        pairs = list(_pairs(model, tables))
        assert len(pairs) == len(g_ref) == len(g_batched)
        for mine, name, layout in pairs:
            torch.testing.assert_close(by_param[id(mine)], layout(g_ref[name]), rtol=1e-4, atol=1e-6, msg=f"{order}: {name}")
    # second order differs from first order here (the inner steps move the weights)
    g1 = torch.autograd.grad(exact_query_loss(ref, batch, 3, 0.05, "first"), [ref.fc1.weight])[0]
    g2 = torch.autograd.grad(exact_query_loss(ref, batch, 3, 0.05, "second"), [ref.fc1.weight])[0]
    assert (g1 - g2).abs().max() > 1e-6


def test_official_update_is_the_official_global_update(tiny_melu):
    """With alpha = 0 the in-place copies write what is already there, so the official update must be exactly one Adam
    step on the mean query MSE; with alpha > 0 it runs (and moves the weights) without an autograd error."""
    tables, ep, model, ref = _setup(tiny_melu)
    batch = ref.episodes(ep)
    twin = OfficialLayoutMeLU(model, tables)
    opt, opt_twin = torch.optim.Adam(ref.parameters(), lr=1e-2), torch.optim.Adam(twin.parameters(), lr=1e-2)
    keep = official_update(ref, opt, batch, 2, 0.0, {k: v.clone() for k, v in ref.state_dict().items()})
    loss = exact_query_loss(twin, batch, 2, 0.0, "first")
    opt_twin.zero_grad()
    loss.backward()
    opt_twin.step()
    for (name, a), b in zip(ref.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
        torch.testing.assert_close(keep[name], a)
    before = ref.fc1.weight.detach().clone()
    official_update(ref, opt, batch, 5, 5e-2, keep)
    assert not torch.equal(before, ref.fc1.weight.detach())
