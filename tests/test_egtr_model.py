"""EGTR model and loss tests on a tiny random config (d = 32, 1 encoder + 2 decoder layers, ResNet-18, 10 queries)."""

from __future__ import annotations

import math

import pytest
import torch

from models.egtr.config import DetectorConfig, LossConfig
from models.egtr.losses import (HungarianMatcher, min_cost, query_uncertainty, relation_losses, relation_targets,
                                sample_relation_entries, smoothing_uncertainty, total_loss, unmatched_cost)
from models.egtr.modeling import EGTR, DeformableDetector, RelationHead, count_parameters, freq_bias_table, param_groups

TINY = DetectorConfig(backbone="resnet18", d_model=32, encoder_layers=1, decoder_layers=2, heads=4, ffn_dim=64,
                      n_points=2, num_feature_levels=3, num_queries=10, dropout=0.0)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return EGTR(TINY, num_classes=5, num_predicates=3).eval()


def _inputs(b=2, h=64, w=80):
    torch.manual_seed(1)
    x = torch.randn(b, 3, h, w)
    mask = torch.ones(b, h, w, dtype=torch.long)
    mask[1, :, 60:] = 0  # padding on the second image
    return x, mask


def test_relation_head_shapes_and_gate(tiny_model):
    x, mask = _inputs()
    with torch.no_grad():
        out = tiny_model(x, mask)
    assert out["logits"].shape == (2, 10, 5) and out["boxes"].shape == (2, 10, 4)
    assert out["rel_logits"].shape == (2, 10, 10, 3) and out["conn_logits"].shape == (2, 10, 10)
    assert len(out["queries"]) == len(out["keys"]) == 2 and out["queries"][0].shape == (2, 10, 32)
    gates = out["gates"]
    assert gates.shape == (3,)  # 2 decoder layers + the final-layer pair
    assert torch.all((gates > 0) & (gates < 1))
    assert len(out["aux"]) == 1  # one auxiliary decoder layer


def test_gated_sum_matches_the_explicit_formula():
    """The fused forward (first MLP layers applied per source) equals MLP(sum_l g^l R^l) built explicitly,
    in value and in gradient, with the frequency bias added for the argmax labels."""
    torch.manual_seed(0)
    b, n, d, layers = 2, 5, 8, 2
    fg = torch.randint(0, 4, (4, 4, 4)).float()
    head = RelationHead(d, layers, 4, 3, fg_matrix=fg, freq_bias="log_counts")
    q = [torch.randn(b, n, d) for _ in range(layers)]
    k = [torch.randn(b, n, d) for _ in range(layers)]
    z = torch.randn(b, n, d)
    labels = torch.randint(0, 4, (b, n))

    def explicit():
        pairs = [(head.proj_q[l](q[l]), head.proj_k[l](k[l])) for l in range(layers)]
        pairs.append((head.final_sub_proj(z), head.final_obj_proj(z)))
        sources = [torch.cat([s[:, :, None].expand(-1, -1, n, -1), o[:, None].expand(-1, n, -1, -1)], -1)
                   for s, o in pairs]
        gates = [torch.sigmoid(head.gate(r)) for r in sources]
        rel = sum(g * r for g, r in zip(gates, sources))
        logits = head.rel_mlp(rel) + head.log_freq[labels[:, :, None], labels[:, None, :]]
        return logits, head.conn_mlp(rel).squeeze(-1), torch.stack([g.mean() for g in gates])

    out = head(q, k, z, labels)
    logits, conn, gate_means = explicit()
    torch.testing.assert_close(out["rel_logits"], logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["conn_logits"], conn, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["gates"], gate_means)
    probe = torch.randn_like(logits), torch.randn_like(conn)
    fused = torch.autograd.grad((out["rel_logits"] * probe[0]).sum() + (out["conn_logits"] * probe[1]).sum(),
                                list(head.parameters()))
    direct = torch.autograd.grad((logits * probe[0]).sum() + (conn * probe[1]).sum(), list(head.parameters()))
    for a, e in zip(fused, direct):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)


