"""FaNC cell math (reconstruction) and the baselines' padding behaviour, on tiny inputs."""

from __future__ import annotations

import pytest
import torch

from models.seqrec.config import FancConfig
from models.seqrec.modeling import FaNC, GRU4Rec, SASRec


def _fanc(**kw) -> FaNC:
    torch.manual_seed(0)
    m = FaNC(n_items=6, hidden=4, dropout=0.0, cfg=FancConfig(**kw))
    return m.eval()


def test_pull_points_at_the_item_with_inverse_square_magnitude():
    m = _fanc(mass="constant", learn_g=False, eps=1e-9, accel_clip=1e9)
    u = torch.zeros(1, 4)
    for dist in (0.5, 1.0, 2.0):
        e = torch.tensor([[dist, 0.0, 0.0, 0.0]])
        a, fired = m.pull(e, u)
        assert torch.allclose(a / a.norm(), e / e.norm())  # towards the item
        assert a.norm().item() == pytest.approx(1.0 / dist**2, rel=1e-5)  # G m / r^2 with G = m = 1
        assert not fired.any()


def test_pull_is_clipped_and_reported():
    m = _fanc(mass="constant", learn_g=False, eps=1e-9, accel_clip=2.0)
    a, fired = m.pull(torch.tensor([[0.1, 0.0, 0.0, 0.0]]), torch.zeros(1, 4))  # 1/r^2 = 100 > 2
    assert fired.all() and a.norm().item() == pytest.approx(2.0, rel=1e-5)


def test_unconscious_state_moves_towards_consumed_items_with_damped_velocity():
    m = _fanc(mass="constant", learn_g=False, damping=0.5, step=0.1)
    with torch.no_grad():
        m.item_emb.weight[3] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    h, st = m(torch.tensor([[0, 3, 3]]), return_states=True)
    u = st["u"][0]
    assert torch.equal(u[0], m.u0)  # padding step: state unchanged
    # first real step: a = r/(|r|^2+eps)^1.5 ~ 1, v = 0.1 a, u = 0.1 v = 0.01 a
    assert u[1, 0].item() == pytest.approx(0.01 * 1.0 / (1 + 1e-3) ** 1.5, rel=1e-5)
    assert 0 < u[1, 0] < u[2, 0] < 1.0 and torch.allclose(u[:, 1:], torch.zeros(3, 3))


def test_gate_is_a_convex_combination_in_bounds():
    m = _fanc()
    h, st = m(torch.tensor([[1, 2, 3, 4, 5]]), return_states=True)
    g = st["gate"]
    assert ((g >= 0) & (g <= 1)).all() and g.min() < 1  # sigmoid gate (it can saturate in float32)


def test_no_gravity_ablation_is_a_static_state():
    m = _fanc(gravity=False)
    _, st = m(torch.tensor([[1, 2, 3, 4, 5], [0, 0, 5, 1, 1]]), return_states=True)
    assert torch.equal(st["u"], m.u0.expand_as(st["u"]))


def test_no_gate_ablation_uses_the_conscious_state_only():
    full, no_gate = _fanc(), _fanc(gate=False)
    seq = torch.tensor([[1, 2, 3]])
    h = no_gate(seq)
    c = torch.zeros(1, 4)
    for t in range(3):
        c = no_gate.gru(no_gate.item_emb(seq[:, t]), c)
    assert torch.allclose(h[0, -1], c[0], atol=1e-6)
    assert not torch.allclose(full(seq)[0, -1], h[0, -1])


def test_distance_score_is_negative_squared_distance():
    m = _fanc(score="neg_distance")
    h = torch.randn(2, 4)
    expected = -((h.unsqueeze(1) - m.item_emb.weight.unsqueeze(0)) ** 2).sum(-1)
    assert torch.allclose(m.score(h), expected, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: _fanc(), lambda: GRU4Rec(6, 4, 0.0).eval()])
