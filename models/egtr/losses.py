"""EGTR training objective (naver-ai/egtr ``model/egtr.py`` losses, ``train_egtr.py``; spec section 3).

- :class:`HungarianMatcher`: DETR matching with cost 2 * focal class cost + 5 * L1(cxcywh) + 2 * (-GIoU); it
  returns the matched pairs **and their costs**, which drive the adaptive relation smoothing.
- :func:`smoothing_uncertainty`: u_i = sigmoid(C_i - C_min + logit(s)); unmatched queries get the official
  constant cost, so u ~ 1 and their targets ~ 0.
- :func:`relation_losses`: BCE on the sampled predicate entries (all positives, top-k hard negatives of matched
  pairs, k = 80 x positives, and 80 x positives non-matching entries, top-k or random), averaged over every
  sampled entry of the batch; connectivity BCE over all N x N pairs with hard targets.
- :func:`detection_losses`: sigmoid focal (normalised by the number of boxes), L1 and GIoU.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import generalized_box_iou, sigmoid_focal_loss

from models.egtr.config import LossConfig

MATCH_EPS = 1e-8


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


class HungarianMatcher:
    """Per-image optimal assignment of queries to ground-truth objects; costs are returned with the indices."""

    def __init__(self, cfg: LossConfig):
        self.w_cls, self.w_bbox, self.w_giou = cfg.cls, cfg.bbox, cfg.giou
        self.alpha, self.gamma = cfg.focal_alpha, cfg.focal_gamma

    def cost_matrix(self, logits: torch.Tensor, boxes: torch.Tensor, tgt_labels: torch.Tensor, tgt_boxes: torch.Tensor):
        """[N, M] matching cost of one image (logits [N, C], boxes [N, 4] cxcywh; targets [M], [M, 4])."""
        p = logits.sigmoid()
        neg = (1 - self.alpha) * (p ** self.gamma) * (-(1 - p + MATCH_EPS).log())
        pos = self.alpha * ((1 - p) ** self.gamma) * (-(p + MATCH_EPS).log())
        cost_class = pos[:, tgt_labels] - neg[:, tgt_labels]
        cost_bbox = torch.cdist(boxes, tgt_boxes, p=1)
        cost_giou = -generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(tgt_boxes))
        return self.w_cls * cost_class + self.w_bbox * cost_bbox + self.w_giou * cost_giou

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict]) -> list[dict]:
        """Returns per image ``{"query": [K], "target": [K], "cost": [K]}`` (query order ascending by target)."""
        out = []
        for b, t in enumerate(targets):
            if len(t["labels"]) == 0:
                empty = torch.zeros(0, dtype=torch.long)
                out.append({"query": empty, "target": empty, "cost": torch.zeros(0)})
                continue
            c = self.cost_matrix(logits[b].float(), boxes[b].float(), t["labels"], t["boxes"]).cpu()
            qi, ti = linear_sum_assignment(c.numpy())
            qi, ti = torch.as_tensor(qi, dtype=torch.long), torch.as_tensor(ti, dtype=torch.long)
            out.append({"query": qi, "target": ti, "cost": c[qi, ti]})
        return out


def min_cost(cfg: LossConfig) -> float:
    """C_min = w_cls (1 - alpha) log(1e-8) - w_giou: the cost of a perfect match (p = 1, L1 = 0, GIoU = 1)."""
    return cfg.cls * (1 - cfg.focal_alpha) * math.log(MATCH_EPS) - cfg.giou


def unmatched_cost(cfg: LossConfig) -> float:
    """The constant cost of unmatched queries: -log(1e-8) w_cls + 4 w_bbox + 2 w_giou - logit(s) (the spec's form).

    The official ``nonmatching_cost`` adds ``-log(1/s - 1)`` (= +logit(s)) and is used as sigmoid's argument
    directly; here it goes through ``- C_min + logit(s)`` like a matched cost. Both give u = 1 to float precision
    (sigmoid of about 29 vs about 90), and an unmatched query has no positive target to scale, so the losses agree.
    """
    return -math.log(MATCH_EPS) * cfg.cls + 4 * cfg.bbox + 2 * cfg.giou - _logit(cfg.smoothing)


def _logit(s: float) -> float:
    return math.log(s / (1 - s))


def smoothing_uncertainty(costs: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """u = sigmoid(C - C_min + logit(s)); targets are y * (1 - u_i) * (1 - u_j)."""
    return torch.sigmoid(costs.double() - min_cost(cfg) + _logit(cfg.smoothing)).float()


def query_uncertainty(match: dict, num_queries: int, cfg: LossConfig) -> torch.Tensor:
    """u for every query of one image: matched queries from their cost, unmatched from the constant cost."""
    costs = torch.full((num_queries,), unmatched_cost(cfg), dtype=torch.float64)
    costs[match["query"]] = match["cost"].double()
    return smoothing_uncertainty(costs, cfg)


def detection_losses(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict], matches: list[dict],
                     cfg: LossConfig, num_boxes: float | None = None) -> dict[str, torch.Tensor]:
    """``num_boxes``: the normaliser (default: this batch's boxes; under DDP the global count / world, as DETR)."""
    b, n, c = logits.shape
    if num_boxes is None:
        num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
    onehot = torch.zeros_like(logits)
    src_boxes, tgt_boxes = [], []
    for i, (t, m) in enumerate(zip(targets, matches)):
        onehot[i, m["query"], t["labels"][m["target"]]] = 1.0
        src_boxes.append(boxes[i, m["query"]])
        tgt_boxes.append(t["boxes"][m["target"]])
    focal = sigmoid_focal_loss(logits, onehot, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, reduction="none")
    loss_cls = focal.mean(1).sum() / num_boxes * n  # DETR: sum over queries and classes / num_boxes
    src, tgt = torch.cat(src_boxes), torch.cat(tgt_boxes)
    loss_bbox = F.l1_loss(src, tgt, reduction="sum") / num_boxes
    loss_giou = (1 - torch.diag(generalized_box_iou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt)))).sum() / num_boxes
    return {"loss_ce": loss_cls, "loss_bbox": loss_bbox, "loss_giou": loss_giou}


