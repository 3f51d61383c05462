"""Sequential-recommendation data (FaNC issue): S3-Rec loaders, leave-one-out split, ranking metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data.stages.preprocess_seqrec import DataFormatError, preprocess
from models.seqrec.data import leave_one_out, left_pad, load_sequences
from models.seqrec.metrics import ranking_metrics, ranks_from_scores, sampled_ranks
from tests.conftest import mirror_dir

SPEC = {  # fanc.md §4.2: users, items, interactions
    "Beauty": (22363, 12101, 198502),
    "Sports_and_Outdoors": (35598, 18357, 296337),
    "Toys_and_Games": (19412, 11924, 167597),
    "Yelp": (30431, 20033, 316354),
}


@pytest.mark.mirror
def test_real_sequence_files_match_the_spec(tmp_path):
    raw = mirror_dir("s3rec_sequences")
    stats = preprocess(raw, tmp_path / "seq", list(SPEC))
    for name, (users, items, inter) in SPEC.items():
        s = stats[name]
        assert (s["users"], s["items"], s["interactions"]) == (users, items, inter), name
        assert s["mean_length"] == pytest.approx(inter / users, abs=1e-4)
    seqs, n_items = load_sequences(tmp_path / "seq", "Beauty")
    assert n_items == 12101 and len(seqs) == 22363 and min(len(s) for s in seqs) >= 5
    split = leave_one_out(seqs, n_items, max_len=50)
    assert split.train_inputs.shape == (22363, 50) and int(split.test.targets.max()) <= n_items


def test_leave_one_out_on_a_hand_example():
    seqs = [np.array([5, 6, 7, 8, 9]), np.array([1, 2, 3])]
    s = leave_one_out(seqs, n_items=9, max_len=4)
    assert s.test.targets.tolist() == [9, 3] and s.valid.targets.tolist() == [8, 2]
    assert s.test.inputs.tolist() == [[5, 6, 7, 8], [0, 0, 1, 2]]
    assert s.valid.inputs.tolist() == [[0, 5, 6, 7], [0, 0, 0, 1]]
    # training never sees the validation or test targets: inputs s1..s_{n-3}, targets s2..s_{n-2}
    assert s.train_inputs.tolist() == [[0, 0, 5, 6], [0, 0, 0, 0]]
    assert s.train_targets.tolist() == [[0, 0, 6, 7], [0, 0, 0, 0]]
    assert left_pad([np.arange(1, 8)], 3).tolist() == [[5, 6, 7]]  # keeps the most recent items


def test_bad_sequence_file_is_named(tmp_path):
    (tmp_path / "X.txt").write_text("1 1 2 3 4\n2 5 x 7\n")
    with pytest.raises(DataFormatError, match=r"X\.txt:2: field 'items'"):
        preprocess(tmp_path, tmp_path / "out", ["X"])
    assert not (tmp_path / "out").exists()


def test_full_ranking_metrics_on_hand_computed_ranks():
    #            pad  1    2    3    4    5
    scores = torch.tensor([[9.0, 0.1, 0.5, 0.5, 0.9, 0.2],   # target 2: 4 higher, 3 ties -> rank 3
                           [9.0, 0.3, 0.3, 0.3, 0.3, 0.3],   # constant scores: target 1 -> rank 5
                           [0.0, 0.9, 0.1, 0.2, 0.3, 0.4]])  # target 1 is best -> rank 1
    targets = torch.tensor([2, 1, 1])
    ranks = ranks_from_scores(scores, targets)
    assert ranks.tolist() == [3, 5, 1]
    m = ranking_metrics(ranks, ks=(1, 3, 5))
    assert m["hr_at_1"] == pytest.approx(1 / 3) and m["hr_at_3"] == pytest.approx(2 / 3) and m["hr_at_5"] == pytest.approx(1.0)
    assert m["ndcg_at_3"] == pytest.approx((1 / math.log2(4) + 1) / 3)
    assert m["ndcg_at_5"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(6) + 1) / 3)
    # masking the history removes consumed items from the candidates, never the target
    masked = ranks_from_scores(scores, targets, history=[np.array([4, 2]), np.array([1]), np.array([])])
    assert masked.tolist() == [2, 5, 1]


def test_sampled_ranks_only_use_unconsumed_negatives():
    scores = torch.zeros(1, 201)
    scores[0, 1:101] = 1.0  # items 1..100 would beat the target if they were sampled
    history = [np.arange(1, 101)]
    r = sampled_ranks(scores, torch.tensor([150]), history, n_negatives=50, seed=0)
    assert r.tolist() == [51]  # all negatives tie with the target (score 0): pessimistic rank
