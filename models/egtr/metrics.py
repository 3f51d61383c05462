"""Scene-graph-generation evaluation for the EGTR re-implementation (CVPR 2024).

Faithful NumPy ports of the evaluators used by the official code (naver-ai/egtr):

* ``evaluate_egtr.py`` / ``train_egtr.py::evaluate_batch`` -- how the model output becomes a
  ranked triplet list (:func:`sgdet_triplets`).
* ``lib/evaluation/sg_eval.py`` (copied from KERN, itself Neural-Motifs
  ``lib/evaluation/sg_eval.py``) -- SGDet Recall@K and mean Recall@K (:class:`SGRecall`).
* ``lib/evaluation/oi_eval.py`` + ``lib/evaluation/ap_eval_rel.py`` (copied from PySGG /
  BGNN ``oi_evaluation.py``) -- Open Images V6 R@50, wmAP_rel, wmAP_phr, score_wtd
  (:class:`OIEvaluator`).
* ``lib/evaluation/coco_eval.py`` -- object-detection AP50 with pycocotools
  (:func:`detection_ap50`).

Conventions: NumPy in, Python floats out.  Boxes are ``xyxy`` absolute pixels, labels and
predicates are 0-based.  A ground truth image is ``{"boxes": [M,4], "labels": [M],
"rels": [R,3] (sub_idx, obj_idx, pred)}``; an SGDet prediction is ``{"boxes": [N,4],
"labels": [N], "obj_scores": [N], "rel_scores": [N,N,P]}`` with
``rel_scores[i,j,k] = clamp(P_ijk,0,1) * clamp(C_ij,0,1)`` (diagonal meaningless).
All recalls and APs are fractions in [0, 1], not percentages.

Box-overlap conventions (each copied from the official file that uses it):

* Triplet matching for recall (``_compute_pred_matches``, ``phrdet=False``) uses the Neural-Motifs
  ``bbox_overlaps`` (``lib/fpn/box_intersections_cpu/bbox.pyx``): widths and heights are
  ``x2 - x1 + 1`` ("+1 pixel"), and a box matches when ``IoU >= iou_thresh`` (0.5); both the
  subject and the object box must match, and labels and predicate must be equal.
* The Open Images AP (``ap_eval_rel.ap_eval``) uses ``ap_eval_rel.bbox_iou`` which, in
  naver-ai/egtr, adds +1 to the *intersection* width/height but not to the box areas (PySGG's
  maskrcnn-benchmark ``boxlist_iou`` adds +1 to both).  ``ap_iou="egtr"`` (default) reproduces
  the EGTR file, ``ap_iou="pysgg"`` the consistent PySGG formula.  A detection is a true
  positive when ``IoU > 0.5`` (strict, as in ``ap_eval``).  With ``"egtr"`` the IoU of large
  identical boxes exceeds 1, and boxes under ~2 px can get a non-positive denominator (never a
  match) -- a quirk of the official file, kept on purpose.
* COCO detection AP converts ``xyxy`` to ``xywh`` as ``(x1, y1, x2 - x1, y2 - y1)`` (DETR's
  ``CocoEvaluator``/``post_process``, no +1).

Ties between equal scores are broken by the flat (row-major) index (stable sort); the official
code uses NumPy's default unstable sort, so only exact ties can order differently.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

__all__ = [
    "OIEvaluator",
    "SGRecall",
    "argsort_desc",
    "bbox_overlaps",
    "boxes_union",
    "compute_pred_matches",
    "detection_ap50",
    "mean_recall_table",
    "sgdet_triplets",
    "voc_ap",
]


# ----------------------------------------------------------------------------- box utilities
def _as_boxes(boxes: Any, name: str = "boxes") -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4] (xyxy), got {arr.shape}")
    return arr


def bbox_overlaps(boxes: Any, query_boxes: Any) -> np.ndarray:
    """IoU matrix ``[N, K]`` with the Neural-Motifs ``bbox_overlaps`` convention (+1 pixel widths).

    ``w = x2 - x1 + 1``, ``h = y2 - y1 + 1``; the intersection counts only when both its +1
    width and height are positive.  E.g. ``[0,0,9,9]`` vs ``[0,0,9,4]`` -> 50 / 100 = 0.5.
    """
    b = _as_boxes(boxes)
    q = _as_boxes(query_boxes, "query_boxes")
    iw = np.minimum(b[:, None, 2], q[None, :, 2]) - np.maximum(b[:, None, 0], q[None, :, 0]) + 1.0
    ih = np.minimum(b[:, None, 3], q[None, :, 3]) - np.maximum(b[:, None, 1], q[None, :, 1]) + 1.0
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_b = (b[:, 2] - b[:, 0] + 1.0) * (b[:, 3] - b[:, 1] + 1.0)
    area_q = (q[:, 2] - q[:, 0] + 1.0) * (q[:, 3] - q[:, 1] + 1.0)
    union = area_b[:, None] + area_q[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=inter > 0)
    return out


def _ap_bbox_iou(box: np.ndarray, gt_boxes: np.ndarray, mode: str) -> np.ndarray:
    """IoU of one box against ``[G, 4]`` boxes as in ``ap_eval_rel.bbox_iou`` (see module doc)."""
    lt = np.maximum(box[None, :2], gt_boxes[:, :2])
    rb = np.minimum(box[None, 2:], gt_boxes[:, 2:])
    wh = np.clip(rb - lt + 1.0, 0.0, None)
    inter = wh[:, 0] * wh[:, 1]
    plus = 0.0 if mode == "egtr" else 1.0
    area1 = (box[2] - box[0] + plus) * (box[3] - box[1] + plus)
    area2 = (gt_boxes[:, 2] - gt_boxes[:, 0] + plus) * (gt_boxes[:, 3] - gt_boxes[:, 1] + plus)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area1 + area2 - inter)


def boxes_union(boxes1: Any, boxes2: Any) -> np.ndarray:
    """Element-wise enclosing box of two ``[N, 4]`` xyxy arrays (the "phrase" box)."""
    a = _as_boxes(boxes1, "boxes1")
    b = _as_boxes(boxes2, "boxes2")
    if a.shape != b.shape:
        raise ValueError(f"boxes_union needs equal shapes, got {a.shape} and {b.shape}")
    return np.column_stack(
        (np.minimum(a[:, 0], b[:, 0]), np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 2], b[:, 2]), np.maximum(a[:, 3], b[:, 3]))
    ).reshape(-1, 4)


def argsort_desc(scores: Any) -> np.ndarray:
    """Indices ``[numel, ndim]`` of ``scores`` in descending order (``lib/pytorch_misc.argsort_desc``).

    Uses a stable sort, so equal scores keep row-major order.
    """
    arr = np.asarray(scores)
    order = np.argsort(-arr.ravel(), kind="stable")
    return np.column_stack(np.unravel_index(order, arr.shape)).reshape(-1, arr.ndim)


# ----------------------------------------------------------------------------- inference scoring
def _pred_arrays(pred: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    boxes = _as_boxes(pred["boxes"], "pred boxes")
    labels = np.asarray(pred["labels"], dtype=np.int64).reshape(-1)
    obj_scores = np.asarray(pred["obj_scores"], dtype=np.float64).reshape(-1)
    rel = np.asarray(pred["rel_scores"], dtype=np.float64)
    n = boxes.shape[0]
    if labels.shape[0] != n or obj_scores.shape[0] != n:
        raise ValueError(f"pred boxes/labels/obj_scores disagree: {n}, {labels.shape[0]}, {obj_scores.shape[0]}")
    if rel.ndim != 3 or rel.shape[0] != n or rel.shape[1] != n or rel.shape[2] < 1:
        raise ValueError(f"pred rel_scores must have shape [N, N, P] with N={n}, got {rel.shape}")
    return boxes, labels, obj_scores, rel


def sgdet_triplets(
    pred: Mapping[str, Any], top_k: int | None = 100, graph_constraint: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rank the relation triplets of one image as EGTR's ``evaluate_batch`` does.

    ``pair_ij = obj_score_i * obj_score_j`` for ``i != j``; self pairs ``(i, i)`` are excluded.

    * ``graph_constraint=True`` ("single"): ``score_ij = max_k rel_ijk * pair_ij``, the ``top_k``
      pairs are kept and each gets ``predicate = argmax_k rel_ijk``.
    * ``graph_constraint=False`` ("multiple"): ``score_ijk = rel_ijk * pair_ij``, the ``top_k``
      triplets are kept (a pair may appear with several predicates).

    Zero-score pairs are kept (as in the official ``argsort_desc(...)[:100]``); only the
    meaningless diagonal is dropped.  ``top_k=None`` returns every candidate.

    Returns ``(sub_idx, obj_idx, predicate, score)``, sorted by score descending.
    """
    _, _, obj_scores, rel = _pred_arrays(pred)
    n, p = rel.shape[0], rel.shape[2]
    sub_c, obj_c = np.nonzero(~np.eye(n, dtype=bool))  # row-major off-diagonal pairs
    pair = obj_scores[sub_c] * obj_scores[obj_c]
    pair_rel = rel[sub_c, obj_c]  # [n*(n-1), P]
    if graph_constraint:
        scores = pair_rel.max(axis=1) * pair
        order = np.argsort(-scores, kind="stable")[:top_k]
        sub, obj = sub_c[order], obj_c[order]
        predicate = pair_rel[order].argmax(axis=1)
        score = scores[order]
    else:
        scores = (pair_rel * pair[:, None]).ravel()
        order = np.argsort(-scores, kind="stable")[:top_k]
        pair_idx, predicate = np.divmod(order, p)
        sub, obj = sub_c[pair_idx], obj_c[pair_idx]
        score = scores[order]
    return sub.astype(np.int64), obj.astype(np.int64), predicate.astype(np.int64), score.astype(np.float64)


