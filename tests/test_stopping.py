"""The shared stopping rule: patience on a validation metric under a fixed maximum, and the exploration budget."""

import pytest

from models.common.stopping import StopRule


def h(score, secs=1.0):
    return {"valid_ndcg_at_10": score, "val_loss": -score, "train_seconds": secs, "valid_seconds": 1.0}


def test_patience_counts_from_the_first_best_epoch():
    rule = StopRule("valid_ndcg_at_10", "max", patience=2, max_epochs=100)
    assert rule.reason([h(0.1), h(0.3), h(0.3)]) is None  # a tie is not an improvement, but only 1 epoch since
    assert rule.reason([h(0.1), h(0.3), h(0.3), h(0.2)]) == "early_stopping"
    assert rule.summary([h(0.1), h(0.3), h(0.3), h(0.2)])["best_epoch"] == 2
    low = StopRule("val_loss", "min", patience=2, max_epochs=100)  # the same history as losses
    assert low.reason([h(0.1), h(0.3), h(0.3), h(0.2)]) == "early_stopping"
    assert low.best_index([h(0.1), h(0.3), h(0.2)]) == 1


def test_max_epochs_and_reproducibility():
    rule = StopRule("valid_ndcg_at_10", "max", patience=10, max_epochs=3)
    assert rule.reason([h(0.1), h(0.2)]) is None
    assert rule.reason([h(0.1), h(0.2), h(0.3)]) == "max_epochs"
    assert rule.reproducible and rule.summary([h(0.1)])["stopped_by"] == "interrupted"
    assert "budget_s" not in rule.summary([h(0.1)])


def test_time_budget_is_exploration_only():
    rule = StopRule("valid_ndcg_at_10", "max", patience=10, max_epochs=100, budget_s=25.0)
    assert not rule([h(0.1, 10.0), h(0.2, 10.0)])  # 22 s spent
    assert rule.reason([h(0.1, 10.0), h(0.2, 10.0), h(0.3, 10.0)]) == "time_budget"  # 33 s, though improving
    assert rule.reason([h(0.1, 10.0)], spent_before=20.0) == "time_budget"  # an earlier fit's seconds count
    summary = rule.summary([h(0.1, 10.0), h(0.2, 10.0), h(0.3, 10.0)])
    assert summary["reproducible"] is False and summary["budget_s"] == 25.0


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="mode"):
        StopRule("m", "best", 1, 1)
    with pytest.raises(ValueError, match="patience"):
        StopRule("m", "max", 0, 1)
