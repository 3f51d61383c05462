"""SGDet evaluation of an EGTR model (naver-ai/egtr ``evaluate_egtr.py``; spec section 3.5 and 5).

Scoring at inference: object score and class = max over classes of **softmax** (the official choice, although
training used sigmoid focal; ``eval.obj_score: sigmoid`` switches), boxes cxcywh -> xyxy in original pixels,
``rel_ijk = clamp(P_ijk) * clamp(C_ij)``; the triplet ranking (graph constraint or not) is
:func:`models.egtr.metrics.sgdet_triplets`. Detection AP50 uses the DETR post-processing (top-100 sigmoid
scores over query x class) through pycocotools.

Predictors compared by the learning benchmark (``predictor``):

- ``egtr``: the trained model;
- ``untrained_head``: the same detector with a freshly initialised relation head (same frequency bias);
- ``freq_only``: the detector + the class-pair predicate frequencies of the training split
  (p(predicate | subject class, object class), the Neural-Motifs FREQ baseline), connectivity 1.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from models.egtr.config import EgtrConfig
from models.egtr.data import SceneGraphDataset, collate
from models.egtr.losses import cxcywh_to_xyxy
from models.egtr.modeling import EGTR, RelationHead, count_parameters

PREDICTORS = ("egtr", "untrained_head", "freq_only")


def build_predictor(model: EGTR, predictor: str, seed: int = 0) -> EGTR:
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor: expected one of {PREDICTORS} (got {predictor!r})")
    if predictor == "untrained_head":
        old = model.relation
        torch.manual_seed(seed)
        fresh = RelationHead(old.d, len(old.proj_q), old.num_predicates, old.fg_matrix.shape[0] - 1,
                             old.fg_matrix.clone(), old.freq_bias_mode, old.init_mode)
        model.relation = fresh.to(old.fg_matrix.device)
    return model


@torch.no_grad()
def postprocess(model: EGTR, out: dict, targets: list[dict], cfg: EgtrConfig, predictor: str = "egtr") -> list[dict]:
    """Per image: boxes xyxy (original pixels), labels, obj_scores, rel_scores [N, N, P], det (top-100 sigmoid)."""
    probs = out["logits"].softmax(-1) if cfg.eval.obj_score == "softmax" else out["logits"].sigmoid()
    obj_scores, labels = probs.max(-1)
    rel_head = model.relation
    if rel_head is None:  # the stage-0 detector alone
        rel = None
    elif predictor == "freq_only":
        fg = rel_head.fg_matrix
        dist = fg / fg.sum(-1, keepdim=True).clamp(min=1)
        rel = dist[labels[:, :, None], labels[:, None, :]]  # [B, N, N, P]
    else:
        g = out["rel_logits"]
        if cfg.relation.logit_adjustment:
            prior = rel_head.fg_matrix.sum((0, 1))
            g = g - cfg.relation.logit_adjustment_tau * torch.log(prior / prior.sum() + 1e-12)
        rel = g.sigmoid().clamp(0, 1) * out["conn_logits"].sigmoid().clamp(0, 1)[..., None]
    sig = out["logits"].sigmoid()
    results = []
    for b, t in enumerate(targets):
        h0, w0 = t["orig_size"]
        scale = torch.tensor([w0, h0, w0, h0], dtype=torch.float32)
        boxes = cxcywh_to_xyxy(out["boxes"][b].float().cpu()) * scale
        n, c = sig[b].shape
        k = min(100, n * c)
        top = sig[b].reshape(-1).topk(k)
        q, cls = top.indices // c, top.indices % c
        results.append({
            "image_id": t["image_id"],
            "boxes": boxes.numpy(),
            "labels": labels[b].cpu().numpy(),
            "obj_scores": obj_scores[b].cpu().numpy(),
            "rel_scores": None if rel is None else rel[b].cpu().numpy(),
            "det": {"boxes": boxes[q.cpu()].numpy(), "labels": cls.cpu().numpy(), "scores": top.values.cpu().numpy()},
        })
    return results


def ground_truth(ds: SceneGraphDataset, image_id: int) -> dict:
    t = ds.sg.targets(image_id)
    boxes = np.asarray(t["boxes_xywh"], dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, 2:] += boxes[:, :2]
    # the official ground truth is the dense [N, N, P] target's nonzero entries: a repeated triplet counts once
    rels = np.unique(np.asarray(t["rels"], dtype=np.int64).reshape(-1, 3), axis=0)
    return {"boxes": boxes, "labels": np.asarray(t["labels"]), "rels": rels}


@torch.no_grad()
def evaluate(model: EGTR, cfg: EgtrConfig, split: str, predictor: str = "egtr", batch_size: int = 1,
             progress: bool = True, max_images: int = 0) -> dict:
    """SGDet metrics of ``predictor`` on ``split``: R@K / mR@K with and without graph constraint (VG protocol),
    the Open Images metrics when ``eval.protocol == "oi"``, detector AP50, parameters and images per second
    (batch 1 by default, as the official ``--eval_batch_size 1`` behind the paper's FPS)."""
    from models.egtr.metrics import OIEvaluator, SGRecall, detection_ap50

    ds = SceneGraphDataset(cfg.data_dir, split, cfg.augment, train=False, seed=cfg.seed,
                           max_images=max_images or cfg.eval.max_images)
    n_pred = len(ds.sg.predicates)
    device = next(model.parameters()).device
    model = build_predictor(model, predictor, seed=cfg.seed)
    model.eval()
    ks = tuple(cfg.eval.ks)
    gc = SGRecall(n_pred, ks=ks, graph_constraint=True)
    ngc = SGRecall(n_pred, ks=ks, graph_constraint=False)
    oi = OIEvaluator(n_pred) if cfg.eval.protocol == "oi" else None
    det_gts, det_preds = [], []
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)
    seconds, n_images = 0.0, 0
    tick = time.perf_counter()
    for pixel_values, pixel_mask, targets in tqdm(loader, desc=f"eval {split} ({predictor})", leave=False, disable=not progress):
        out = model(pixel_values.to(device), pixel_mask.to(device))
        preds = postprocess(model, out, targets, cfg, predictor)
        seconds += time.perf_counter() - tick  # forward + post-processing + data loading, as the official FPS
        n_images += len(targets)
        for p in preds:
            gt = ground_truth(ds, p["image_id"])
            gc.add(gt, p)
            ngc.add(gt, p)
            if oi is not None:
                oi.add(gt, p)
            det_gts.append({"boxes": gt["boxes"], "labels": gt["labels"]})
            det_preds.append(p["det"])
        tick = time.perf_counter()
    res: dict[str, float] = {}
    gc_summary = gc.summary()
    for key, val in gc_summary.items():
        if not key.startswith("per_predicate"):
            res[key.replace("@", "_at_")] = float(val)
    for key, val in ngc.summary().items():
        if not key.startswith("per_predicate"):
            res["ngc_" + key.replace("@", "_at_")] = float(val)
    if oi is not None:
        for key, val in oi.summary().items():
            if isinstance(val, (int, float)):
                res["oi_" + key.replace("@", "_at_")] = float(val)
    ap = detection_ap50(det_gts, det_preds, ds.sg.categories)
    res["AP50"], res["AP"] = float(ap["AP50"]), float(ap["AP"])
    res["images"] = float(n_images)
    res["images_per_s"] = n_images / seconds if seconds else float("nan")
    res["params_total"] = float(count_parameters(model))
    res["params_relation_head"] = float(count_parameters(model.relation))
    res["per_predicate_R_at_50"] = gc_summary.get("per_predicate_R@50")
    return res