# ----------------------------------------------------------------------------- triplet matching
def compute_pred_matches(
    gt_triplets: np.ndarray,
    pred_triplets: np.ndarray,
    gt_boxes: np.ndarray,
    pred_boxes: np.ndarray,
    iou_thresh: float = 0.5,
    phrdet: bool = False,
) -> np.ndarray:
    """Neural-Motifs ``_compute_pred_matches`` as a boolean matrix ``[num_pred, num_gt]``.

    Triplets are ``(sub_label, predicate, obj_label)`` rows; boxes are ``[T, 8]``
    (subject xyxy, object xyxy).  Entry ``[i, g]`` is True when prediction ``i`` has the same
    three labels as GT ``g`` and both boxes have Motifs IoU ``>= iou_thresh`` (``phrdet=True``:
    the union boxes instead).  Row ``i`` is the official ``pred_to_gt[i]`` list.
    """
    gt_triplets = np.asarray(gt_triplets).reshape(-1, 3)
    pred_triplets = np.asarray(pred_triplets).reshape(-1, 3)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 8)
    pred_boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 8)
    keeps = (pred_triplets[:, None, :] == gt_triplets[None, :, :]).all(axis=2)
    if not keeps.any():
        return keeps
    if phrdet:
        iou = bbox_overlaps(boxes_union(pred_boxes[:, :4], pred_boxes[:, 4:]), boxes_union(gt_boxes[:, :4], gt_boxes[:, 4:]))
        ok = iou >= iou_thresh
    else:
        ok = (bbox_overlaps(pred_boxes[:, :4], gt_boxes[:, :4]) >= iou_thresh) & (
            bbox_overlaps(pred_boxes[:, 4:], gt_boxes[:, 4:]) >= iou_thresh
        )
    return keeps & ok


