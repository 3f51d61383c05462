"""MeLU preprocessing and episodes: the real mirror files (spec counts) and the tiny raw layout."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from data.stages.preprocess_melu import DataFormatError, preprocess
from models.melu.data import build_episodes, load_tables
from tests.conftest import mirror_dir, write_tiny_melu_raw

SPEC_STATES = {  # spec §4.2: users in file, ratings, users kept (13-100), ratings kept
    "warm_state": (4832, 640448, 2653, 121811),
    "user_cold_state": (1208, 163702, 668, 30478),
    "item_cold_state": (4769, 157456, 2863, 106814),
    "user_and_item_cold_state": (1197, 38603, 723, 26790),
}


@pytest.fixture(scope="module")
def real_melu(tmp_path_factory):
    raw = mirror_dir("melu_movielens")
    out = tmp_path_factory.mktemp("melu_real") / "processed"
    stats = preprocess(raw, out)
    return out, stats


@pytest.mark.mirror
def test_real_files_match_the_spec_counts(real_melu):
    out, stats = real_melu
    assert stats["vocab_sizes"] == {"gender": 2, "age": 7, "occupation": 21, "zip": 3402, "rate": 6, "genre": 25, "director": 2186, "actor": 7978}
    assert stats["users"] == 6040 and stats["items"] == 3881
    for state, (users, ratings, kept, kept_r) in SPEC_STATES.items():
        s = stats["states"][state]
        assert (s["users"], s["ratings"], s["users_kept"], s["ratings_kept"]) == (users, ratings, kept, kept_r), state
    assert sum(s["ratings"] for s in stats["states"].values()) == 1_000_209
    hist = pd.read_parquet(out / "ratings.parquet").rating.value_counts().sort_index().tolist()
    assert hist == [56174, 107557, 261197, 348971, 226310]  # ML-1M rating histogram


@pytest.mark.mirror
def test_real_items_parse_like_the_official_pipeline(real_melu):
    out, _ = real_melu
    items = pd.read_parquet(out / "items.parquet").set_index("movie_id")
    vocab = json.loads((out / "vocab.json").read_text())
    toy = items.loc[1]  # Toy Story: G; Animation, Adventure, Comedy; John Lasseter; 4 actors
    assert vocab["rate"][toy.rate] == "G"
    assert [vocab["genre"][i] for i in toy.genre] == ["Animation", "Adventure", "Comedy"]
    assert [vocab["director"][i] for i in toy.director] == ["John Lasseter"]
    assert [vocab["actor"][i] for i in toy.actor] == ["Tom Hanks", "Tim Allen", "Don Rickles", "Jim Varney"]
    assert all(len(b) > 0 for f in ("genre", "director", "actor") for b in items[f])


@pytest.mark.mirror
def test_real_episodes(real_melu):
    out, _ = real_melu
    tables = load_tables(out)
    for state, (_, _, kept, kept_r) in SPEC_STATES.items():
        ep = build_episodes(tables, state, seed=0)
        n_support = ep.support_mask.sum(1).numpy()
        assert len(ep) == kept and int(n_support.sum()) + 10 * kept == kept_r
        assert n_support.min() >= 3 and n_support.max() <= 90 and ep.query_items.shape == (kept, 10)


def test_episodes_are_seeded_and_partition_each_users_ratings(tiny_melu):
    _, processed = tiny_melu
    tables = load_tables(processed)
    a, b, c = (build_episodes(tables, "warm_state", seed=s) for s in (0, 0, 1))
    assert np.array_equal(a.query_items.numpy(), b.query_items.numpy())
    assert not np.array_equal(a.query_items.numpy(), c.query_items.numpy())
    r = tables.ratings[tables.ratings.state == "warm_state"]
    n = r.groupby("user_id").size()
    assert list(a.user_ids) == [u for u in r.drop_duplicates("user_id").user_id if 13 <= n[u] <= 100]
    u0 = a.user_ids[0]
    own = sorted(tables.item_ids[i] for i in r[r.user_id == u0].movie_id.map(tables.item_row))
    got = sorted(tables.item_ids[np.concatenate([a.support_items[0][a.support_mask[0]].numpy(), a.query_items[0].numpy()])])
    assert own == got  # support + query is exactly the user's ratings in the state


def test_bad_raw_file_is_named(tmp_path):
    raw = write_tiny_melu_raw(tmp_path / "raw")
    lines = (raw / "users.dat").read_text().splitlines()
    lines[2] = lines[2].replace("::M::", "::X::").replace("::F::", "::X::")
    (raw / "users.dat").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"users\.dat:3: field 'gender': value 'X'"):
        preprocess(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()
