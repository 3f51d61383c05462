"""EGTR evaluation (models/egtr/metrics.py): hand-made cases whose answers are worked out in comments."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from models.egtr.metrics import (
    OIEvaluator,
    SGRecall,
    bbox_overlaps,
    detection_ap50,
    mean_recall_table,
    sgdet_triplets,
)
from tests.conftest import mirror_dir

# Well separated 100x100 boxes (Motifs IoU between different ones is 0, with itself 1).
A = [0.0, 0.0, 99.0, 99.0]
B = [200.0, 200.0, 299.0, 299.0]
C = [400.0, 0.0, 499.0, 99.0]
D = [200.0, 0.0, 299.0, 99.0]


def _pred(boxes, labels, rel, obj_scores=None):
    n = len(boxes)
    return {
        "boxes": np.asarray(boxes, dtype=float).reshape(n, 4),
        "labels": np.asarray(labels, dtype=int),
        "obj_scores": np.ones(n) if obj_scores is None else np.asarray(obj_scores, dtype=float),
        "rel_scores": np.asarray(rel, dtype=float),
    }


def _gt(boxes, labels, rels):
    return {
        "boxes": np.asarray(boxes, dtype=float).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=int),
        "rels": np.asarray(rels, dtype=int).reshape(-1, 3),
    }


# ----------------------------------------------------------------------------- sgdet_triplets
def _three_object_pred():
    # obj_scores [1.0, 0.5, 0.8] -> pair scores (0,1)=.5 (0,2)=.8 (1,0)=.5 (1,2)=.4 (2,0)=.8 (2,1)=.4
    rel = np.zeros((3, 3, 2))
    rel[0, 1] = [0.2, 0.6]
    rel[0, 2] = [0.5, 0.1]
    rel[1, 0] = [0.9, 0.0]
    rel[1, 2] = [0.3, 0.3]
    rel[2, 0] = [0.1, 0.4]
    rel[2, 1] = [0.0, 0.2]
    rel[[0, 1, 2], [0, 1, 2]] = 1.0  # diagonal: would be score 1.0*s_i^2, must never appear
    return _pred([A, B, C], [0, 1, 2], rel, obj_scores=[1.0, 0.5, 0.8])


def test_sgdet_triplets_graph_constraint_ordering_and_no_diagonal():
    # max_k rel * pair: (0,1)=.6*.5=.30 p1, (0,2)=.5*.8=.40 p0, (1,0)=.9*.5=.45 p0,
    # (1,2)=.3*.4=.12 p0 (tie -> first index), (2,0)=.4*.8=.32 p1, (2,1)=.2*.4=.08 p1
    sub, obj, prd, score = sgdet_triplets(_three_object_pred(), top_k=4, graph_constraint=True)
    assert list(zip(sub.tolist(), obj.tolist(), prd.tolist())) == [(1, 0, 0), (0, 2, 0), (2, 0, 1), (0, 1, 1)]
    np.testing.assert_allclose(score, [0.45, 0.40, 0.32, 0.30])
    sub, obj, prd, score = sgdet_triplets(_three_object_pred(), top_k=None, graph_constraint=True)
    assert len(sub) == 6 and np.all(sub != obj)  # 3*2 off-diagonal pairs only
    assert np.all(np.diff(score) <= 0)
    assert (sub[-2:].tolist(), obj[-2:].tolist(), prd[-2:].tolist()) == ([1, 2], [2, 1], [0, 1])


def test_sgdet_triplets_no_graph_constraint_ordering_and_no_diagonal():
    # rel * pair: (1,0,0)=.45 (0,2,0)=.40 (2,0,1)=.32 (0,1,1)=.30 (1,2,0)=.12 (1,2,1)=.12 (0,1,0)=.10 ...
    sub, obj, prd, score = sgdet_triplets(_three_object_pred(), top_k=6, graph_constraint=False)
    assert list(zip(sub.tolist(), obj.tolist(), prd.tolist())) == [
        (1, 0, 0), (0, 2, 0), (2, 0, 1), (0, 1, 1), (1, 2, 0), (1, 2, 1)
    ]
    np.testing.assert_allclose(score, [0.45, 0.40, 0.32, 0.30, 0.12, 0.12])
    sub, obj, _, score = sgdet_triplets(_three_object_pred(), top_k=None, graph_constraint=False)
    assert len(sub) == 12 and np.all(sub != obj) and np.all(np.diff(score) <= 0)


# ----------------------------------------------------------------------------- SGRecall
def test_graph_constraint_vs_no_constraint_two_gt_predicates_same_pair():
    # GT: the pair (0,1) carries predicates 0 and 1. rel(0,1)=[.9,.8,.1], rel(1,0)=.05 everywhere.
    gt = _gt([A, B], [1, 2], [[0, 1, 0], [0, 1, 1]])
    rel = np.zeros((2, 2, 3))
    rel[0, 1] = [0.9, 0.8, 0.1]
    rel[1, 0] = [0.05, 0.05, 0.05]
    pred = _pred([A, B], [1, 2], rel)
    # with constraint: (0,1) gets only argmax = predicate 0 -> 1 of 2 GT -> R = 0.5; mR = (1 + 0)/3
    single = SGRecall(3, graph_constraint=True)
    assert single.add(gt, pred) == {"R@20": 0.5, "R@50": 0.5, "R@100": 0.5}
    s = single.summary()
    assert (s["R@20"], s["R@50"], s["R@100"]) == (0.5, 0.5, 0.5)
    assert s["mR@20"] == pytest.approx(1.0 / 3.0, abs=1e-12)
    assert s["per_predicate_R@100"][:2] == [1.0, 0.0] and math.isnan(s["per_predicate_R@100"][2])
    # without constraint: (0,1,0)=.9 and (0,1,1)=.8 are ranks 1 and 2 -> both matched -> R = 1; mR = 2/3
    multi = SGRecall(3, graph_constraint=False)
    multi.add(gt, pred)
    m = multi.summary()
    assert (m["R@20"], m["R@50"], m["R@100"]) == (1.0, 1.0, 1.0)
    assert m["mR@20"] == pytest.approx(2.0 / 3.0, abs=1e-12)


@pytest.mark.parametrize(("n_distractors", "expected"), [(20, (0.0, 1.0, 1.0)), (19, (1.0, 1.0, 1.0))])
def test_recall_at_k_boundary_graph_constraint(n_distractors, expected):
    # Objects 0 (A) and 1 (B) form the GT triplet (0, 1, pred 0) scored 0.5. Every distractor d
    # (far-away box, label 5) forms the pair (d, 0) scored 0.9, so with 20 distractors the GT
    # pair is ranked 21st -> missed by R@20, found by R@50; with 19 it is 20th -> found by R@20.
    n = 2 + n_distractors
    boxes = [A, B] + [[1000.0 + 10 * d, 1000.0, 1005.0 + 10 * d, 1005.0] for d in range(n_distractors)]
    labels = [0, 1] + [5] * n_distractors
    rel = np.zeros((n, n, 2))
    rel[0, 1, 0] = 0.5
    rel[2:, 0, 0] = 0.9
    ev = SGRecall(2, graph_constraint=True)
    out = ev.add(_gt([A, B], [0, 1], [[0, 1, 0]]), _pred(boxes, labels, rel))
    assert (out["R@20"], out["R@50"], out["R@100"]) == expected


def test_recall_at_k_boundary_no_graph_constraint():
    # One pair, 30 predicates with scores 1 - 0.01k; the GT predicate is 20 -> its triplet has
    # rank 21 (predicates 0..19 score higher; the reverse pair scores 0) -> R@20 = 0, R@50 = 1.
    rel = np.zeros((2, 2, 30))
    rel[0, 1] = 1.0 - 0.01 * np.arange(30)
    ev = SGRecall(30, graph_constraint=False)
    out = ev.add(_gt([A, B], [0, 1], [[0, 1, 20]]), _pred([A, B], [0, 1], rel))
    assert (out["R@20"], out["R@50"], out["R@100"]) == (0.0, 1.0, 1.0)


def test_iou_convention_is_motifs_plus_one():
    # [0,0,9,9] vs [0,0,9,4]: +1 widths -> inter 10*5 = 50, union 100 + 50 - 50 = 100 -> 0.5
    # (without +1 it would be 9*4 / 81 = 0.444 < 0.5).
    assert bbox_overlaps([[0, 0, 9, 9]], [[0, 0, 9, 4]])[0, 0] == pytest.approx(0.5, abs=1e-12)
    gt = _gt([[0, 0, 9, 9], B], [0, 1], [[0, 1, 0]])
    rel = np.zeros((2, 2, 1))
    rel[0, 1, 0] = 0.9
    ev = SGRecall(1)
    assert ev.add(gt, _pred([[0, 0, 9, 4], B], [0, 1], rel))["R@20"] == 1.0  # IoU exactly 0.5 -> match


def test_low_iou_or_wrong_label_or_wrong_predicate_gives_no_match():
    gt = _gt([A, B], [0, 1], [[0, 1, 0]])
    rel = np.zeros((2, 2, 2))
    rel[0, 1, 0] = 0.9
    # object box shifted by 50 px: inter 50*100 = 5000, union 15000 -> IoU 1/3 < 0.5 (subject exact)
    shifted = [250.0, 200.0, 349.0, 299.0]
    assert bbox_overlaps([B], [shifted])[0, 0] == pytest.approx(1.0 / 3.0)
    cases = {
        "iou": _pred([A, shifted], [0, 1], rel),
        "label": _pred([A, B], [0, 3], rel),
    }
    wrong_pred = rel.copy()
    wrong_pred[0, 1] = [0.1, 0.9]
    cases["predicate"] = _pred([A, B], [0, 1], wrong_pred)
    for name, pred in cases.items():
        ev = SGRecall(2)
        assert ev.add(gt, pred) == {"R@20": 0.0, "R@50": 0.0, "R@100": 0.0}, name
    ev = SGRecall(2)
    assert ev.add(gt, _pred([A, B], [0, 1], rel))["R@20"] == 1.0  # control: the correct one matches


def test_mean_recall_divides_by_all_predicates():
    # 3 predicates, predicate 2 never occurs.
    # image 1: GT (0,1,p0) predicted correctly -> recall_p0 = 1.0
    # image 2: GT (0,1,p1), (0,2,p1); only (0,1) gets p1, (0,2) argmax of zeros = p0 -> recall_p1 = 0.5
    # R = mean(1.0, 0.5) = 0.75;  mR = (1.0 + 0.5) / 3 = 0.5  (not (1.0 + 0.5) / 2 = 0.75)
    ev = SGRecall(3)
    rel1 = np.zeros((2, 2, 3))
    rel1[0, 1, 0] = 0.9
    ev.add(_gt([A, B], [0, 1], [[0, 1, 0]]), _pred([A, B], [0, 1], rel1))
    rel2 = np.zeros((3, 3, 3))
    rel2[0, 1, 1] = 0.9
    ev.add(_gt([A, B, C], [0, 1, 2], [[0, 1, 1], [0, 2, 1]]), _pred([A, B, C], [0, 1, 2], rel2))
    ev.add(_gt([A], [0], np.zeros((0, 3))), _pred([A], [0], np.zeros((1, 1, 3))))  # no GT rel: skipped
    s = ev.summary()
    for k in (20, 50, 100):
        assert s[f"R@{k}"] == pytest.approx(0.75, abs=1e-12)
        assert s[f"mR@{k}"] == pytest.approx(0.5, abs=1e-12)
    assert s["per_predicate_R@50"][:2] == [1.0, 0.5] and math.isnan(s["per_predicate_R@50"][2])
    assert (s["num_images"], s["num_skipped"]) == (2, 1)
    rows = mean_recall_table(s, ["a", "b", "c"])
    assert rows[:2] == [("a", 1.0, 1.0), ("b", 0.5, 0.5)] and rows[2][0] == "c" and math.isnan(rows[2][1])


def test_duplicate_gt_triplets_count_separately():
    # Two identical GT triplets; one prediction matches both (official union of GT indices) -> 2/2.
    gt = _gt([A, B], [0, 1], [[0, 1, 0], [0, 1, 0]])
    rel = np.zeros((2, 2, 1))
    rel[0, 1, 0] = 0.9
    ev = SGRecall(1)
    assert ev.add(gt, _pred([A, B], [0, 1], rel))["R@20"] == 1.0
    # ... and a miss misses both: image recall 0, mean (1 + 0)/2
    ev.add(gt, _pred([A, B], [1, 1], rel))
    assert ev.summary()["R@100"] == 0.5


@pytest.mark.mirror
def test_vg150_label_space_mean_recall_divides_by_50():
    meta = json.loads((mirror_dir("vg150_meta") / "VG-SGG-dicts-with-attri.json").read_text())
    predicate_names = [meta["idx_to_predicate"][str(i)] for i in range(1, len(meta["idx_to_predicate"]) + 1)]
    assert len(predicate_names) == 50 and len(meta["idx_to_label"]) == 150
    p = {name: meta["predicate_to_idx"][name] - 1 for name in ("on", "has", "wearing")}  # 0-based
    o = {name: meta["label_to_idx"][name] - 1 for name in ("man", "street", "hand")}
    ev = SGRecall(len(predicate_names))
    # image 1: (man on street) predicted as such -> recall_on = 1
    rel = np.zeros((2, 2, 50))
    rel[0, 1, p["on"]] = 0.8
    ev.add(_gt([A, B], [o["man"], o["street"]], [[0, 1, p["on"]]]), _pred([A, B], [o["man"], o["street"]], rel))
    # image 2: (man has hand) predicted as (man wearing hand) -> recall_has = 0
    rel = np.zeros((2, 2, 50))
    rel[0, 1, p["wearing"]] = 0.8
    rel[0, 1, p["has"]] = 0.7
    ev.add(_gt([A, B], [o["man"], o["hand"]], [[0, 1, p["has"]]]), _pred([A, B], [o["man"], o["hand"]], rel))
    s = ev.summary()
    # R = mean(1, 0) = 0.5; mR = (1 + 0) / 50 = 0.02 (48 predicates unseen still count in the denominator)
    assert s["R@50"] == 0.5
    assert s["mR@50"] == pytest.approx(1.0 / 50.0, abs=1e-12)
    assert sum(not math.isnan(r) for r in s["per_predicate_R@50"]) == 2
    rows = mean_recall_table(s, predicate_names)
    assert rows[p["on"]] == ("on", 1.0, 1.0) and rows[p["has"]] == ("has", 0.0, 0.0)


# ----------------------------------------------------------------------------- Open Images
W = [0.0, 0.0, 299.0, 99.0]  # = union(A, D)


def _oi_case() -> OIEvaluator:
    ev = OIEvaluator(num_predicates=2)
    # image 1 GT: objects 0 A(l0), 1 B(l1), 2 C(l1), 3 D(l2); rels (0,1,p0) (0,2,p0) (0,3,p1)
    gt1 = _gt([A, B, C, D], [0, 1, 1, 2], [[0, 1, 0], [0, 2, 0], [0, 3, 1]])
    # prediction: same 4 objects + 4 = W(l0), 5 = W(l2); all obj scores 1 -> triplet score = rel
    rel = np.zeros((6, 6, 2))  # diagonal and unused pairs 0 -> dropped by the 1e-5 filter
    rel[0, 1] = [0.9, 0.0]  # (0,1,p0) .9  TP rel & phr
    rel[0, 2] = [0.3, 0.0]  # (0,2,p0) .3  TP rel & phr
    rel[1, 2] = [0.5, 0.0]  # (1,2,p0) .5  FP (labels (1,1) not in GT)
    rel[0, 3] = [0.0, 0.6]  # (0,3,p1) .6  TP rel; FP phr (GT already taken by the .8 one)
    rel[4, 5] = [0.0, 0.8]  # (4,5,p1) .8  boxes W,W: IoU(W,A) = IoU(W,D) = 1/3 -> FP rel; union W = GT union -> TP phr
    ev.add(gt1, _pred([A, B, C, D, W, W], [0, 1, 1, 2, 0, 2], rel))
    # image 2 GT: (0,1,p0); predicted only with the wrong predicate p1 (.7) -> miss, FP for p1
    rel2 = np.zeros((2, 2, 2))
    rel2[0, 1] = [0.0, 0.7]
    ev.add(_gt([A, B], [0, 1], [[0, 1, 0]]), _pred([A, B], [0, 1], rel2))
    return ev


def test_oi_metrics_hand_computed():
    s = _oi_case().summary()
    # R@50 (micro): image 1 matches 3/3, image 2 0/1 -> 3/4
    assert s["R@50"] == pytest.approx(0.75, abs=1e-6)
    assert s["npos"] == [3, 1]
    # p0 (npos 3), rel and phr: .9 TP, .5 FP, .3 TP -> rec [1/3,1/3,2/3], prec [1,1/2,2/3]
    #   envelope -> AP = 1/3*1 + 1/3*2/3 = 5/9
    # p1 (npos 1), rel: .8 FP, .7 FP, .6 TP -> rec [0,0,1], prec [0,0,1/3] -> AP = 1/3
    # p1 phr: .8 TP, .7 FP, .6 FP -> rec [1,1,1], prec [1,1/2,1/3] -> AP = 1
    np.testing.assert_allclose(s["per_predicate_AP_rel"], [5 / 9, 1 / 3], atol=1e-6)
    np.testing.assert_allclose(s["per_predicate_AP_phr"], [5 / 9, 1.0], atol=1e-6)
    # wmAP_rel = (5/9*3 + 1/3*1)/4 = 1/2 ; wmAP_phr = (5/9*3 + 1*1)/4 = 2/3
    assert s["wmAP_rel"] == pytest.approx(0.5, abs=1e-6)
    assert s["wmAP_phr"] == pytest.approx(2 / 3, abs=1e-6)
    assert s["mAP_rel"] == pytest.approx((5 / 9 + 1 / 3) / 2, abs=1e-6)
    # score_wtd = 0.2*0.75 + 0.4*0.5 + 0.4*2/3 = 0.61666...
    assert s["score_wtd"] == pytest.approx(0.2 * 0.75 + 0.4 * 0.5 + 0.4 * 2 / 3, abs=1e-6)
    # mR@50: p0 per image 2/2 and 0/1 -> 0.5; p1 1/1 -> 1.0; (0.5 + 1.0)/2 = 0.75
    assert s["mR@50"] == pytest.approx(0.75, abs=1e-6)


def test_oi_top2_predicates_and_score_threshold():
    gt = _gt([A, B], [0, 1], [[0, 1, 2]])
    # GT predicate is the 3rd best of its pair -> not among prd_k = 2 -> R@50 = 0
    rel = np.zeros((2, 2, 3))
    rel[0, 1] = [0.5, 0.4, 0.3]
    ev = OIEvaluator(3)
    ev.add(gt, _pred([A, B], [0, 1], rel))
    assert ev.summary()["R@50"] == 0.0
    # 2nd best -> kept -> R@50 = 1
    rel[0, 1] = [0.5, 0.3, 0.4]
    ev = OIEvaluator(3)
    ev.add(gt, _pred([A, B], [0, 1], rel))
    assert ev.summary()["R@50"] == pytest.approx(1.0, abs=1e-9)
    # score 0.01 * 0.01 * 0.04 = 4e-6 <= 1e-5 -> dropped -> R@50 = 0
    ev = OIEvaluator(3)
    ev.add(gt, _pred([A, B], [0, 1], rel * 0.1, obj_scores=[0.01, 0.01]))
    assert ev.summary()["R@50"] == 0.0


# ----------------------------------------------------------------------------- detection AP
def test_detection_ap50_perfect_and_low_iou():
    gts = [
        {"boxes": np.array([[0.0, 0.0, 100.0, 100.0], [200.0, 200.0, 300.0, 300.0]]), "labels": np.array([0, 1])},
        {"boxes": np.array([[10.0, 10.0, 50.0, 60.0]]), "labels": np.array([0])},
    ]
    perfect = [
        {"boxes": g["boxes"].copy(), "labels": g["labels"].copy(), "obj_scores": np.array([0.9, 0.8][: len(g["labels"])])}
        for g in gts
    ]
    res = detection_ap50(gts, perfect, ["cat", "dog"])
    assert res["AP50"] == pytest.approx(1.0) and res["AP"] == pytest.approx(1.0)
    assert res["per_class_AP50"] == pytest.approx([1.0, 1.0])
    # class 1 detection [200,200,300,240]: IoU = 100*40 / (100*100) = 0.4 -> AP50 for class 1 is 0
    low = [dict(p) for p in perfect]
    low[0] = dict(low[0], boxes=np.array([[0.0, 0.0, 100.0, 100.0], [200.0, 200.0, 300.0, 240.0]]))
    res = detection_ap50(gts, low, 2)
    assert res["per_class_AP50"] == pytest.approx([1.0, 0.0])
    assert res["AP50"] == pytest.approx(0.5)
