"""The sequential recommenders' tiny preset: 120 short synthetic sequences (item i is usually followed by i + 1) in
the S3-Rec layout, preprocessed, and a config that trains on them in seconds (tests, the contract test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_sequences(raw: Path, users: int = 120, items: int = 15, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(1, users + 1):
        start = int(rng.integers(0, items))
        seq = [(start + j) % items + 1 for j in range(int(rng.integers(5, 9)))]
        lines.append(" ".join(map(str, [u, *seq])))
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "Beauty.txt").write_text("\n".join(lines) + "\n")
    return raw


def tiny(root: Path) -> dict:
    """Write tiny Beauty-named sequences under ``root``; the ``seqrec`` params section that trains on them."""
    from data.stages.preprocess_seqrec import preprocess
    from models.seqrec.config import SeqRecConfig

    root = Path(root)
    preprocess(write_tiny_sequences(root / "raw"), root / "processed", ["Beauty"])
    return SeqRecConfig.model_validate({
        "data": {"processed_dir": str(root / "processed"), "max_len": 8},
        "model": {"hidden": 8, "dropout": 0.0},
        "train": {"epochs": 1, "patience": 2, "batch_size": 32, "lr": 0.02, "device": "cpu", "checkpoint_dir": str(root / "ckpt")},
        "outputs": {"metrics_dir": str(root / "metrics"), "plots_dir": str(root / "plots")},
    }).model_dump(mode="json")