def _gt_arrays(gt: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = _as_boxes(gt["boxes"], "gt boxes")
    labels = np.asarray(gt["labels"], dtype=np.int64).reshape(-1)
    rels = np.asarray(gt["rels"], dtype=np.int64).reshape(-1, 3)
    if labels.shape[0] != boxes.shape[0]:
        raise ValueError(f"gt boxes/labels disagree: {boxes.shape[0]} vs {labels.shape[0]}")
    if rels.size and (rels[:, :2].min() < 0 or rels[:, :2].max() >= boxes.shape[0]):
        raise ValueError("gt rels refer to objects outside gt boxes")
    return boxes, labels, rels


def _triplets(
    sub: np.ndarray, obj: np.ndarray, predicate: np.ndarray, labels: np.ndarray, boxes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    trip = np.column_stack((labels[sub], predicate, labels[obj])).reshape(-1, 3)
    tboxes = np.column_stack((boxes[sub], boxes[obj])).reshape(-1, 8)
    return trip, tboxes


# ----------------------------------------------------------------------------- VG SGDet recall
class SGRecall:
    """SGDet Recall@K / mean Recall@K (Neural-Motifs / KERN ``sg_eval.py`` as used by EGTR).

    * ``R@K``: per image, ``|GT triplets matched by the top-K predictions| / |GT triplets|``,
      averaged over the images with at least one GT triplet (images without GT relations are
      skipped, the official evaluator asserts they do not occur).  Duplicate GT triplets are
      separate GT entries, each can be matched by the same prediction.
    * ``mR@K``: for each predicate ``p`` a separate evaluator sees the same top-K predictions and
      only the GT triplets of ``p`` (images without ``p`` are skipped); ``recall_p@K`` is the
      mean over those images (NaN if ``p`` never occurs).  Following
      ``calculate_mR_from_evaluator_list``, ``mR@K = sum of non-NaN recall_p@K / num_predicates``:
      the division is by **all** predicates, including those absent from the test set.

    Matching: labels and predicate equal, subject and object Motifs IoU (+1 pixel) ``>= iou_thresh``.
    """

    def __init__(
        self,
        num_predicates: int,
        ks: Sequence[int] = (20, 50, 100),
        iou_thresh: float = 0.5,
        graph_constraint: bool = True,
    ) -> None:
        if num_predicates < 1:
            raise ValueError("num_predicates must be >= 1")
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"ks must be positive integers, got {ks}")
        self.num_predicates = int(num_predicates)
        self.ks = tuple(sorted(int(k) for k in ks))
        self.iou_thresh = float(iou_thresh)
        self.graph_constraint = bool(graph_constraint)
        self.num_skipped = 0
        self._recall: dict[int, list[float]] = {k: [] for k in self.ks}
        self._pred_recall: list[dict[int, list[float]]] = [{k: [] for k in self.ks} for _ in range(self.num_predicates)]

    @property
    def num_images(self) -> int:
        return len(self._recall[self.ks[0]])

    def add(self, gt: Mapping[str, Any], pred: Mapping[str, Any]) -> dict[str, float] | None:
        """Score one image's model output (see :func:`sgdet_triplets`) and record its recalls."""
        sub, obj, predicate, _ = sgdet_triplets(pred, top_k=max(self.ks), graph_constraint=self.graph_constraint)
        boxes, labels, _, _ = _pred_arrays(pred)
        return self.add_triplets(gt, boxes, labels, sub, obj, predicate)

    def add_triplets(
        self,
        gt: Mapping[str, Any],
        pred_boxes: Any,
        pred_labels: Any,
        sub_idx: Any,
        obj_idx: Any,
        predicates: Any,
    ) -> dict[str, float] | None:
        """Record one image from an already ranked triplet list (best first).

        Returns the image's ``{"R@K": ...}`` or ``None`` when it has no GT relation (skipped).
        """
        gt_boxes, gt_labels, gt_rels = _gt_arrays(gt)
        if gt_rels.shape[0] == 0:
            self.num_skipped += 1
            return None
        if gt_rels[:, 2].min() < 0 or gt_rels[:, 2].max() >= self.num_predicates:
            raise ValueError(f"gt predicate ids must lie in [0, {self.num_predicates})")
        p_boxes = _as_boxes(pred_boxes, "pred boxes")
        p_labels = np.asarray(pred_labels, dtype=np.int64).reshape(-1)
        sub = np.asarray(sub_idx, dtype=np.int64).reshape(-1)
        obj = np.asarray(obj_idx, dtype=np.int64).reshape(-1)
        prd = np.asarray(predicates, dtype=np.int64).reshape(-1)
        if not (sub.shape == obj.shape == prd.shape):
            raise ValueError("sub_idx, obj_idx and predicates must have the same length")
        sub, obj, prd = sub[: max(self.ks)], obj[: max(self.ks)], prd[: max(self.ks)]

        gt_trip, gt_tboxes = _triplets(gt_rels[:, 0], gt_rels[:, 1], gt_rels[:, 2], gt_labels, gt_boxes)
        pr_trip, pr_tboxes = _triplets(sub, obj, prd, p_labels, p_boxes)
        matches = compute_pred_matches(gt_trip, pr_trip, gt_tboxes, pr_tboxes, self.iou_thresh)

        out: dict[str, float] = {}
        present = np.unique(gt_rels[:, 2])
        for k in self.ks:
            hit = matches[:k].any(axis=0)
            rec = float(hit.sum()) / float(gt_rels.shape[0])
            self._recall[k].append(rec)
            out[f"R@{k}"] = rec
            for p in present:
                mask = gt_rels[:, 2] == p
                self._pred_recall[int(p)][k].append(float(hit[mask].sum()) / float(mask.sum()))
        return out

    def summary(self) -> dict[str, Any]:
        """``R@K``, ``mR@K`` (fractions), ``per_predicate_R@K`` lists (NaN = predicate unseen)."""
        out: dict[str, Any] = {}
        for k in self.ks:
            out[f"R@{k}"] = float(np.mean(self._recall[k])) if self._recall[k] else float("nan")
        for k in self.ks:
            per = [float(np.mean(d[k])) if d[k] else float("nan") for d in self._pred_recall]
            out[f"mR@{k}"] = float(sum(r for r in per if not math.isnan(r)) / self.num_predicates)
            out[f"per_predicate_R@{k}"] = per
        out["num_images"] = self.num_images
        out["num_skipped"] = self.num_skipped
        return out


# ----------------------------------------------------------------------------- Open Images
def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """All-point interpolated AP (``ap_eval_rel.get_ap`` / VOC2010+ ``voc_ap``)."""
    mrec = np.concatenate(([0.0], np.asarray(rec, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(prec, dtype=np.float64), [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


class OIEvaluator:
    """Open Images V6 relation metrics (PySGG/BGNN ``oi_evaluation.py`` via EGTR ``oi_eval.py``).

    Per image: every ordered pair ``(i, j)`` (the official ``torch.cartesian_prod`` includes the
    self pairs ``(i, i)``; ``include_self_pairs=False`` drops them) keeps its ``prd_k=2`` best
    predicates; triplet score ``= s_sub * s_obj * s_pred``; the ``topk=100`` best are kept and
    scores ``<= score_thresh`` (1e-5) are dropped (the official test is ``score > 1e-5``).

    :meth:`summary` returns

    * ``R@K`` (``R@50`` is the reported one): micro recall over the dataset, total GT matched by
      the top-K triplets of their image / total GT (Motifs matching, IoU ``>= 0.5``).
    * ``wmAP_rel``: per predicate AP (``ap_eval``: detections of all images sorted by score,
      TP if labels equal and ``min(IoU_sub, IoU_obj) > iou_thresh`` (0.5) against the best GT of that
      predicate, each GT matched once, else FP; all-point interpolated :func:`voc_ap`), averaged
      with weights ``npos_p / sum(npos)``.  ``wmAP_phr``: same with the union (phrase) boxes.
      ``mAP_rel`` / ``mAP_phr``: plain means over all predicates.
    * ``score_wtd = 0.2 * R@50 + 0.4 * wmAP_rel + 0.4 * wmAP_phr``.
    * ``mR@K`` (not reported by EGTR's ``oi_eval.py``; added with the VG convention): per
      predicate, mean over images containing it of the per-image recall of its GT triplets with
      the same top-K list, summed over predicates and divided by ``num_predicates``.
    * ``per_predicate_AP_rel``, ``per_predicate_AP_phr``, ``per_predicate_R@K``, ``npos``.
    """

    def __init__(
        self,
        num_predicates: int,
        topk: int = 100,
        prd_k: int = 2,
        score_thresh: float = 1e-5,
        ks: Sequence[int] = (20, 50, 100),
        iou_thresh: float = 0.5,
        ap_iou: Literal["egtr", "pysgg"] = "egtr",
        include_self_pairs: bool = True,
    ) -> None:
        if num_predicates < 1:
            raise ValueError("num_predicates must be >= 1")
        if ap_iou not in ("egtr", "pysgg"):
            raise ValueError(f"ap_iou must be 'egtr' or 'pysgg', got {ap_iou!r}")
        self.num_predicates = int(num_predicates)
        self.topk = int(topk)
        self.prd_k = int(prd_k)
        self.score_thresh = float(score_thresh)
        self.ks = tuple(sorted(set(int(k) for k in ks) | {50}))
        self.iou_thresh = float(iou_thresh)
        self.ap_iou = ap_iou
        self.include_self_pairs = bool(include_self_pairs)
        self._gt_total = 0
        self._matched = {k: 0 for k in self.ks}
        self._pred_recall: list[dict[int, list[float]]] = [{k: [] for k in self.ks} for _ in range(self.num_predicates)]
        self._images: list[dict[str, np.ndarray]] = []

    @property
    def num_images(self) -> int:
        return len(self._images)

    def top_triplets(self, pred: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The official OI candidate list ``(sub_idx, obj_idx, predicate, score)``, best first."""
        _, _, obj_scores, rel = _pred_arrays(pred)
        n = rel.shape[0]
        if self.include_self_pairs:
            sub_c, obj_c = np.divmod(np.arange(n * n, dtype=np.int64), n)
        else:
            sub_c, obj_c = np.nonzero(~np.eye(n, dtype=bool))
        prd_scores = rel[sub_c, obj_c]  # [pairs, P]
        prd_order = np.argsort(-prd_scores, axis=1, kind="stable")[:, : self.prd_k]
        prd_sorted = np.take_along_axis(prd_scores, prd_order, axis=1)
        spo = (obj_scores[sub_c] * obj_scores[obj_c])[:, None] * prd_sorted
        inds = argsort_desc(spo)[: self.topk]
        score = spo[inds[:, 0], inds[:, 1]]
        predicate = prd_order[inds[:, 0], inds[:, 1]]
        keep = score > self.score_thresh
        return (
            sub_c[inds[:, 0]][keep].astype(np.int64),
            obj_c[inds[:, 0]][keep].astype(np.int64),
            predicate[keep].astype(np.int64),
            score[keep].astype(np.float64),
        )

    def add(self, gt: Mapping[str, Any], pred: Mapping[str, Any]) -> None:
        """Record one image (GT dict and SGDet prediction dict, see module doc)."""
        gt_boxes, gt_labels, gt_rels = _gt_arrays(gt)
        if gt_rels.size and (gt_rels[:, 2].min() < 0 or gt_rels[:, 2].max() >= self.num_predicates):
            raise ValueError(f"gt predicate ids must lie in [0, {self.num_predicates})")
        p_boxes, p_labels, _, _ = _pred_arrays(pred)
        sub, obj, prd, score = self.top_triplets(pred)

        gt_trip, gt_tboxes = _triplets(gt_rels[:, 0], gt_rels[:, 1], gt_rels[:, 2], gt_labels, gt_boxes)
        pr_trip, pr_tboxes = _triplets(sub, obj, prd, p_labels, p_boxes)
        matches = compute_pred_matches(gt_trip, pr_trip, gt_tboxes, pr_tboxes, self.iou_thresh)

        self._gt_total += gt_rels.shape[0]
        present = np.unique(gt_rels[:, 2])
        for k in self.ks:
            hit = matches[:k].any(axis=0)
            self._matched[k] += int(hit.sum())
            for p in present:
                mask = gt_rels[:, 2] == p
                self._pred_recall[int(p)][k].append(float(hit[mask].sum()) / float(mask.sum()))

        self._images.append(
            {
                "det_boxes": pr_tboxes,
                "det_labels": pr_trip,  # (sub_label, predicate, obj_label)
                "det_scores": score,
                "gt_boxes": gt_tboxes,
                "gt_labels": gt_trip,
            }
        )

    def _ap(self, c: int, rel: bool) -> tuple[float, int]:
        """``ap_eval`` for predicate ``c``; returns ``(AP, npos)``."""
        det_img: list[np.ndarray] = []
        det_idx: list[np.ndarray] = []
        det_conf: list[np.ndarray] = []
        gts: list[tuple[np.ndarray, np.ndarray]] = []
        npos = 0
        for im, rec in enumerate(self._images):
            sel = np.where(rec["det_labels"][:, 1] == c)[0]
            det_img.append(np.full(sel.shape[0], im, dtype=np.int64))
            det_idx.append(sel)
            det_conf.append(rec["det_scores"][sel])
            gsel = np.where(rec["gt_labels"][:, 1] == c)[0]
            gts.append((rec["gt_boxes"][gsel], rec["gt_labels"][gsel]))
            npos += gsel.shape[0]
        imgs = np.concatenate(det_img) if det_img else np.zeros(0, dtype=np.int64)
        idxs = np.concatenate(det_idx) if det_idx else np.zeros(0, dtype=np.int64)
        conf = np.concatenate(det_conf) if det_conf else np.zeros(0)
        order = np.argsort(-conf, kind="stable")
        visited = [np.zeros(g[0].shape[0], dtype=bool) for g in gts]
        nd = order.shape[0]
        tp = np.zeros(nd)
        fp = np.zeros(nd)
        for d, o in enumerate(order):
            im = int(imgs[o])
            rec = self._images[im]
            bb = rec["det_boxes"][idxs[o]]
            lbl = rec["det_labels"][idxs[o]]
            g_boxes, g_labels = gts[im]
            ovmax = -np.inf
            jmax = -1
            if g_boxes.shape[0] > 0:
                valid = (g_labels[:, 0] == lbl[0]) & (g_labels[:, 2] == lbl[2])
                if valid.any():
                    if rel:
                        ov = np.minimum(
                            _ap_bbox_iou(bb[:4], g_boxes[:, :4], self.ap_iou),
                            _ap_bbox_iou(bb[4:], g_boxes[:, 4:], self.ap_iou),
                        )
                    else:
                        ub = boxes_union(bb[None, :4], bb[None, 4:])[0]
                        ug = boxes_union(g_boxes[:, :4], g_boxes[:, 4:])
                        ov = _ap_bbox_iou(ub, ug, self.ap_iou)
                    ov = ov * valid
                    ovmax = float(np.max(ov))
                    jmax = int(np.argmax(ov))
                else:
                    ovmax = 0.0
            if ovmax > self.iou_thresh and not visited[im][jmax]:
                tp[d] = 1.0
                visited[im][jmax] = True
            else:
                fp[d] = 1.0
        tp_c = np.cumsum(tp)
        fp_c = np.cumsum(fp)
        recall = tp_c / (float(npos) + 1e-12)
        precision = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
        return voc_ap(recall, precision), npos

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in self.ks:
            out[f"R@{k}"] = float(self._matched[k]) / (float(self._gt_total) + 1e-12)
        for k in self.ks:
            per = [float(np.mean(d[k])) if d[k] else float("nan") for d in self._pred_recall]
            out[f"mR@{k}"] = float(sum(r for r in per if not math.isnan(r)) / self.num_predicates)
            out[f"per_predicate_R@{k}"] = per
        ap_rel: list[float] = []
        ap_phr: list[float] = []
        npos: list[int] = []
        for c in range(self.num_predicates):
            a_rel, n_c = self._ap(c, rel=True)
            a_phr, _ = self._ap(c, rel=False)
            ap_rel.append(a_rel)
            ap_phr.append(a_phr)
            npos.append(n_c)
        all_npos = sum(npos)
        if all_npos > 0:
            w_rel = float(sum(a * n / all_npos for a, n in zip(ap_rel, npos)))
            w_phr = float(sum(a * n / all_npos for a, n in zip(ap_phr, npos)))
        else:
            w_rel = w_phr = float("nan")
        out["wmAP_rel"] = w_rel
        out["wmAP_phr"] = w_phr
        out["mAP_rel"] = float(np.mean(ap_rel))
        out["mAP_phr"] = float(np.mean(ap_phr))
        out["score_wtd"] = 0.2 * out["R@50"] + 0.4 * w_rel + 0.4 * w_phr
        out["per_predicate_AP_rel"] = ap_rel
        out["per_predicate_AP_phr"] = ap_phr
        out["npos"] = npos
        out["num_images"] = self.num_images
        return out


# ----------------------------------------------------------------------------- object detection
def detection_ap50(
    gts: Sequence[Mapping[str, Any]],
    preds: Sequence[Mapping[str, Any]],
    categories: Sequence[str] | int,
    max_dets: int = 100,
) -> dict[str, Any]:
    """COCO box AP with pycocotools (EGTR reports ``AP50 = COCOeval.stats[1]``).

    ``gts[i]`` needs ``boxes``/``labels``; ``preds[i]`` needs ``boxes``/``labels`` and
    ``obj_scores`` (or ``scores``); only the ``max_dets`` best detections per image are kept.
    ``categories`` are the class names (index = label) or their number.  Boxes become COCO
    ``xywh`` as ``(x1, y1, x2 - x1, y2 - y1)``; image and annotation ids start at 1 (pycocotools
    treats annotation id 0 as "unmatched").  Returns ``{"AP50", "AP", "per_class_AP50"}``;
    classes without GT are NaN in ``per_class_AP50`` and ignored by the means, as in COCOeval;
    with no GT at all AP50/AP are NaN, with GT but no detection they are 0.0.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(gts) != len(preds):
        raise ValueError(f"gts and preds must have the same length, got {len(gts)} and {len(preds)}")
    names = [str(i) for i in range(categories)] if isinstance(categories, int) else [str(c) for c in categories]
    num_classes = len(names)
    anns: list[dict[str, Any]] = []
    dets: list[dict[str, Any]] = []
    for im, (gt, pred) in enumerate(zip(gts, preds)):
        g_boxes = _as_boxes(gt["boxes"], "gt boxes")
        g_labels = np.asarray(gt["labels"], dtype=np.int64).reshape(-1)
        for box, lbl in zip(g_boxes, g_labels):
            if not 0 <= lbl < num_classes:
                raise ValueError(f"gt label {lbl} outside [0, {num_classes})")
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            anns.append(
                {"id": len(anns) + 1, "image_id": im + 1, "category_id": int(lbl) + 1,
                 "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h, "iscrowd": 0}
            )
        p_boxes = _as_boxes(pred["boxes"], "pred boxes")
        p_labels = np.asarray(pred["labels"], dtype=np.int64).reshape(-1)
        p_scores = np.asarray(pred["obj_scores"] if "obj_scores" in pred else pred["scores"], dtype=np.float64).reshape(-1)
        for j in np.argsort(-p_scores, kind="stable")[:max_dets]:
            if not 0 <= p_labels[j] < num_classes:
                raise ValueError(f"predicted label {p_labels[j]} outside [0, {num_classes})")
            box = p_boxes[j]
            dets.append(
                {"image_id": im + 1, "category_id": int(p_labels[j]) + 1, "score": float(p_scores[j]),
                 "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]}
            )
    gt_classes = {a["category_id"] - 1 for a in anns}
    if not anns:
        return {"AP50": float("nan"), "AP": float("nan"), "per_class_AP50": [float("nan")] * num_classes}
    if not dets:
        return {"AP50": 0.0, "AP": 0.0, "per_class_AP50": [0.0 if c in gt_classes else float("nan") for c in range(num_classes)]}

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": i + 1} for i in range(len(gts))],
            "categories": [{"id": c + 1, "name": n} for c, n in enumerate(names)],
            "annotations": anns,
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    t50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    cat_ids = list(ev.params.catIds)
    per_class: list[float] = []
    for c in range(num_classes):
        pc = precision[t50, :, cat_ids.index(c + 1), 0, -1]
        pc = pc[pc > -1]
        per_class.append(float(pc.mean()) if pc.size else float("nan"))
    return {"AP50": float(ev.stats[1]), "AP": float(ev.stats[0]), "per_class_AP50": per_class}


# ----------------------------------------------------------------------------- reporting
def mean_recall_table(summary: Mapping[str, Any], predicate_names: Sequence[str]) -> list[tuple[str, float, float]]:
    """Rows ``(predicate name, R@50, R@100)`` from a :meth:`SGRecall.summary` (NaN = unseen)."""
    r50 = list(summary["per_predicate_R@50"])
    r100 = list(summary["per_predicate_R@100"])
    if not (len(r50) == len(r100) == len(predicate_names)):
        raise ValueError(f"{len(predicate_names)} predicate names for {len(r50)} per-predicate recalls")
    return [(str(n), float(a), float(b)) for n, a, b in zip(predicate_names, r50, r100)]