def relation_targets(match: dict, target: dict, num_queries: int, num_predicates: int, cfg: LossConfig):
    """Dense smoothed targets [N, N, P], hard connectivity targets [N, N] and the matched-query mask [N]."""
    u = query_uncertainty(match, num_queries, cfg)
    q_of_target = torch.full((len(target["labels"]),), -1, dtype=torch.long)
    q_of_target[match["target"]] = match["query"]
    y = torch.zeros(num_queries, num_queries, num_predicates)
    conn = torch.zeros(num_queries, num_queries)
    rels = target["rels"]
    if len(rels):
        qs, qo, p = q_of_target[rels[:, 0]], q_of_target[rels[:, 1]], rels[:, 2]
        ok = (qs >= 0) & (qo >= 0)
        qs, qo, p = qs[ok], qo[ok], p[ok]
        y[qs, qo, p] = ((1 - u[qs]) * (1 - u[qo])).float()
        conn[qs, qo] = 1.0
    matched = torch.zeros(num_queries, dtype=torch.bool)
    matched[match["query"]] = True
    return y, conn, matched, u


def sample_relation_entries(scores: torch.Tensor, positive: torch.Tensor, matched: torch.Tensor, cfg: LossConfig,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """Flat indices into one image's N x N x P tensor: all positives, then top-k hard negatives among matched
    pairs (k = rel_sample_negatives x #positives), then k non-matching entries (any pair with an unmatched query;
    top-k by score, or random when ``nonmatching_sampling == "random"``)."""
    n, _, p = scores.shape
    flat_scores = scores.reshape(-1)
    pos = positive.reshape(-1)
    pair_matched = (matched[:, None] & matched[None, :])[:, :, None].expand(n, n, p).reshape(-1)
    num_pos = int(pos.sum())
    idx_pos = pos.nonzero().squeeze(1)
    chosen = [idx_pos]
    neg_pool = (~pos & pair_matched).nonzero().squeeze(1)
    k_neg = min(cfg.rel_sample_negatives * num_pos, len(neg_pool))
    if k_neg:
        chosen.append(neg_pool[flat_scores[neg_pool].topk(k_neg).indices])
    nm_pool = (~pair_matched).nonzero().squeeze(1)
    k_nm = min(cfg.rel_sample_nonmatching * num_pos, len(nm_pool))
    if k_nm:
        if cfg.nonmatching_sampling == "topk":
            chosen.append(nm_pool[flat_scores[nm_pool].topk(k_nm).indices])
        else:
            perm = torch.randperm(len(nm_pool), generator=generator)[:k_nm]
            chosen.append(nm_pool[perm.to(nm_pool.device)])
    return torch.cat(chosen)


def relation_losses(rel_logits: torch.Tensor, conn_logits: torch.Tensor, targets: list[dict], matches: list[dict],
                    cfg: LossConfig, sample: bool = True, generator: torch.Generator | None = None,
                    reduce: Callable[[float], float] | None = None) -> dict:
    """The two relation terms: means over the batch's sampled entries (relation) and all pairs (connectivity).
    ``reduce`` (data-parallel training): maps a count of this process to the global count / world, so each mean
    becomes this process's sum over that normaliser (the mean over the global batch once DDP averages)."""
    b, n, _, p = rel_logits.shape
    sampled_logits, sampled_targets, conn_losses, pos_u = [], [], [], []
    for i, (t, m) in enumerate(zip(targets, matches)):
        y, conn, matched, u = relation_targets(m, t, n, p, cfg)
        y, conn, matched = y.to(rel_logits.device), conn.to(rel_logits.device), matched.to(rel_logits.device)
        positive = torch.zeros(n, n, p, dtype=torch.bool, device=rel_logits.device)
        if len(t["rels"]):
            q_of_target = torch.full((len(t["labels"]),), -1, dtype=torch.long)
            q_of_target[m["target"]] = m["query"]
            qs, qo = q_of_target[t["rels"][:, 0]], q_of_target[t["rels"][:, 1]]
            ok = (qs >= 0) & (qo >= 0)
            positive[qs[ok], qo[ok], t["rels"][ok, 2]] = True
            pos_u.append(torch.cat([u[qs[ok]], u[qo[ok]]]))
        if sample:
            idx = sample_relation_entries(rel_logits[i].detach(), positive, matched, cfg, generator)
            sampled_logits.append(rel_logits[i].reshape(-1)[idx])
            sampled_targets.append(y.reshape(-1)[idx])
        else:
            sampled_logits.append(rel_logits[i].reshape(-1))
            sampled_targets.append(y.reshape(-1))
        conn_losses.append(F.binary_cross_entropy_with_logits(conn_logits[i], conn, reduction="none").reshape(-1))
    logits, tgt = torch.cat(sampled_logits), torch.cat(sampled_targets)
    conn_all = torch.cat(conn_losses)
    if reduce is None:
        loss_rel = F.binary_cross_entropy_with_logits(logits, tgt) if len(logits) else rel_logits.sum() * 0
        loss_conn = conn_all.mean()
    else:
        n_rel = reduce(len(logits))
        loss_rel = (F.binary_cross_entropy_with_logits(logits, tgt, reduction="sum") / n_rel if n_rel
                    else rel_logits.sum() * 0)
        loss_conn = conn_all.sum() / reduce(conn_all.numel())
    u_pos = torch.cat(pos_u).mean() if pos_u and sum(len(x) for x in pos_u) else torch.tensor(float("nan"))
    return {"loss_rel": loss_rel, "loss_conn": loss_conn, "uncertainty": u_pos.detach(), "num_sampled": len(logits)}


def total_loss(out: dict, targets: list[dict], matcher: HungarianMatcher, cfg: LossConfig, aux_loss: bool,
               sample: bool = True, generator: torch.Generator | None = None,
               reduce: Callable[[float], float] | None = None) -> tuple[torch.Tensor, dict]:
    """2 L_focal + 5 L_L1 + 2 L_GIoU (+ auxiliary decoder layers) + 15 L_rel + 30 L_conn.

    ``reduce`` (data-parallel training, :mod:`models.common.distributed`): a count of this process -> the global
    count / world; every normaliser (boxes, sampled relation entries, pairs) is then global, as DETR's ``num_boxes``
    all-reduce, so W processes with 1/W of the batch compute the gradient of one process with all of it."""
    matches = matcher(out["logits"], out["boxes"], targets)
    num_boxes = None if reduce is None else max(reduce(sum(len(t["labels"]) for t in targets)), 1)
    det = detection_losses(out["logits"], out["boxes"], targets, matches, cfg, num_boxes)
    loss = cfg.cls * det["loss_ce"] + cfg.bbox * det["loss_bbox"] + cfg.giou * det["loss_giou"]
    logs = {k: float(v.detach()) for k, v in det.items()}
    if aux_loss:
        for j, aux in enumerate(out["aux"]):
            aux_m = matcher(aux["logits"], aux["boxes"], targets)
            d = detection_losses(aux["logits"], aux["boxes"], targets, aux_m, cfg, num_boxes)
            loss = loss + cfg.cls * d["loss_ce"] + cfg.bbox * d["loss_bbox"] + cfg.giou * d["loss_giou"]
    if "rel_logits" in out:
        rel = relation_losses(out["rel_logits"], out["conn_logits"], targets, matches, cfg, sample=sample,
                              generator=generator, reduce=reduce)
        loss = loss + cfg.rel * rel["loss_rel"] + cfg.conn * rel["loss_conn"]
        logs.update(loss_rel=float(rel["loss_rel"].detach()), loss_conn=float(rel["loss_conn"].detach()),
                    uncertainty=float(rel["uncertainty"]))
        for s, g in enumerate(out["gates"]):
            logs[f"rel_gate_{s}"] = float(g)
    logs["loss"] = float(loss.detach())
    return loss, logs