def test_queries_and_keys_are_those_the_decoder_used(tiny_model):
    """softmax(Q K^T / sqrt(d_h)) from the exposed tensors equals the decoder's own self-attention weights."""
    x, mask = _inputs()
    with torch.no_grad():
        out = tiny_model(x, mask, output_attentions=True)
    heads, d_h = TINY.heads, TINY.d_model // TINY.heads
    for layer, (q, k) in enumerate(zip(out["queries"], out["keys"])):
        qh = q.view(2, 10, heads, d_h).transpose(1, 2)
        kh = k.view(2, 10, heads, d_h).transpose(1, 2)
        attn = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d_h), dim=-1)
        torch.testing.assert_close(attn, out["decoder_attentions"][layer], atol=1e-5, rtol=1e-4)


def test_relation_head_parameter_count_at_paper_sizes():
    head = RelationHead(256, 6, 50, 150)
    assert count_parameters(head) == 789_504 + 131_584 + 513 + 209_970 + 197_377  # spec 2.2: ~1.33M


def test_frequency_bias_official_quirk():
    fg = torch.zeros(3, 3, 4)
    fg[0, 1] = torch.tensor([5.0, 0.0, 1.0, 0.0])  # seen pair, total S = 6
    t = freq_bias_table(fg, "log_counts")
    assert t[0, 1, 0].item() == pytest.approx(math.log(5), abs=1e-5)  # log of the raw count
    assert t[0, 1, 1].item() == pytest.approx(math.log(1e-12 / 6), abs=1e-3)  # ~ -27.6 - log S
    assert torch.all(t[1, 2] == 0)  # never-seen pair: 0 for every predicate
    ls = freq_bias_table(fg, "log_softmax")  # official --use_log_softmax: softmax of the raw counts 5, 0, 1, 0
    expect = torch.log_softmax(torch.tensor([5.0, 0.0, 1.0, 0.0], dtype=torch.float64), 0).float()
    torch.testing.assert_close(ls[0, 1], expect, atol=1e-5, rtol=0)
    lp = freq_bias_table(fg, "log_probs")  # the fix: log p(predicate | pair) = log(5/6), log(1/6)
    assert lp[0, 1, 0].item() == pytest.approx(math.log(5 / 6), abs=1e-5)
    assert lp[0, 1, 2].item() == pytest.approx(math.log(1 / 6), abs=1e-5)
    assert torch.all(freq_bias_table(fg, "off") == 0)


def test_smoothing_targets_at_the_two_extremes():
    cfg = LossConfig()
    # perfect match: cost = C_min -> u = s ~ 1e-14 -> the hard target 1
    u_perfect = smoothing_uncertainty(torch.tensor([min_cost(cfg)]), cfg)
    assert u_perfect.item() < 1e-12
    # unmatched query: the official constant cost -> u ~ 1 -> target ~ 0
    match = {"query": torch.tensor([0, 1]), "target": torch.tensor([0, 1]),
             "cost": torch.tensor([min_cost(cfg), min_cost(cfg)])}
    target = {"labels": torch.tensor([0, 1, 2]), "rels": torch.tensor([[0, 1, 2], [1, 2, 0]])}  # object 2 unmatched
    y, conn, matched, u = relation_targets(match, target, 4, 3, cfg)
    assert y[0, 1, 2].item() == pytest.approx(1.0, abs=1e-9)
    assert u[2].item() == pytest.approx(1.0, abs=1e-9) and u[3].item() == pytest.approx(1.0, abs=1e-9)
    assert y.sum().item() == pytest.approx(1.0)  # the relation with the unmatched object gets no target
    assert conn[0, 1] == 1 and conn.sum() == 1  # connectivity: hard 0/1, not smoothed
    # an imperfect match gives a target strictly between 0 and 1, decreasing with the cost
    m2 = {**match, "cost": torch.tensor([min_cost(cfg) + 33.0, min_cost(cfg) + 30.0])}
    y2, *_ = relation_targets(m2, target, 4, 3, cfg)
    assert 0 < y2[0, 1, 2].item() < 1
    assert unmatched_cost(cfg) > min_cost(cfg) + 60


