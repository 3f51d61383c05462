"""MeLU's tiny preset: a small dataset in the official raw layout, preprocessed, and a config that trains on it in
seconds (tests, the contract test)."""

from __future__ import annotations

import json
import random
from pathlib import Path


def write_tiny_melu_raw(root: Path, n_users: int = 48, n_items: int = 60, seed: int = 0) -> Path:
    """A small dataset in the official MeLU raw layout (vocabularies, users.dat, movies_extrainfos.dat, states)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    vocab = {
        "m_gender.txt": ["M", "F"],
        "m_age.txt": ["1", "18", "25", "35", "45", "50", "56"],
        "m_occupation.txt": [str(i) for i in range(21)],
        "m_zipcode.txt": [f"{10000 + i}" for i in range(9)],
        "m_rate.txt": ["PG-13", "UNRATED", "NC-17", "PG", "G", "R"],
        "m_genre.txt": ["Animation", "Comedy", "nan", "Drama", "Action"],
        "m_director.txt": ["nan", "Dir A", "Dir B", "Dir C"],
        "m_actor.txt": ["nan", "Actor 1", "Actor 2", "Actor 3", "Actor 4", "Actor 5"],
    }
    for f, words in vocab.items():
        (root / f).write_text("\r\n".join(words), encoding="utf-8")
    users = [f"{u}::{rng.choice('MF')}::{rng.choice(vocab['m_age.txt'])}::{rng.randrange(21)}::{rng.choice(vocab['m_zipcode.txt'])}-1234" for u in range(1, n_users + 1)]
    (root / "users.dat").write_text("\n".join(users) + "\n", encoding="utf-8")
    movies = []
    for m in range(1, n_items + 1):
        genres = ", ".join(rng.sample(["Animation", "Comedy", "Drama", "Action"], rng.randint(1, 2))) if m % 7 else "N/A"
        director = rng.choice(["Dir A", "Dir B(co-director)", "Dir C", "N/A"])
        actors = ", ".join(rng.sample(vocab["m_actor.txt"][1:], rng.randint(1, 3)))
        year = 1990 + m % 10
        movies.append(f"{m}::Movie {m}::{year}::{rng.choice(vocab['m_rate.txt'])}::1 Jan {year}::{genres}::{director}::Writer::{actors}::Plot::http://poster")
    (root / "movies_extrainfos.dat").write_text("\n".join(movies) + "\n", encoding="utf-8")
    (root / "movies.dat").write_text("\n".join(f"{m}::Movie {m}::Drama" for m in range(1, n_items + 1)) + "\n")
    states = ["warm_state", "user_cold_state", "item_cold_state", "user_and_item_cold_state"]
    for s_i, state in enumerate(states):
        xs, ys = {}, {}
        for u in range(1 + s_i, n_users + 1, 2 if s_i else 1):
            n = rng.randint(8, 30)  # some users fall below the 13-rating threshold
            items = rng.sample(range(1, n_items + 1), n)
            xs[str(u)] = [str(i) for i in items]
            # ratings depend on the item so that a model can learn something
            ys[str(u)] = [min(5, max(1, (i % 5) + 1 + rng.choice([-1, 0, 0, 1]))) for i in items]
        (root / f"{state}.json").write_text(json.dumps(xs))
        (root / f"{state}_y.json").write_text(json.dumps(ys))
    return root


def tiny(root: Path) -> dict:
    """Write tiny raw + processed MeLU data under ``root``; the ``melu`` params section that trains on it."""
    from data.stages.preprocess_melu import preprocess
    from models.melu.config import MeluConfig

    raw = write_tiny_melu_raw(Path(root) / "raw")
    preprocess(raw, Path(root) / "processed")
    cfg = MeluConfig.tiny(data={"raw_dir": str(raw), "processed_dir": str(Path(root) / "processed")},
                          train={"epochs": 1, "checkpoint_dir": str(Path(root) / "ckpt"), "device": "cpu"},
                          outputs={"metrics_dir": str(Path(root) / "metrics"), "plots_dir": str(Path(root) / "plots")})
    return cfg.model_dump(mode="json")
