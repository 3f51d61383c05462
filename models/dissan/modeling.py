"""DisSAN (Im & Cho, arXiv 1712.02047): distance-based self-attention sentence encoder for NLI, and the
BiLSTM-max baseline (InferSent family) with the same classifier.

No official code exists; the equations follow the project spec (``dissan.md`` §2), whose sources are two
notes quoting the paper, DiSAN's official code (the predecessor) and the baaesh/SAN4NLI-pytorch port.
Choices the paper leaves open are switches of :class:`models.dissan.config.DissanModelConfig`
(marked *reconstruction* below).

Encoder, per direction (forward, backward), for block input S (B, n, d), with h heads of d_k = d / h:

    A = softmax(Q K^T / sqrt(d_k) + M_dir + alpha * M_dis + M_pad) V         masked multi-head attention
    M_dir[i, j] = 0 if j < i (forward) / j > i (backward), else -inf         the diagonal is excluded
    M_dis[i, j] = -|i - j|;  M_pad = -inf on padded keys
    H = concat_heads(A) W_O
    S_F = S W_S, H_F = H W_H, F = sigmoid(S_F + H_F + b_F), G = F * S_F + (1 - F) * H_F     fusion gate
    out = LayerNorm(G + FFN(G)), FFN: d -> 4d -> d (ReLU)                     (Post-LN: reconstruction)

A query with no allowed key (the first token forward, the last backward, padding) gets attention
output 0 (masked softmax returning zeros, never NaN). Attention memory is O(B h n^2); DiSAN's
multi-dimensional token2token attention would be O(B n^2 d).

Sentence vector: U = [U_fw; U_bw] (B, n, 2d); multi-dimensional source2token attention
A = W_2 ELU(W_1 U + b_1) + b_2, softmax over positions per feature (padding masked), s_md = sum_i A_i * U_i;
max pooling s_max (padding masked); s = [s_md; s_max] (``pooling="md_max"``, the paper's best) or either one.
Classifier: m = [u; v; |u - v|; u * v] -> ReLU(300) -> 3 logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.dissan.config import DissanModelConfig

NEG_INF = float("-inf")


def attention_bias(lengths: torch.Tensor, n: int, direction: str, alpha: float, distance: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(allowed (B, 1, n, n) bool, additive bias (1, 1, n, n)) for queries i (rows) and keys j (columns).

    allowed = directional mask (strict: the diagonal is excluded) & key is not padding; the bias is
    alpha * -|i - j| (zeros without the distance mask).
    """
    pos = torch.arange(n, device=lengths.device)
    i, j = pos[:, None], pos[None, :]
    if direction == "fw":
        directional = j < i
    elif direction == "bw":
        directional = j > i
    else:
        raise ValueError(f"direction must be 'fw' or 'bw', got {direction!r}")
    key_ok = pos[None, :] < lengths[:, None]  # (B, n)
    allowed = directional[None, None] & key_ok[:, None, None, :]
    bias = (-(i - j).abs().float() * alpha) if distance else torch.zeros(n, n, device=lengths.device)
    return allowed, bias[None, None]


