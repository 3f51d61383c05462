"""DVC stage ``preprocess_melu``: the official MeLU MovieLens files -> compact id tables (parquet).

Instead of the official code's 10,246-wide dense int64 rows (~23 GB of pickles), each movie keeps one
rate id and three id lists (genre, director, actor), each user four ids, and every rating is one row of
``ratings.parquet`` (state, user_id, position in the state file, movie_id, rating). Episodes (the 13-100
filter, seeded shuffle, last 10 = query) are built from these tables at load time
(``models.melu.data.build_episodes``), so several episode seeds share one preprocessed copy.

Parsing rules of the official pipeline that are reproduced here:
- ``movies_extrainfos.dat`` fields are ``::``-separated; list fields are split on ", ";
- the official code reads the file with pandas, which turns the literal "N/A" into NaN, i.e. "nan",
  the entry that every vocabulary carries;
- director names lose parenthesised notes (regex ``\\([^()]*\\)``) before lookup;
- a multi-hot row has one active column per distinct member, so repeated members are de-duplicated;
- zip codes are the first 5 characters of the zip string.

Usage: ``python -m data.stages.preprocess_melu --raw data/raw/melu_movielens --out data/processed/melu``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

from pydantic import Field

from data.atomic import atomic_directory
from data.config import StrictConfig

STATES = ("warm_state", "user_cold_state", "item_cold_state", "user_and_item_cold_state")
VOCABS = {
    "gender": "m_gender.txt",
    "age": "m_age.txt",
    "occupation": "m_occupation.txt",
    "zip": "m_zipcode.txt",
    "rate": "m_rate.txt",
    "genre": "m_genre.txt",
    "director": "m_director.txt",
    "actor": "m_actor.txt",
}
_PAREN = re.compile(r"\([^()]*\)")


class DataFormatError(ValueError):
    """A raw file does not have the expected content; the message names file, line and field."""


def read_vocab(path: Path) -> list[str]:
    words = path.read_text(encoding="utf-8").splitlines()
    if not words:
        raise DataFormatError(f"{path}: empty vocabulary")
    return words


def _lookup(index: dict[str, int], value: str, file: Path, line: int, field: str) -> int:
    if value not in index:
        raise DataFormatError(f"{file}:{line}: field {field!r}: value {value!r} is not in the {field} vocabulary")
    return index[value]


def _na(value: str) -> str:
    return "nan" if value.strip() in ("N/A", "") else value


def parse_users(raw: Path, vocab: dict[str, list[str]]) -> pd.DataFrame:
    idx = {k: {w: i for i, w in enumerate(v)} for k, v in vocab.items()}
    path = raw / "users.dat"
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        f = line.split("::")
        if len(f) != 5:
            raise DataFormatError(f"{path}:{n}: expected 5 '::'-separated fields (UserID::Gender::Age::Occupation::Zip), got {len(f)}")
        rows.append(
            {
                "user_id": int(f[0]),
                "gender": _lookup(idx["gender"], f[1], path, n, "gender"),
                "age": _lookup(idx["age"], f[2], path, n, "age"),
                "occupation": _lookup(idx["occupation"], f[3], path, n, "occupation"),
                "zip": _lookup(idx["zip"], f[4][:5], path, n, "zip"),
            }
        )
    return pd.DataFrame(rows).astype({c: "int32" for c in ("user_id", "gender", "age", "occupation", "zip")})


def _bag(value: str, index: dict[str, int], path: Path, n: int, field: str, strip_paren: bool = False) -> list[int]:
    ids: list[int] = []
    for member in _na(value).split(", "):
        if strip_paren:
            member = _PAREN.sub("", member)
        i = _lookup(index, _na(member), path, n, field)
        if i not in ids:
            ids.append(i)
    return ids


def parse_items(raw: Path, vocab: dict[str, list[str]]) -> pd.DataFrame:
    idx = {k: {w: i for i, w in enumerate(v)} for k, v in vocab.items()}
    path = raw / "movies_extrainfos.dat"
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        f = line.split("::")
        if len(f) != 11:
            raise DataFormatError(f"{path}:{n}: expected 11 '::'-separated fields, got {len(f)}")
        if not f[2].isdigit():
            raise DataFormatError(f"{path}:{n}: field 'year': expected a 4-digit year, got {f[2]!r}")
        rows.append(
            {
                "movie_id": int(f[0]),
                "title": f[1],
                "year": int(f[2]),
                "rate": _lookup(idx["rate"], _na(f[3]), path, n, "rate"),
                "genre": _bag(f[5], idx["genre"], path, n, "genre"),
                "director": _bag(f[6], idx["director"], path, n, "director", strip_paren=True),
                "actor": _bag(f[8], idx["actor"], path, n, "actor"),
            }
        )
    return pd.DataFrame(rows).astype({"movie_id": "int32", "year": "int16", "rate": "int16"})


def parse_ratings(raw: Path, known_users: set[int], known_items: set[int]) -> pd.DataFrame:
    frames = []
    for state in STATES:
        px, py = raw / f"{state}.json", raw / f"{state}_y.json"
        xs, ys = json.loads(px.read_text()), json.loads(py.read_text())
        if list(xs) != list(ys):
            raise DataFormatError(f"{py}: user keys differ from {px} (same users in the same order expected)")
        users, pos, movies, ratings = [], [], [], []
        for uid, items in xs.items():
            ry = ys[uid]
            if len(items) != len(ry):
                raise DataFormatError(f"{py}: user {uid}: {len(ry)} ratings for {len(items)} movies in {px.name}")
            u = int(uid)
            if u not in known_users:
                raise DataFormatError(f"{px}: user {uid}: not in users.dat")
            for j, (m, r) in enumerate(zip(items, ry)):
                if int(m) not in known_items:
                    raise DataFormatError(f"{px}: user {uid}, position {j}: movie {m} is not in movies_extrainfos.dat")
                if not isinstance(r, int) or not 1 <= r <= 5:
                    raise DataFormatError(f"{py}: user {uid}, position {j}: rating must be an integer 1-5, got {r!r}")
            users.extend([u] * len(items))
            pos.extend(range(len(items)))
            movies.extend(int(m) for m in items)
            ratings.extend(ry)
        frames.append(pd.DataFrame({"state": state, "user_id": users, "pos": pos, "movie_id": movies, "rating": ratings}))
    df = pd.concat(frames, ignore_index=True)
    df["state"] = pd.Categorical(df["state"], categories=list(STATES))
    return df.astype({"user_id": "int32", "pos": "int32", "movie_id": "int32", "rating": "int8"})


def preprocess(raw: Path, out: Path, min_ratings: int = 13, max_ratings: int = 100) -> dict:
    vocab = {k: read_vocab(raw / f) for k, f in VOCABS.items()}
    users = parse_users(raw, vocab)
    items = parse_items(raw, vocab)
    ratings = parse_ratings(raw, set(users.user_id.tolist()), set(items.movie_id.tolist()))
    stats: dict = {"vocab_sizes": {k: len(v) for k, v in vocab.items()}, "users": len(users), "items": len(items), "states": {}}
    for state, g in ratings.groupby("state", observed=True):
        n = g.groupby("user_id").size()
        kept = n[(n >= min_ratings) & (n <= max_ratings)]
        stats["states"][state] = {
            "users": int(n.size),
            "ratings": int(len(g)),
            "users_kept": int(kept.size),
            "ratings_kept": int(kept.sum()),
        }
    with atomic_directory(out) as tmp:
        users.to_parquet(tmp / "users.parquet", index=False)
        items.to_parquet(tmp / "items.parquet", index=False)
        ratings.to_parquet(tmp / "ratings.parquet", index=False)
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats


class MeluSourceConfig(StrictConfig):
    """The keys of ``melu.data`` this stage reads (the DVC stage tracks only these: a change to the episode seed or
    the query size re-runs training, not preprocessing)."""

    raw_dir: str = "data/raw/melu_movielens"
    processed_dir: str = "data/processed/melu"
    min_ratings: int = Field(13, ge=1)
    max_ratings: int = Field(100, ge=1)


def load_source_config(params: str | Path) -> MeluSourceConfig:
    import yaml

    from data.config import ConfigError, validate

    try:
        raw = (yaml.safe_load(Path(params).read_text()) or {}).get("melu", {}).get("data", {})
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{params}: cannot read: {err}") from None
    wanted = {k: raw[k] for k in MeluSourceConfig.model_fields if k in raw}
    return validate(MeluSourceConfig, wanted, source=str(params), section="melu.data")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics", default="metrics/melu_data.json", help="dataset statistics (DVC metrics)")
    args = ap.parse_args(argv)
    cfg = load_source_config(args.params)
    try:
        stats = preprocess(Path(cfg.raw_dir), Path(cfg.processed_dir), cfg.min_ratings, cfg.max_ratings)
    except DataFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from data.atomic import atomic_write_json

    atomic_write_json(args.metrics, {"melu_data": stats["states"]})
    print(json.dumps(stats["states"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
