"""EGTR: a Deformable-DETR detector whose decoder self-attention queries and keys feed a relation head.

Detector: ``transformers.DeformableDetrModel`` (public API only) with a timm backbone, no box refinement,
no two-stage, and the detection heads of ``DeformableDetrForObjectDetection`` re-declared here (sigmoid
focal classification with prior 0.01; a 3-layer box MLP on top of the reference points). On CPU the
multi-scale deformable attention runs transformers' pure-PyTorch ``grid_sample`` path (the spec's
``multi_scale_deformable_attn_pytorch``); nothing here needs the CUDA kernel.

Queries and keys: a forward hook on ``decoder.layers[l].self_attn.q_proj`` / ``k_proj`` records their
outputs, i.e. Q_l, K_l in R^{N x d} (heads concatenated, positional query embedding included, values
without it). transformers 5 applies the 1/sqrt(d_h) scaling inside the attention function, so these are
the unscaled tensors the official code recovers by multiplying by sqrt(d_h) (spec 2.1).

Relation head (naver-ai/egtr ``model/egtr.py``, spec 2.2)::

    R^l_ij = [Linear_l^Q(Q_l)_i ; Linear_l^K(K_l)_j]      l = 1..L
    R^{L+1}_ij = [W_s Z_i ; W_o Z_j]                      Z = last decoder hidden state
    g^l_ij = sigmoid(w_g . R^l_ij + b_g)                  one gate shared by all sources
    R_ij = sum_l g^l_ij R^l_ij;  G = MLP_rel(R) (+ freq bias);  c = MLP_conn(R)

R is never materialised: the MLPs' first layers are applied to each source's [N, d] parts before the gated sum
(exact, see ``RelationHead.forward``), which removes the two [N^2, 2d] x [2d, d] products of the direct form.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DeformableDetrConfig, DeformableDetrModel

from models.egtr.config import DetectorConfig

FREQ_EPS = 1e-12


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between (the DETR ``MLPPredictionHead``)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, num_layers: int):
        super().__init__()
        dims = [d_in] + [d_hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [d_out]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def hf_config(cfg: DetectorConfig) -> DeformableDetrConfig:
    if cfg.num_feature_levels == 2:
        raise ValueError("detector.num_feature_levels: the timm backbone gives 3 maps (strides 8/16/32) and extra levels "
                         "are added on top, so use 1 or >= 3 (got 2)")
    return DeformableDetrConfig(
        backbone=cfg.backbone,
        num_queries=cfg.num_queries,
        d_model=cfg.d_model,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim,
        encoder_n_points=cfg.n_points,
        decoder_n_points=cfg.n_points,
        num_feature_levels=cfg.num_feature_levels,
        dropout=cfg.dropout,
        with_box_refine=False,
        two_stage=False,
        attn_implementation="eager",
    )


class DeformableDetector(nn.Module):
    """Deformable DETR + class/box heads; exposes every decoder layer's self-attention Q and K."""

    def __init__(self, cfg: DetectorConfig, num_classes: int):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.model = DeformableDetrModel(hf_config(cfg))
        if cfg.backbone_weights:
            self._load_backbone(cfg.backbone_weights)
        else:
            self._reset_frozen_bn()
        d = cfg.d_model
        self.class_embed = nn.Linear(d, num_classes)
        self.bbox_embed = MLP(d, d, 4, 3)
        nn.init.constant_(self.class_embed.bias, -math.log((1 - 0.01) / 0.01))  # prior 0.01
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        # Deformable DETR without box refinement: initial w, h = sigmoid(-2) ~ 0.12 of the image, not 0.5
        nn.init.constant_(self.bbox_embed.layers[-1].bias[2:], -2.0)
        self._qk: dict[str, list[torch.Tensor]] = {"q": [], "k": []}
        for layer in self.model.decoder.layers:
            layer.self_attn.q_proj.register_forward_hook(self._hook("q"))
            layer.self_attn.k_proj.register_forward_hook(self._hook("k"))

    def _reset_frozen_bn(self) -> None:
        """Random-init backbone only: timm zero-initialises the last BatchNorm of every residual block
        (``zero_init_last``); frozen, that would switch the residual branches off for good. Use weight 1."""
        for module in self.model.backbone.modules():
            if type(module).__name__.endswith("FrozenBatchNorm2d"):
                module.weight.fill_(1.0)

    def _load_backbone(self, path: str) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = self.model.backbone.model.load_state_dict(state, strict=False)
        if len(missing) > len(state) // 2:
            raise ValueError(f"{path}: does not look like {self.cfg.backbone} weights ({len(missing)} missing keys)")

    def _hook(self, which: str):
        def fn(_module, _inputs, output):
            self._qk[which].append(output)

        return fn

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, output_attentions: bool = False) -> dict:
        self._qk = {"q": [], "k": []}
        out = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask, output_attentions=output_attentions)
        hs = out.intermediate_hidden_states  # [B, L, N, d]
        refs = [out.init_reference_points] + [out.intermediate_reference_points[:, i] for i in range(hs.shape[1] - 1)]
        logits, boxes = [], []
        for level in range(hs.shape[1]):
            ref = inverse_sigmoid(refs[level])
            delta = self.bbox_embed(hs[:, level])
            if ref.shape[-1] == 4:
                delta = delta + ref
            else:
                delta = torch.cat([delta[..., :2] + ref, delta[..., 2:]], dim=-1)
            boxes.append(delta.sigmoid())
            logits.append(self.class_embed(hs[:, level]))
        result = {
            "logits": logits[-1],  # [B, N, C]
            "boxes": boxes[-1],  # [B, N, 4] normalised cxcywh
            "aux": [{"logits": lg, "boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])],
            "hidden": out.last_hidden_state,  # Z [B, N, d]
            "queries": list(self._qk["q"]),  # L x [B, N, d]
            "keys": list(self._qk["k"]),
        }
        if output_attentions:
            result["decoder_attentions"] = out.decoder_attentions
        return result


def freq_bias_table(fg_matrix: torch.Tensor, mode: str) -> torch.Tensor:
    """The frequency bias from training counts ``fg_matrix`` [C+1, C+1, P] (spec 2.3).

    ``log_counts`` copies the official expression ``log(fg + eps / (fg.sum(2) + eps))`` exactly: by operator
    precedence it is the log of raw counts (unseen predicate of a seen pair ~ log(1e-12 / S); unseen pair 0).
    ``log_softmax`` is the official ``--use_log_softmax`` (log-softmax of those raw counts, not of their log);
    ``log_probs`` is the corrected prior log p(predicate | pair) (a fix, not in the official code).
    """
    fg = fg_matrix.double()
    counts = fg + FREQ_EPS / (fg.sum(2, keepdim=True) + FREQ_EPS)  # the official expression: raw counts (+ ~0)
    if mode == "log_counts":  # official default
        table = torch.log(counts)
    elif mode == "log_softmax":  # official --use_log_softmax True: log-softmax over predicates of the raw counts
        table = torch.log_softmax(counts, dim=-1)
    elif mode == "log_probs":  # not official: the log-probability log p(predicate | class pair) the paper describes
        table = torch.log_softmax(torch.log(fg + FREQ_EPS), dim=-1)
    elif mode == "off":
        table = torch.zeros_like(fg)
    else:
        raise ValueError(f"relation.freq_bias: expected log_counts, log_softmax, log_probs or off (got {mode!r})")
    return table.float()


class RelationHead(nn.Module):
    def __init__(self, d: int, num_layers: int, num_predicates: int, num_classes: int,
                 fg_matrix: torch.Tensor | None = None, freq_bias: str = "log_counts", init: str = "official"):
        super().__init__()
        self.d, self.num_predicates, self.init_mode = d, num_predicates, init
        self.proj_q = nn.ModuleList(nn.Linear(d, d) for _ in range(num_layers))
        self.proj_k = nn.ModuleList(nn.Linear(d, d) for _ in range(num_layers))
        self.final_sub_proj = nn.Linear(d, d)
        self.final_obj_proj = nn.Linear(d, d)
        self.gate = nn.Linear(2 * d, 1)
        self.rel_mlp = MLP(2 * d, d, num_predicates, 3)
        self.conn_mlp = MLP(2 * d, d, 1, 3)
        if fg_matrix is None:
            fg_matrix = torch.zeros(num_classes + 1, num_classes + 1, num_predicates)
        self.freq_bias_mode = freq_bias
        self.register_buffer("fg_matrix", fg_matrix.float())
        self.register_buffer("log_freq", freq_bias_table(fg_matrix, freq_bias))
        if init == "official":
            # keys missing from the detector checkpoint get transformers' _init_weights in the official code
            # (DeformableDetrPreTrainedModel: Linear weight ~ N(0, init_std = 0.02), bias 0)
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)
        elif init != "pytorch":
            raise ValueError(f"relation.init: expected official or pytorch (got {init!r})")

    def set_fg_matrix(self, fg_matrix: torch.Tensor) -> None:
        self.fg_matrix.copy_(fg_matrix.float())
        self.log_freq.copy_(freq_bias_table(fg_matrix, self.freq_bias_mode))

    def sources(self, queries: list[torch.Tensor], keys: list[torch.Tensor], hidden: torch.Tensor):
        for l, (q, k) in enumerate(zip(queries, keys)):
            yield self.proj_q[l](q), self.proj_k[l](k)
        yield self.final_sub_proj(hidden), self.final_obj_proj(hidden)

    def forward(self, queries: list[torch.Tensor], keys: list[torch.Tensor], hidden: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict:
        """``labels`` [B, N]: argmax class of each query (for the frequency bias).

        Computed without building R: the first layers of both MLPs are linear, and
        ``W [a; b] = W_a a + W_b b``, so ``W R_ij = sum_l g^l_ij (W_a sub^l_i + W_b obj^l_j)``. Each source's
        subject and object parts are projected once per query ([B, N, .], not [B, N, N, .]), and the gated sum
        over sources is two batched matmuls with the L + 1 sources as the contraction dimension. Equal to
        ``MLP(R)`` up to float rounding (test_gated_sum_matches_the_explicit_formula); the parameters are the
        same ``rel_mlp`` / ``conn_mlp`` layers, so checkpoints of either form load into the other.
        """
        d = hidden.shape[-1]
        subs, objs = zip(*self.sources(queries, keys, hidden))
        sub, obj = torch.stack(subs, 1), torch.stack(objs, 1)  # [B, S, N, d], S = L + 1 sources
        w_s, w_o = self.gate.weight[0, :d], self.gate.weight[0, d:]
        # w_g . [sub_i ; obj_j] + b = (w_s . sub_i) + (w_o . obj_j) + b
        g = torch.sigmoid((sub @ w_s)[..., :, None] + (obj @ w_o)[..., None, :] + self.gate.bias)  # [B, S, N, N]
        first_rel, first_conn = self.rel_mlp.layers[0], self.conn_mlp.layers[0]
        w1 = torch.cat([first_rel.weight, first_conn.weight], 0)  # [h_rel + h_conn, 2d]
        u = sub @ w1[:, :d].T  # [B, S, N, h]: W_a sub^l_i
        v = obj @ w1[:, d:].T  # [B, S, N, h]: W_b obj^l_j
        h = torch.einsum("bsij,bsic->bijc", g, u) + torch.einsum("bsij,bsjc->bijc", g, v)
        h = F.relu(h + torch.cat([first_rel.bias, first_conn.bias]))
        h_rel, h_conn = h.split([first_rel.out_features, first_conn.out_features], dim=-1)
        logits = _mlp_tail(self.rel_mlp, h_rel)
        if labels is not None and self.freq_bias_mode != "off":
            logits = logits + self.log_freq[labels[:, :, None], labels[:, None, :]]
        conn = _mlp_tail(self.conn_mlp, h_conn).squeeze(-1)
        return {"rel_logits": logits, "conn_logits": conn, "gates": g.detach().mean(dim=(0, 2, 3))}


def _mlp_tail(mlp: MLP, x: torch.Tensor) -> torch.Tensor:
    """``mlp`` from its second layer on, given the (already activated) output of its first layer."""
    for i, layer in enumerate(mlp.layers[1:], start=1):
        x = layer(x)
        if i < len(mlp.layers) - 1:
            x = F.relu(x)
    return x


class EGTR(nn.Module):
    """Detector + relation head. ``num_predicates = 0`` gives the detector alone (stage 0)."""

    def __init__(self, cfg: DetectorConfig, num_classes: int, num_predicates: int,
                 fg_matrix: torch.Tensor | None = None, freq_bias: str = "log_counts", rel_init: str = "official"):
        super().__init__()
        self.detector = DeformableDetector(cfg, num_classes)
        self.relation = (RelationHead(cfg.d_model, cfg.decoder_layers, num_predicates, num_classes, fg_matrix, freq_bias,
                                      rel_init)
                         if num_predicates > 0 else None)

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, output_attentions: bool = False) -> dict:
        out = self.detector(pixel_values, pixel_mask, output_attentions=output_attentions)
        if self.relation is not None:
            labels = out["logits"].argmax(-1)
            out.update(self.relation(out["queries"], out["keys"], out["hidden"], labels))
        return out


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def param_groups(model: EGTR, stage: str, lr: float, lr_detector: float, lr_backbone: float,
                 weight_decay: float, new_keys: set[str] | None = None) -> list[dict]:
    """AdamW groups of the two stages (spec 3.4).

    pretrain: backbone, ``reference_points`` and ``sampling_offsets`` at ``lr_backbone``, the rest at ``lr``.
    sgg: new modules (keys missing from the detector checkpoint: the relation head) at ``lr``, the rest of the
    detector at ``lr_detector``, backbone / reference points / sampling offsets at ``lr_backbone``.
    """
    slow, mid, new = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_slow = "backbone" in name or "reference_points" in name or "sampling_offsets" in name
        is_new = name.startswith("relation.") if new_keys is None else name in new_keys
        if stage == "sgg" and is_new:
            new.append(p)
        elif is_slow:
            slow.append(p)
        else:
            mid.append(p)
    if stage == "pretrain":
        groups = [{"params": mid, "lr": lr, "name": "detector"}, {"params": slow, "lr": lr_backbone, "name": "backbone"}]
    else:
        groups = [{"params": new, "lr": lr, "name": "new"}, {"params": mid, "lr": lr_detector, "name": "detector"},
                  {"params": slow, "lr": lr_backbone, "name": "backbone"}]
    for g in groups:
        g["weight_decay"] = weight_decay
    return [g for g in groups if g["params"]]
