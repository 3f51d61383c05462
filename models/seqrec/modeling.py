"""Sequential recommenders in one module: FaNC (reconstruction), GRU4Rec and SASRec.

All three map a left-padded item sequence (B, T) (0 = padding) to hidden states h (B, T, d), and
score candidate items from h and the shared item embedding table; padding steps leave recurrent states
unchanged. Training and evaluation live in ``models.seqrec.recipe``.

FaNC (Lee et al., arXiv 2102.07645) -- **reconstruction**: only the paper's abstract was available, so the
cell follows the project's spec (``fanc.md`` §2.1) and every uncertain choice is a switch
(:class:`models.seqrec.config.FancConfig`). Per step t with consumed item embedding e_t:

    c_t = GRUCell(e_t, c_{t-1})                                   conscious state
    m_t = softplus(w_m . e_t + b_m)  (or 1)                       item mass
    r_t = e_t - u_{t-1};  a_t = G m_t r_t / (|r_t|^2 + eps)^{3/2}  Newtonian pull (|a_t| clipped), G = softplus(g)
    v_t = gamma v_{t-1} + Delta a_t;  u_t = u_{t-1} + Delta v_t    unconscious state, in the item space
    g_t = sigmoid(W_g [c_t; u_t] + b_g);  h_t = g_t * c_t + (1 - g_t) * u_t      reality principle (gate)

Scores: h . e_j (``dot``) or -|h - e_j|^2 (``neg_distance``). With ``gravity_k > 1`` the pulls of the last
K items are summed. Item embeddings are not moved by gravity (learned by backpropagation only).
Ablations: ``gravity=False`` keeps u_t = u_0 (static); ``gate=False`` uses h_t = c_t.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.seqrec.config import FancConfig, SeqRecModelConfig


class FaNC(nn.Module):
    def __init__(self, n_items: int, hidden: int = 64, dropout: float = 0.2, cfg: FancConfig = FancConfig()):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRUCell(hidden, hidden)
        self.mass = nn.Linear(hidden, 1)
        self.g = nn.Parameter(torch.zeros(()))
        self.u0 = nn.Parameter(torch.zeros(hidden))
        self.gate = nn.Linear(2 * hidden, hidden)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def G(self) -> torch.Tensor:
        return F.softplus(self.g) if self.cfg.learn_g else torch.ones((), device=self.g.device)

    def pull(self, e: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Acceleration of u towards item embeddings e (B, d) and whether the clip fired (B,)."""
        c = self.cfg
        m = F.softplus(self.mass(e)) if c.mass == "learned" else torch.ones_like(e[:, :1])
        r = e - u
        a = self.G() * m * r / (r.pow(2).sum(-1, keepdim=True) + c.eps).pow(1.5)
        norm = a.norm(dim=-1, keepdim=True)
        clipped = norm > c.accel_clip
        a = torch.where(clipped, a * (c.accel_clip / norm.clamp_min(1e-12)), a)
        return a, clipped.squeeze(-1)

    def forward(self, seq: torch.Tensor, return_states: bool = False):
        B, T = seq.shape
        c_cfg = self.cfg
        emb = self.drop(self.item_emb(seq))
        d = emb.shape[-1]
        c = emb.new_zeros(B, d)
        u = self.u0.expand(B, d)
        v = emb.new_zeros(B, d)
        recent: list[torch.Tensor] = []
        hs, gates, us, clips = [], [], [], []
        for t in range(T):
            e = emb[:, t]
            m = (seq[:, t] > 0).unsqueeze(-1)
            c = torch.where(m, self.gru(e, c), c)
            if c_cfg.gravity:
                recent = (recent + [e])[-c_cfg.gravity_k:]
                a = torch.zeros_like(u)
                fired = torch.zeros(B, dtype=torch.bool, device=seq.device)
                for e_k in recent:
                    a_k, f_k = self.pull(e_k, u)
                    a, fired = a + a_k, fired | f_k
                v_new = c_cfg.damping * v + c_cfg.step * a
                u_new = u + c_cfg.step * v_new
                v, u = torch.where(m, v_new, v), torch.where(m, u_new, u)
                clips.append(fired & m.squeeze(-1))
            if c_cfg.gate:
                g = torch.sigmoid(self.gate(torch.cat([c, u], -1)))
                h = g * c + (1 - g) * u
            else:
                g = torch.ones_like(c)
                h = c
            hs.append(h)
            if return_states:
                gates.append(g)
                us.append(u)
        out = self.drop(torch.stack(hs, 1))
        # share of (non-padding) steps whose acceleration hit accel_clip; read by the training loop
        clip_fraction = (torch.stack(clips, 1).sum() / (seq > 0).sum().clamp_min(1)).detach() if clips else torch.zeros(())
        self.last_clip_fraction = clip_fraction
        if not return_states:
            return out
        states = {"gate": torch.stack(gates, 1), "u": torch.stack(us, 1), "clip_fraction": clip_fraction}
        return out, states

    def score(self, h: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of candidate items (all items when ``items`` is None) for hidden states h (..., d)."""
        E = self.item_emb.weight if items is None else self.item_emb(items)
        dot = h @ E.T
        if self.cfg.score == "dot":
            return dot
        return 2 * dot - h.pow(2).sum(-1, keepdim=True) - E.pow(2).sum(-1)


class GRU4Rec(nn.Module):
    """GRU4Rec (Hidasi et al., 2016) with the full-softmax cross-entropy of the project's training loop."""

    def __init__(self, n_items: int, hidden: int = 64, dropout: float = 0.2):
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        # left padding -> right padding so the packed GRU starts every sequence from a zero state
        lengths = (seq > 0).sum(1)
        T = seq.shape[1]
        idx = (torch.arange(T, device=seq.device).unsqueeze(0) + (T - lengths).unsqueeze(1)) % T
        right = seq.gather(1, idx)
        packed = nn.utils.rnn.pack_padded_sequence(self.drop(self.item_emb(right)), lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
        back = (torch.arange(T, device=seq.device).unsqueeze(0) - (T - lengths).unsqueeze(1)) % T
        return self.drop(out.gather(1, back.unsqueeze(-1).expand(-1, -1, out.shape[-1])))

    def score(self, h: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        E = self.item_emb.weight if items is None else self.item_emb(items)
        return h @ E.T


class SASRec(nn.Module):
    """SASRec (Kang & McAuley, 2018): causal self-attention over the sequence, learned positions."""

    def __init__(self, n_items: int, hidden: int = 64, dropout: float = 0.2, layers: int = 2, heads: int = 1, max_len: int = 50,
                 pos_init: str = "xavier"):
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        if pos_init == "xavier":  # the official code's glorot_uniform
            nn.init.xavier_uniform_(self.pos_emb.weight)
        elif pos_init == "normal":  # RecBole
            nn.init.normal_(self.pos_emb.weight, std=0.02)
        elif pos_init != "torch":
            raise ValueError(f"model.sasrec.pos_init: {pos_init!r}; expected xavier, normal or torch")
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(hidden, heads, hidden, dropout, activation="relu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.heads = heads
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        T = seq.shape[1]
        pos = torch.arange(T, device=seq.device)
        x = self.item_emb(seq) * self.item_emb.embedding_dim ** 0.5 + self.pos_emb(pos)
        pad = seq == 0
        x = self.drop(x) * (~pad).unsqueeze(-1)
        # query i may attend to key j <= i that is not padding; a padding query attends to itself only
        # (keeps the softmax finite; its output is zeroed below)
        eye = torch.eye(T, dtype=torch.bool, device=seq.device)
        allowed = torch.tril(torch.ones(T, T, dtype=torch.bool, device=seq.device)) & (~pad).unsqueeze(1) | eye
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=seq.device).masked_fill(~allowed, float("-inf"))
        mask = mask.repeat_interleave(self.heads, dim=0)  # (B * heads, T, T)
        h = self.encoder(x, mask=mask)
        return self.norm(h) * (~pad).unsqueeze(-1)

    def score(self, h: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        E = self.item_emb.weight if items is None else self.item_emb(items)
        return h @ E.T


def build_model(cfg: SeqRecModelConfig, n_items: int, max_len: int) -> nn.Module:
    if cfg.name == "fanc":
        return FaNC(n_items, cfg.hidden, cfg.dropout, cfg.fanc)
    if cfg.name == "gru4rec":
        return GRU4Rec(n_items, cfg.hidden, cfg.dropout)
    return SASRec(n_items, cfg.hidden, cfg.dropout, cfg.sasrec.layers, cfg.sasrec.heads, max_len, cfg.sasrec.pos_init)