def test_sampling_counts():
    cfg = LossConfig(rel_sample_negatives=3, rel_sample_nonmatching=2)
    n, p = 6, 4
    torch.manual_seed(0)
    scores = torch.randn(n, n, p)
    positive = torch.zeros(n, n, p, dtype=torch.bool)
    positive[0, 1, 2] = positive[1, 0, 3] = True
    matched = torch.tensor([True, True, True, False, False, False])
    idx = sample_relation_entries(scores, positive, matched, cfg)
    assert len(idx) == 2 + 3 * 2 + 2 * 2
    assert len(set(idx.tolist())) == len(idx)
    flat_pos = positive.reshape(-1)
    assert flat_pos[idx].sum() == 2  # all positives are sampled
    pair_matched = (matched[:, None] & matched[None, :])[:, :, None].expand(n, n, p).reshape(-1)
    negs = idx[2:8]
    assert pair_matched[negs].all() and not flat_pos[negs].any()
    # hard negatives are the top-scoring negatives of matched pairs
    pool = (~flat_pos & pair_matched).nonzero().squeeze(1)
    assert set(negs.tolist()) == set(pool[scores.reshape(-1)[pool].topk(6).indices].tolist())
    assert not pair_matched[idx[8:]].any()
    cfg_r = LossConfig(rel_sample_negatives=3, rel_sample_nonmatching=2, nonmatching_sampling="random")
    idx_r = sample_relation_entries(scores, positive, matched, cfg_r, torch.Generator().manual_seed(0))
    assert len(idx_r) == 12 and not pair_matched[idx_r[8:]].any()


def test_matcher_returns_costs_and_loss_is_finite(tiny_model):
    x, mask = _inputs()
    targets = [{"labels": torch.tensor([0, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]]),
                "rels": torch.tensor([[0, 1, 1]])},
               {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]]), "rels": torch.zeros(0, 3, dtype=torch.long)}]
    matcher = HungarianMatcher(LossConfig())
    out = tiny_model(x, mask)
    matches = matcher(out["logits"], out["boxes"], targets)
    c = matcher.cost_matrix(out["logits"][0], out["boxes"][0], targets[0]["labels"], targets[0]["boxes"])
    torch.testing.assert_close(matches[0]["cost"], c[matches[0]["query"], matches[0]["target"]])
    assert len(matches[0]["query"]) == 2 and len(matches[1]["query"]) == 1
    loss, logs = total_loss(out, targets, matcher, LossConfig(), aux_loss=True)
    assert torch.isfinite(loss) and {"loss_rel", "loss_conn", "rel_gate_0", "uncertainty"} <= set(logs)
    loss.backward()
    assert tiny_model.relation.gate.weight.grad is not None


def test_param_groups_three_learning_rates(tiny_model):
    groups = param_groups(tiny_model, "sgg", 2e-4, 2e-6, 2e-7, 1e-4)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {"new": 2e-4, "detector": 2e-6, "backbone": 2e-7}
    new = {id(p) for p in groups[0]["params"]}
    assert new == {id(p) for p in tiny_model.relation.parameters()}
    backbone_ids = {id(p) for p in groups[2]["params"]}
    offsets = [p for n, p in tiny_model.named_parameters() if "sampling_offsets" in n]
    assert offsets and all(id(p) in backbone_ids for p in offsets)


def test_initialisation_box_size_prior_and_relation_head(tiny_model):
    """Deformable DETR's box head starts at w, h = sigmoid(-2); the relation head gets transformers'
    _init_weights (N(0, 0.02), zero bias), as the keys missing from the detector checkpoint in the official code."""
    torch.manual_seed(0)
    det = DeformableDetector(TINY, 5).eval()
    x, mask = _inputs()
    with torch.no_grad():
        boxes = det(x, mask)["boxes"]
    torch.testing.assert_close(boxes[..., 2:], torch.full_like(boxes[..., 2:], torch.sigmoid(torch.tensor(-2.0)).item()))
    head = RelationHead(256, 6, 50, 150)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert all(float(m.bias.detach().abs().max()) == 0 for m in linears)
    w = torch.cat([m.weight.detach().reshape(-1) for m in linears])
    assert abs(float(w.std()) - 0.02) < 1e-3 and abs(float(w.mean())) < 1e-3
    # relation.init: pytorch keeps nn.Linear's default (uniform, bound 1/sqrt(fan_in), nonzero biases)
    torch.manual_seed(0)
    default = RelationHead(256, 6, 50, 150, init="pytorch")
    biases = torch.cat([m.bias.detach() for m in default.modules() if isinstance(m, torch.nn.Linear)])
    assert float(biases.abs().max()) > 0 and default.rel_mlp.layers[0].weight.detach().abs().max() <= 1 / 512 ** 0.5
    with pytest.raises(ValueError, match="relation.init"):
        RelationHead(8, 1, 2, 2, init="xavier")
