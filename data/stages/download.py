"""DVC stage ``download@<dataset>``: fetch a catalog dataset (mirror first, then official URL).

Usage: ``python -m data.stages.download --dataset melu_movielens --out data/raw/melu_movielens``.
The mirror is read from the ``DATA_MIRROR`` environment variable (never written to); a relative value is
resolved against the working directory (``data.download.mirror_from_env``).
"""

from __future__ import annotations

import argparse
import sys

from data.download import ChecksumError, DownloadError, fetch_dataset, mirror_from_env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        mirror = mirror_from_env()
        origins = fetch_dataset(args.dataset, args.out, mirror=str(mirror) if mirror else None)
    except (DownloadError, ChecksumError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    counts: dict[str, int] = {}
    for origin in origins.values():
        counts[origin] = counts.get(origin, 0) + 1
    print(f"{args.dataset}: {len(origins)} files verified in {args.out} ({counts})")
    from pathlib import Path

    from data.catalog import dataset
    from data.download import sha256_file

    for entry in dataset(args.dataset).files:
        if entry.sha256 is None:  # the publisher gives none: show what was fetched (DVC records it too)
            print(f"{args.dataset}/{entry.path}: no published checksum; fetched sha256 {sha256_file(Path(args.out) / entry.path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
