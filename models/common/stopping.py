"""Stopping rules shared by the training recipes, each able to say why a fit stopped.

The reproducible rule, the default of every committed result: early stopping on a validation metric (``patience``
epochs without a strictly better value; the first best epoch counts) under a fixed maximum number of epochs. It
reads only the checkpointed per-epoch history, so a resumed run stops where an uninterrupted one would, on any
machine.

A wall-clock budget (``budget_s`` > 0) is for exploration only: the number of epochs then depends on the machine's
speed, so the rule reports ``reproducible: False`` and the flows tag such a run ``reproducible=false``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

EARLY_STOPPING, MAX_EPOCHS, TIME_BUDGET = "early_stopping", "max_epochs", "time_budget"


@dataclass(frozen=True)
class StopRule:
    """Early stopping on ``metric`` (``mode`` max or min) with ``patience`` under ``max_epochs``; optional budget."""

    metric: str
    mode: Literal["max", "min"]
    patience: int
    max_epochs: int
    budget_s: float = 0.0  # exploration only: summed ``time_keys`` of the history (so resumes count earlier epochs)
    time_keys: tuple[str, ...] = ("train_seconds", "valid_seconds")

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"StopRule.mode must be 'max' or 'min', got {self.mode!r}")
        if self.patience < 1 or self.max_epochs < 1 or self.budget_s < 0:
            raise ValueError(f"StopRule needs patience >= 1, max_epochs >= 1, budget_s >= 0; got {self}")

    @property
    def reproducible(self) -> bool:
        return not self.budget_s

    def best_index(self, history: Sequence[dict[str, float]]) -> int:
        """Index of the first epoch with the best ``metric``."""
        values = [h[self.metric] for h in history]
        best = max(values) if self.mode == "max" else min(values)
        return values.index(best)

    def spent(self, history: Sequence[dict[str, float]]) -> float:
        return sum(h.get(k, 0.0) for h in history for k in self.time_keys)

    def reason(self, history: Sequence[dict[str, float]], spent_before: float = 0.0) -> str | None:
        """Why a fit with this history stops now (``early_stopping``, ``time_budget``, ``max_epochs``), else None."""
        if not history:
            return None
        if len(history) - 1 - self.best_index(history) >= self.patience:
            return EARLY_STOPPING
        if self.budget_s and spent_before + self.spent(history) >= self.budget_s:
            return TIME_BUDGET
        if len(history) >= self.max_epochs:
            return MAX_EPOCHS
        return None

    def __call__(self, history: Sequence[dict[str, float]]) -> bool:
        return self.reason(history) is not None

    def summary(self, history: Sequence[dict[str, float]], stopped_by: str | None = None) -> dict:
        """The rule and its outcome, for the metrics file: what stopped the fit, the best epoch (1-based)."""
        out = {"metric": self.metric, "mode": self.mode, "patience": self.patience, "max_epochs": self.max_epochs,
               "epochs": len(history), "best_epoch": self.best_index(history) + 1 if history else 0,
               "stopped_by": stopped_by or self.reason(history) or "interrupted", "reproducible": self.reproducible}
        if self.budget_s:
            out["budget_s"] = self.budget_s
        return out
