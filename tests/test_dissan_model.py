"""DisSAN (spec dissan.md) on tiny inputs: masks, masked softmax, gate, pooling, classifier features."""

from __future__ import annotations

import pytest
import torch

from models.dissan.config import DissanModelConfig
from models.dissan.modeling import NLIClassifier, SentenceEncoder, attention_bias, masked_softmax, pair_features

INF = float("inf")


def test_directional_masks_exclude_the_diagonal_and_padding():
    lengths = torch.tensor([4, 2])
    fw, _ = attention_bias(lengths, 4, "fw", 1.5, True)
    bw, _ = attention_bias(lengths, 4, "bw", 1.5, True)
    assert fw.shape == (2, 1, 4, 4)
    expected_fw = torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(fw[0, 0], expected_fw) and torch.equal(bw[0, 0], expected_fw.T)
    assert not fw[:, 0].diagonal(dim1=-2, dim2=-1).any() and not bw[:, 0].diagonal(dim1=-2, dim2=-1).any()
    # sentence 2 has 2 tokens: keys 2 and 3 are padding for every query
    assert not fw[1, 0, :, 2:].any() and not bw[1, 0, :, 2:].any()
    assert bw[1, 0, 0].tolist() == [False, True, False, False]


def test_distance_mask_is_minus_alpha_times_distance():
    _, bias = attention_bias(torch.tensor([5]), 5, "fw", 1.5, True)
    i, j = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
    assert torch.allclose(bias[0, 0], -1.5 * (i - j).abs().float())
    _, off = attention_bias(torch.tensor([5]), 5, "fw", 1.5, False)
    assert torch.equal(off, torch.zeros(1, 1, 5, 5))


def test_masked_softmax_rows_without_keys_are_zero_without_nan():
    logits = torch.randn(2, 3, requires_grad=True)
    allowed = torch.tensor([[False, False, False], [True, False, True]])
    p = masked_softmax(logits, allowed)
    assert torch.equal(p[0], torch.zeros(3)) and p[1, 1] == 0 and p[1].sum().item() == pytest.approx(1.0)
    p.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_first_token_forward_and_last_token_backward_get_zero_attention():
    torch.manual_seed(0)
    enc = SentenceEncoder(DissanModelConfig(heads=2, dropout=0.0), 8).eval()
    x = torch.randn(2, 5, 8, requires_grad=True)
    lengths = torch.tensor([5, 3])
    _, fw = enc.fw(x, lengths, return_internals=True)
    _, bw = enc.bw(x, lengths, return_internals=True)
    assert torch.equal(fw["attention"][:, :, 0], torch.zeros(2, 2, 5))  # first token forward
    assert torch.equal(bw["attention"][0, :, 4], torch.zeros(2, 5)) and torch.equal(bw["attention"][1, :, 2], torch.zeros(2, 5))
    s = enc(x, lengths)
    assert s.shape == (2, 32) and torch.isfinite(s).all()
    s.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[1, 3:], torch.zeros(2, 8))  # padding never used


def test_distance_mask_favours_near_keys():
    """With equal content logits, the distance mask makes attention decay by e^-alpha per step."""
    _, bias = attention_bias(torch.tensor([4]), 4, "fw", 1.5, True)
    allowed, _ = attention_bias(torch.tensor([4]), 4, "fw", 1.5, True)
    p = masked_softmax(torch.zeros(1, 1, 4, 4) + bias, allowed)[0, 0, 3]  # query 3, keys 0, 1, 2
    assert p[2] / p[1] == pytest.approx(torch.e ** 1.5, rel=1e-5) and p[1] / p[0] == pytest.approx(torch.e ** 1.5, rel=1e-5)


def test_fusion_gate_is_bounded_and_mixes_projected_inputs():
    torch.manual_seed(0)
    enc = SentenceEncoder(DissanModelConfig(heads=2, dropout=0.0), 8).eval()
    x, lengths = torch.randn(3, 6, 8) * 10, torch.tensor([6, 4, 1])
    _, internals = enc.fw(x, lengths, return_internals=True)
    f = internals["gate"]
    assert ((f >= 0) & (f <= 1)).all()
    gate = enc.fw.gate
    s, h = torch.randn(2, 8), torch.randn(2, 8)
    out, f = gate(s, h, return_gate=True)
    assert torch.allclose(out, f * gate.ws(s) + (1 - f) * gate.wh(h))


def test_pooling_ignores_padding_and_pair_features():
    torch.manual_seed(0)
    enc = SentenceEncoder(DissanModelConfig(heads=1, dropout=0.0), 4).eval()
    x = torch.randn(1, 3, 4)
    padded = torch.cat([x, torch.full((1, 2, 4), 1e3)], 1)  # garbage in the padding
    assert torch.allclose(enc(x, torch.tensor([3])), enc(padded, torch.tensor([3])), atol=1e-5)
    u, v = torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 1.0]])
    assert pair_features(u, v).tolist() == [[1.0, -2.0, 3.0, 1.0, 2.0, 3.0, 3.0, -2.0]]
    assert SentenceEncoder(DissanModelConfig(heads=1, pooling="max"), 4).out_dim == 8


def test_paper_size_is_4_7m_parameters_without_embeddings():
    m = NLIClassifier(DissanModelConfig(), torch.randn(10, 300))
    assert m.n_trainable() == pytest.approx(4.7e6, rel=0.01)  # spec §2.5: 4.69M
    assert not m.embed.weight.requires_grad


@pytest.mark.parametrize("encoder", ["dissan", "bilstm_max"])
def test_classifier_shapes_and_frozen_vectors(encoder):
    torch.manual_seed(0)
    vectors = torch.randn(20, 10)
    m = NLIClassifier(DissanModelConfig(encoder=encoder, heads=5, lstm_hidden=6), vectors)
    p, h = torch.randint(1, 20, (4, 7)), torch.randint(1, 20, (4, 5))
    logits = m(p, torch.tensor([7, 3, 1, 2]), h, torch.tensor([5, 5, 1, 4]))
    assert logits.shape == (4, 3)
    logits.sum().backward()
    assert m.embed.weight.grad is None and torch.equal(m.embed.weight, vectors)


@pytest.mark.parametrize("distance", [True, False])
def test_batched_encoder_equals_the_per_example_per_head_reference(distance):
    """The benchmark's straightforward reference computes the same function (outputs and gradients)."""
    from scripts.dissan_benchmark import reference_forward

    torch.manual_seed(0)
    m = NLIClassifier(DissanModelConfig(heads=2, distance_mask=distance, alpha=0.7), torch.randn(30, 8)).eval()
    p, h = torch.randint(1, 30, (3, 6)), torch.randint(1, 30, (3, 4))
    pl, hl = torch.tensor([6, 2, 1]), torch.tensor([4, 4, 1])
    a = m(p, pl, h, hl)
    a.sum().backward()
    grads = {n: q.grad.clone() for n, q in m.named_parameters() if q.grad is not None}
    m.zero_grad()
    b = reference_forward(m, p, pl, h, hl)
    b.sum().backward()
    assert torch.allclose(a, b, atol=1e-5)
    for n, q in m.named_parameters():
        if q.grad is not None:
            assert torch.allclose(q.grad, grads[n], atol=1e-5), n