def test_recurrent_state_ignores_left_padding(make):
    torch.manual_seed(0)
    m = make()
    a = m(torch.tensor([[0, 0, 2, 4, 5]]))[0, -1]
    b = m(torch.tensor([[0, 0, 0, 0, 0, 0, 0, 2, 4, 5]]))[0, -1]
    assert torch.allclose(a, b, atol=1e-6)
    c = m(torch.tensor([[0, 0, 1, 4, 5]]))[0, -1]
    assert not torch.allclose(a, c, atol=1e-4)  # and the state does depend on the items


def test_sasrec_is_causal_and_ignores_padding_keys():
    torch.manual_seed(0)
    m = SASRec(6, 4, 0.0, 2, 2, 6).eval()
    a = m(torch.tensor([[0, 0, 2, 4, 5, 1]]))
    b = m(torch.tensor([[0, 0, 2, 4, 5, 3]]))
    assert torch.allclose(a[0, :5], b[0, :5], atol=1e-6) and not torch.allclose(a[0, 5], b[0, 5])
    assert torch.equal(a[0, :2], torch.zeros(2, 4))  # padding positions output zeros
    # a padding key never changes a real position: same items, padding vs. another (masked) pad id layout
    with torch.no_grad():
        m.item_emb.weight[0].fill_(3.0)  # even a non-zero padding vector is never attended to
    c = m(torch.tensor([[0, 0, 2, 4, 5, 1]]))
    assert torch.allclose(a[0, 2:], c[0, 2:], atol=1e-6)


def test_sasrec_position_table_initialisations():
    """xavier (the official code's glorot_uniform): bound sqrt(6 / (max_len + d)); normal: RecBole's std 0.02;
    torch: nn.Embedding's N(0, 1); anything else is refused."""
    torch.manual_seed(0)
    w = SASRec(100, 64, 0.0, 2, 1, 50, pos_init="xavier").pos_emb.weight.detach()
    bound = (6 / (50 + 64)) ** 0.5
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.95 * bound
    assert abs(float(w.std()) - bound / 3 ** 0.5) < 0.01
    assert abs(float(SASRec(100, 64, 0.0, 2, 1, 50, pos_init="normal").pos_emb.weight.std()) - 0.02) < 0.002
    assert abs(float(SASRec(100, 64, 0.0, 2, 1, 50, pos_init="torch").pos_emb.weight.std()) - 1.0) < 0.05
    with pytest.raises(ValueError, match="model.sasrec.pos_init: 'glorot'"):
        SASRec(100, 64, 0.0, 2, 1, 50, pos_init="glorot")


@pytest.mark.parametrize("name", ["fanc", "gru4rec", "sasrec"])
def test_training_learns_a_deterministic_next_item_rule_and_early_stops(name, tmp_path):
    """Tiny synthetic data where item i is always followed by item i + 1: every model must learn it."""
    import numpy as np

    from models.seqrec import recipe
    from models.seqrec.config import SeqRecConfig
    from models.seqrec.data import leave_one_out

    rng = np.random.default_rng(0)
    n_items = 12
    seqs = [np.arange(s, s + rng.integers(4, 8)) % n_items + 1 for s in rng.integers(0, n_items, 200)]
    data = leave_one_out(seqs, n_items, max_len=8)
    cfg = SeqRecConfig.model_validate({
        "data": {"max_len": 8}, "model": {"name": name, "hidden": 16, "dropout": 0.0},
        "train": {"lr": 0.02, "batch_size": 32, "epochs": 60, "patience": 5, "device": "cpu"},
        "eval": {"ks": [1, 5]}, "registry": {**SeqRecConfig().registry.model_dump(), "model_name": None},
    })
    model, history = recipe.train(cfg, data, ckpt_dir=str(tmp_path / name), progress=False)
    test = recipe.evaluate(model, data.test, cfg, torch.device("cpu"))
    assert test["hr_at_1"] > 0.9, (name, test)
    assert len(history) < 60  # stopped early once validation NDCG@10 stopped improving
    best = max(range(len(history)), key=lambda i: history[i]["valid_ndcg_at_10"])
    assert len(history) - 1 - best == cfg.train.patience
