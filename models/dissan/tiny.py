"""DisSAN's tiny preset: SICK-format files of templated sentence pairs and 10-d word vectors, and a config that
trains on them in seconds (tests, the contract test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = ["a", "the", "dog", "cat", "man", "runs", "sleeps", "is", "not", "running", "sleeping", "animal", "person"]


def sick_rows(n: int, rng) -> list[str]:
    rows = []
    for i in range(n):
        subj = rng.choice(["dog", "cat", "man"])
        verb, ing = rng.choice([("runs", "running"), ("sleeps", "sleeping")])
        kind = i % 3
        hyp = [f"A {subj} is {ing}", f"The {subj} is not {ing}", f"A {'person' if subj == 'man' else 'animal'} is {'sleeping' if ing == 'running' else 'running'}"][kind]
        label = ["ENTAILMENT", "CONTRADICTION", "NEUTRAL"][kind]
        rows.append(f"{i + 1}\tA {subj} {verb}\t{hyp}\t3.0\t{label}")
    return rows


def write_tiny_nli(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """(raw dir holding sick/semeval2014_splits, word-vector file)."""
    rng = np.random.default_rng(seed)
    sick = Path(root) / "raw" / "sick" / "semeval2014_splits"
    sick.mkdir(parents=True, exist_ok=True)
    for name, n in (("SICK_train.txt", 240), ("SICK_trial.txt", 30), ("SICK_test_annotated.txt", 60)):
        (sick / name).write_text("\n".join(sick_rows(n, rng)) + "\n")
    vec = Path(root) / "vectors.txt"
    vec.write_text("\n".join(f"{w} " + " ".join(f"{x:.4f}" for x in rng.normal(size=10)) for w in WORDS) + "\n")
    return Path(root) / "raw", vec


def tiny(root: Path) -> dict:
    """Write tiny SICK files and vectors under ``root``; the ``dissan`` params section that trains on them."""
    from models.dissan.config import DissanConfig

    raw, vec = write_tiny_nli(root)
    return DissanConfig.model_validate({
        "data": {"raw_dir": str(raw), "vectors": str(vec)},
        "model": {"heads": 2, "classifier_hidden": 16, "lstm_hidden": 8, "dropout": 0.0},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.01, "device": "cpu", "checkpoint_dir": str(Path(root) / "ckpt")},
        "outputs": {"metrics_dir": str(Path(root) / "metrics"), "plots_dir": str(Path(root) / "plots")},
    }).model_dump(mode="json")