def masked_softmax(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to ``allowed``; a row with no allowed entry is all zeros."""
    has_any = allowed.any(-1, keepdim=True)
    logits = logits.masked_fill(~allowed, NEG_INF).masked_fill(~has_any, 0.0)
    return torch.softmax(logits, -1) * has_any


class MaskedMultiHeadAttention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        if d % heads:
            raise ValueError(f"model size {d} is not divisible by {heads} heads")
        self.h, self.dk = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, bias: torch.Tensor, return_attention: bool = False):
        B, n, d = x.shape
        split = lambda t: t.view(B, n, self.h, self.dk).transpose(1, 2)  # noqa: E731  (B, h, n, dk)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.dk) + bias  # (B, h, n, n)
        p = masked_softmax(logits, allowed)
        out = self.o((p @ v).transpose(1, 2).reshape(B, n, d))
        out = self.drop(out)
        return (out, p) if return_attention else out


class FusionGate(nn.Module):
    """DisSAN's gate on projected inputs (default) or DiSAN's on the un-projected ones (``form="disan"``)."""

    def __init__(self, d: int, form: str = "dissan"):
        super().__init__()
        self.form = form
        self.ws = nn.Linear(d, d, bias=False)
        self.wh = nn.Linear(d, d, bias=False)
        self.b = nn.Parameter(torch.zeros(d))

    def forward(self, s: torch.Tensor, h: torch.Tensor, return_gate: bool = False):
        sf, hf = self.ws(s), self.wh(h)
        f = torch.sigmoid(sf + hf + self.b)
        out = f * sf + (1 - f) * hf if self.form == "dissan" else f * s + (1 - f) * h
        return (out, f) if return_gate else out


class DirectionalBlock(nn.Module):
    def __init__(self, cfg: DissanModelConfig, d: int, direction: str):
        super().__init__()
        self.cfg, self.direction = cfg, direction
        self.attn = MaskedMultiHeadAttention(d, cfg.heads, cfg.dropout)
        self.gate = FusionGate(d, cfg.gate)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_mult * d), nn.ReLU(), nn.Linear(cfg.ffn_mult * d, d), nn.Dropout(cfg.dropout))
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, return_internals: bool = False):
        allowed, bias = attention_bias(lengths, x.shape[1], self.direction, self.cfg.alpha, self.cfg.distance_mask)
        h, p = self.attn(x, allowed, bias, return_attention=True)
        g, f = self.gate(x, h, return_gate=True)
        out = self.norm(g + self.ffn(g))
        return (out, {"attention": p, "gate": f}) if return_internals else out


class SentenceEncoder(nn.Module):
    """Token vectors (B, n, E) and lengths (B,) -> sentence vectors (B, out_dim)."""

    def __init__(self, cfg: DissanModelConfig, emb_dim: int):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model or emb_dim
        self.proj = nn.Linear(emb_dim, d) if d != emb_dim else nn.Identity()  # a deviation when used (spec §7.1)
        self.fw = DirectionalBlock(cfg, d, "fw")
        self.bw = DirectionalBlock(cfg, d, "bw")
        self.s2t = nn.Sequential(nn.Linear(2 * d, 2 * d), nn.ELU(), nn.Linear(2 * d, 2 * d))
        self.out_dim = {"md_max": 4 * d, "md": 2 * d, "max": 2 * d}[cfg.pooling]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        u = torch.cat([self.fw(x, lengths), self.bw(x, lengths)], -1)  # (B, n, 2d)
        pad = torch.arange(u.shape[1], device=u.device)[None, :] >= lengths[:, None]  # (B, n)
        parts = []
        if self.cfg.pooling in ("md_max", "md"):
            a = self.s2t(u).masked_fill(pad[..., None], NEG_INF)
            parts.append((torch.softmax(a, 1) * u).sum(1))
        if self.cfg.pooling in ("md_max", "max"):
            parts.append(u.masked_fill(pad[..., None], NEG_INF).amax(1))
        return torch.cat(parts, -1)


class BiLSTMMaxEncoder(nn.Module):
    """InferSent-style baseline: bidirectional LSTM, max pooling over non-padding positions."""

    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.lstm = nn.LSTM(emb_dim, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        pad = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        return out.masked_fill(pad[..., None], NEG_INF).amax(1)


def pair_features(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[u; v; |u - v|; u * v]."""
    return torch.cat([u, v, (u - v).abs(), u * v], -1)


class NLIClassifier(nn.Module):
    """Frozen word vectors -> shared sentence encoder -> [u; v; |u - v|; u * v] -> ReLU MLP -> 3 logits."""

    def __init__(self, cfg: DissanModelConfig, vectors: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding.from_pretrained(vectors.float(), freeze=True, padding_idx=0)
        emb_dim = vectors.shape[1]
        self.encoder = SentenceEncoder(cfg, emb_dim) if cfg.encoder == "dissan" else BiLSTMMaxEncoder(cfg.lstm_hidden, emb_dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.mlp = nn.Sequential(nn.Linear(4 * self.encoder.out_dim, cfg.classifier_hidden), nn.ReLU(), nn.Linear(cfg.classifier_hidden, 3))

    def encode(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(tokens), lengths)

    def forward(self, p_tok: torch.Tensor, p_len: torch.Tensor, h_tok: torch.Tensor, h_len: torch.Tensor) -> torch.Tensor:
        u, v = self.encode(p_tok, p_len), self.encode(h_tok, h_len)
        return self.mlp(self.drop(pair_features(u, v)))

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
