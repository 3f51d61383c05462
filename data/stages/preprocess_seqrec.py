"""DVC stage ``preprocess_seqrec``: S3-Rec sequence files -> parquet, plus dataset statistics.

Input: ``<raw>/<Dataset>.txt``, one line per user, ``user_id item_1 ... item_n`` in time order (oldest
first), items already remapped to 1..N by the S3-Rec preprocessing (5-core). Output per dataset:
``<out>/<Dataset>.parquet`` with columns ``user_id`` (int) and ``items`` (list of int, time order), and
the statistics (users, items, interactions, mean length) in a DVC metrics file.

Usage: ``python -m data.stages.preprocess_seqrec --raw data/raw/s3rec_sequences --out data/processed/seqrec
--datasets Beauty Sports_and_Outdoors Toys_and_Games Yelp --metrics metrics/seqrec_data.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from data.atomic import atomic_directory


class DataFormatError(ValueError):
    """A sequence file line is malformed; the message names file, line and field."""


def parse_sequences(path: Path, min_length: int = 3) -> pd.DataFrame:
    users, seqs = [], []
    seen: set[int] = set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            raise DataFormatError(f"{path}:{n}: empty line (expected 'user_id item_1 ... item_n')")
        try:
            ids = [int(p) for p in parts]
        except ValueError:
            raise DataFormatError(f"{path}:{n}: field 'items': expected integers, got {line[:80]!r}") from None
        user, items = ids[0], ids[1:]
        if user in seen:
            raise DataFormatError(f"{path}:{n}: field 'user_id': user {user} appears twice")
        if len(items) < min_length:
            raise DataFormatError(f"{path}:{n}: field 'items': {len(items)} items; leave-one-out needs at least {min_length}")
        if min(items) < 1:
            raise DataFormatError(f"{path}:{n}: field 'items': item ids start at 1 (0 is padding), got {min(items)}")
        seen.add(user)
        users.append(user)
        seqs.append(items)
    return pd.DataFrame({"user_id": users, "items": seqs})


def statistics(df: pd.DataFrame) -> dict:
    lengths = df["items"].map(len)
    all_items = {i for s in df["items"] for i in s}
    return {
        "users": int(len(df)),
        "items": int(len(all_items)),
        "max_item_id": int(max(all_items)),
        "interactions": int(lengths.sum()),
        "mean_length": float(round(lengths.mean(), 4)),
    }


def preprocess(raw: Path, out: Path, datasets: list[str]) -> dict[str, dict]:
    stats = {}
    with atomic_directory(out) as tmp:
        for name in datasets:
            df = parse_sequences(raw / f"{name}.txt")
            st = statistics(df)
            if st["max_item_id"] != st["items"]:
                raise DataFormatError(f"{raw / (name + '.txt')}: item ids are not contiguous 1..N ({st['items']} items, max id {st['max_item_id']})")
            df.to_parquet(tmp / f"{name}.parquet", index=False)
            stats[name] = st
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", default="data/raw/s3rec_sequences")
    ap.add_argument("--out", default="data/processed/seqrec")
    ap.add_argument("--datasets", nargs="+", default=["Beauty", "Sports_and_Outdoors", "Toys_and_Games", "Yelp"])
    ap.add_argument("--metrics", default="metrics/seqrec_data.json")
    args = ap.parse_args(argv)
    try:
        stats = preprocess(Path(args.raw), Path(args.out), args.datasets)
    except (DataFormatError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from data.atomic import atomic_write_json

    atomic_write_json(args.metrics, {"seqrec_data": stats})
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
