"""DVC stage ``build_lm_corpus``: the bilingual LM's pretraining corpus from the mirror's text folders.

Reads the training sources of :mod:`data.lm_sources` under ``--raw`` (the download stages' ``data/raw``), scrubs PII,
removes exact and near duplicates and every document that overlaps an evaluation set, holds out Korean documents for
bits-per-byte, and writes parquet shards + ``mixture.json`` + ``decontamination.json`` to ``--out`` (replaced
atomically); per-source statistics go to ``--metrics`` (DVC metrics). Parameters: ``data.build_lm_corpus`` of
``--params`` (:class:`data.lm_corpus.LMCorpusParams`; unknown keys, a mixture that does not sum to one, unknown
sources are errors naming the key). See :mod:`data.lm_corpus` for every filter.

    python -m data.stages.build_lm_corpus --params params.yaml --raw data/raw --out data/processed/lm_corpus \\
        --metrics metrics/lm_corpus.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from data.config import ConfigError, validate
from data.lm_corpus import LMCorpusParams, build_corpus
from data.lm_sources import CorpusFileError

SECTION = "data.build_lm_corpus"


def load_params(params_path: str | Path, overrides: dict | None = None) -> LMCorpusParams:
    import yaml

    from data.config import deep_update

    params_path = Path(params_path)
    if not params_path.is_file():
        raise ConfigError(f"{params_path}: not found")
    raw = yaml.safe_load(params_path.read_text()) or {}
    section = (raw.get("data") or {}).get("build_lm_corpus")
    if not isinstance(section, dict):
        raise ConfigError(f"{params_path}: section {SECTION} is missing")
    return validate(LMCorpusParams, deep_update(section, overrides or {}), source=str(params_path), section=SECTION,
                    overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help=f"reads {SECTION}")
    ap.add_argument("--raw", type=Path, default=Path("data/raw"), help="the download stages' output root")
    ap.add_argument("--out", type=Path, required=True, help="corpus folder to write (replaced atomically)")
    ap.add_argument("--metrics", type=Path, required=True, help="statistics as JSON (DVC metrics)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter (YAML value), e.g. --set max_docs_per_source=1000")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        overrides = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
            overrides[key] = yaml.safe_load(value)
        params = load_params(args.params, overrides)
        t0 = time.perf_counter()
        stats = build_corpus(args.raw, args.out, params, progress=not args.no_progress)
    except (ConfigError, CorpusFileError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from data.atomic import atomic_write_json

    atomic_write_json(args.metrics, stats)
    langs = ", ".join(f"{k} {v['documents']} docs / {v['characters']:,} chars" for k, v in stats["languages"].items())
    removed = sum(stats["decontamination"].values())
    print(f"lm corpus -> {args.out}: {langs}; held out {stats['heldout_documents']}; contaminated hits {removed}; "
          f"PII {stats['pii_replaced']} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
