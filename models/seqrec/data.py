"""Sequential-recommendation data: S3-Rec sequences and the leave-one-out split.

Per user with items s_1..s_n (time order): the last item s_n is the test target (input s_1..s_{n-1}),
s_{n-1} the validation target (input s_1..s_{n-2}), and s_1..s_{n-2} the training sequence, where every
position predicts the next item. Inputs keep the ``max_len`` most recent items, left-padded with 0
(item ids are 1..N; 0 is padding and never a candidate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def load_sequences(processed_dir: str | Path, dataset: str) -> tuple[list[np.ndarray], int]:
    """The users' item sequences (time order) and the number of items N."""
    path = Path(processed_dir) / f"{dataset}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run `dvc repro preprocess_seqrec` first")
    df = pd.read_parquet(path)
    seqs = [np.asarray(s, dtype=np.int64) for s in df["items"]]
    return seqs, int(max(int(s.max()) for s in seqs))


def left_pad(seqs: list[np.ndarray], max_len: int) -> torch.Tensor:
    """(U, max_len) int64: the last ``max_len`` items of each sequence, right-aligned, 0-padded."""
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for r, s in enumerate(seqs):
        tail = s[-max_len:]
        if len(tail):
            out[r, -len(tail):] = tail
    return torch.from_numpy(out)


@dataclass
class EvalSplit:
    """Inputs (U, max_len), targets (U,), and each user's full history before the target (for masking)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    history: list[np.ndarray]


@dataclass
class LeaveOneOut:
    n_items: int
    train_inputs: torch.Tensor  # (U, max_len): s_1..s_{n-3}, right-aligned
    train_targets: torch.Tensor  # (U, max_len): s_2..s_{n-2}, aligned with the inputs (0 = no target)
    valid: EvalSplit
    test: EvalSplit


def leave_one_out(seqs: list[np.ndarray], n_items: int, max_len: int = 50) -> LeaveOneOut:
    short = [i for i, s in enumerate(seqs) if len(s) < 3]
    if short:
        raise ValueError(f"{len(short)} users have fewer than 3 items (first: user index {short[0]}); leave-one-out needs 3")
    train = [s[:-2] for s in seqs]
    return LeaveOneOut(
        n_items=n_items,
        train_inputs=left_pad([s[:-1] for s in train], max_len),
        train_targets=left_pad([s[1:] for s in train], max_len),
        valid=EvalSplit(left_pad([s[:-2] for s in seqs], max_len), torch.as_tensor([int(s[-2]) for s in seqs]), [s[:-2] for s in seqs]),
        test=EvalSplit(left_pad([s[:-1] for s in seqs], max_len), torch.as_tensor([int(s[-1]) for s in seqs]), [s[:-1] for s in seqs]),
    )
