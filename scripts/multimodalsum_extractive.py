"""MultimodalSum evaluation protocol on the gold test sets: the official outputs and four training-free extractive systems.

Reads a folder laid out as the mirror's ``multimodalsum_eval/`` (``--data``; reading the read-only mirror itself is
fine), scores

(a) the official MultimodalSum summaries ``output/{Yelp,Amazon}.txt`` against the test references (the regression
    target of spec §6: Yelp 33.00 / 6.63 / 19.84, Amazon 34.19 / 7.05 / 20.81), and
(b) the extractive systems of ``models.multimodalsum.extractive`` (random review, clustroid review, LexRank review,
    oracle review) on the same test sets,

with the §5 protocol (py-rouge 1.1 + PlanSum preprocessing, averaged over references) and Google rouge-score as a
secondary column; prints markdown tables and writes everything as JSON (atomically).

Test sets: Yelp = rows 100-199 of ``data/yelp/test/summaries_0-200_cleaned.csv`` (rows 0-99 are dev), one reference
(``Answer.summary``); Amazon = ``data/amazon/test/test.csv`` (tab-separated, 32 products), references
``summ1..summ3``. Input reviews: Yelp ``Input.original_review_0..7``, Amazon ``rev1..rev8``.

    python scripts/multimodalsum_extractive.py --data /work/shared/data/multimodalsum_eval \\
        --out outputs/multimodalsum/extractive.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

from data.atomic import atomic_write_json
from models.multimodalsum import extractive as ext
from models.multimodalsum.rouge import KEYS, PY_ROUGE_KWARGS, rouge_score_secondary, rouge_scores

REPO = Path(__file__).resolve().parents[1]
SHARED = Path("/work/shared")
DATASETS = ("yelp", "amazon")
GOLD = {
    "yelp": {
        "file": "data/yelp/test/summaries_0-200_cleaned.csv",
        "sep": ",",
        "id": "Input.business_id",
        "reviews": [f"Input.original_review_{i}" for i in range(8)],
        "summaries": ["Answer.summary"],
        "rows": (100, 200),  # test; 0-99 is dev (official src/test.py)
        "split": "rows 100-199 of summaries_0-200_cleaned.csv",
    },
    "amazon": {
        "file": "data/amazon/test/test.csv",
        "sep": "\t",
        "id": "prod_id",
        "reviews": [f"rev{i}" for i in range(1, 9)],
        "summaries": ["summ1", "summ2", "summ3"],
        "rows": None,  # the whole file
        "split": "test.csv (all rows)",
    },
}
OUTPUTS = {"yelp": "output/Yelp.txt", "amazon": "output/Amazon.txt"}
# spec §6, the regression target for the evaluation code (R1 / R2 / RL at two decimals)
EXPECTED_OFFICIAL = {"yelp": (33.00, 6.63, 19.84), "amazon": (34.19, 7.05, 20.81)}
OFFICIAL = "MultimodalSum (official outputs)"
SYSTEMS = ("random", "clustroid", "lexrank", "oracle")


class GoldDataError(ValueError):
    """A missing file or column, an empty cell, or a row count that does not match."""


def _under(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


def protected_roots() -> list[Path]:
    roots = [SHARED]
    if os.environ.get("DATA_MIRROR", "").strip():
        roots.append(Path(os.environ["DATA_MIRROR"]))
    return roots


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise GoldDataError(f"missing file {path} ({what}); --data must point at a folder laid out as multimodalsum_eval/")
    return path


def load_gold(data_dir: str | Path, dataset: str) -> dict:
    """Test entities of one gold set: ``{"ids", "reviews": list[list[str]], "references": list[list[str]]}``."""
    g = GOLD[dataset]
    path = _require_file(Path(data_dir) / g["file"], f"{dataset} gold set")
    try:
        df = pd.read_csv(path, sep=g["sep"], encoding="utf-8", dtype=str, keep_default_na=False)
    except Exception as e:  # a parser error names neither the file nor what was expected
        raise GoldDataError(f"cannot read {path} as {'tab' if g['sep'] == chr(9) else 'comma'}-separated text: {e}") from e
    needed = [g["id"], *g["reviews"], *g["summaries"]]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        hint = " (the Amazon files are TAB-separated)" if dataset == "amazon" and len(df.columns) == 1 else ""
        raise GoldDataError(f"{path}: missing column(s) {missing}; expected {needed}{hint}; found {list(df.columns)[:20]}")
    if g["rows"] is not None:
        lo, hi = g["rows"]
        if len(df) < hi:
            raise GoldDataError(f"{path}: {len(df)} rows, expected at least {hi} (test = rows {lo}-{hi - 1})")
        df = df.iloc[lo:hi]
    if df.empty:
        raise GoldDataError(f"{path}: no rows")
    for col in [*g["reviews"], *g["summaries"]]:
        empty = [int(i) for i, v in df[col].items() if not str(v).strip()]
        if empty:
            raise GoldDataError(f"{path}: empty {col!r} in row(s) {empty[:10]}")
    return {
        "file": str(path),
        "split": g["split"],
        "ids": [str(v) for v in df[g["id"]]],  # one Yelp id is empty in the gold file; kept as ""
        "reviews": [list(r) for r in df[g["reviews"]].itertuples(index=False)],
        "references": [list(r) for r in df[g["summaries"]].itertuples(index=False)],
    }


def load_outputs(path: str | Path, expected: int, against: str) -> list[str]:
    """One summary per line (a single trailing newline allowed); the count must equal the number of test rows."""
    path = _require_file(Path(path), "official generated summaries, one per line")
    text = path.read_text(encoding="utf-8")
    if text.endswith("\n"):
        text = text[:-1]
    lines = [line.rstrip("\r") for line in text.split("\n")] if text else []
    if len(lines) != expected:
        raise GoldDataError(f"{path}: {len(lines)} lines, expected {expected} (one summary per test row of {against}, in row order)")
    return lines


def score(candidates: list[str], references: list[list[str]]) -> dict:
    return {"py_rouge": rouge_scores(candidates, references), "rouge_score": rouge_score_secondary(candidates, references)}


def run_dataset(data_dir: Path, dataset: str, seed: int, log=print) -> dict:
    gold = load_gold(data_dir, dataset)
    refs, entities = gold["references"], gold["reviews"]
    outputs = load_outputs(data_dir / OUTPUTS[dataset], len(refs), gold["file"])
    res = {"file": gold["file"], "split": gold["split"], "n_entities": len(refs), "n_references": len(refs[0]), "systems": {}}
    t0 = time.time()
    official = score(outputs, refs)
    got = tuple(round(official["py_rouge"][k], 2) for k in KEYS)
    official.update({"file": str(data_dir / OUTPUTS[dataset]), "expected_spec": list(EXPECTED_OFFICIAL[dataset]), "matches_spec": got == EXPECTED_OFFICIAL[dataset], "seconds": time.time() - t0})
    res["systems"][OFFICIAL] = official
    log(f"{dataset}: official outputs {got} (spec §6 {EXPECTED_OFFICIAL[dataset]}: {'match' if official['matches_spec'] else 'MISMATCH'})")
    for name in SYSTEMS:
        t0 = time.time()
        if name == "random":
            idx = ext.random_review(entities, seed=seed)
        elif name == "clustroid":
            idx = ext.clustroid_review(entities)
        elif name == "lexrank":
            idx = ext.lexrank_review(entities)
        else:
            idx = ext.oracle_review(entities, refs)
        entry = score(ext.pick(entities, idx), refs)
        entry.update({"selected": idx, "seconds": time.time() - t0})
        if name == "random":
            entry["seed"] = seed
        res["systems"][name] = entry
        log(f"{dataset}: {name} {tuple(round(entry['py_rouge'][k], 2) for k in KEYS)} ({entry['seconds']:.1f} s)")
    return res


LABELS = {
    OFFICIAL: OFFICIAL,
    "random": "Random review (seed {seed})",
    "clustroid": "Clustroid review",
    "lexrank": "LexRank review",
    "oracle": "Oracle review (upper bound)",
}


def markdown(results: dict, seed: int) -> str:
    lines = []
    for dataset, res in results["datasets"].items():
        lines += [
            f"### {dataset.capitalize()} test ({res['split']}, {res['n_entities']} entities, {res['n_references']} reference(s))",
            "",
            "| system | R1 | R2 | RL | rouge-score R1 | R2 | RL |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, entry in res["systems"].items():
            p, s = entry["py_rouge"], entry["rouge_score"]
            label = LABELS[name].format(seed=seed)
            cells = [f"{p[k]:.2f}" for k in KEYS] + [f"{s[k]:.2f}" for k in KEYS]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("R1/R2/RL: py-rouge 1.1 F x 100, PlanSum preprocessing, averaged over references (spec §5); rouge-score: Google rouge-score 0.1.2 rouge1/rouge2/rougeL F, stemmer on, secondary.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/raw/multimodalsum_eval", help="folder laid out as the mirror's multimodalsum_eval/ (read only)")
    ap.add_argument("--out", default=str(REPO / "outputs" / "multimodalsum" / "extractive.json"), help="JSON results (written atomically)")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random-review baseline")
    args = ap.parse_args(argv)
    out = Path(args.out)
    for root in protected_roots():
        if _under(out, root):
            ap.error(f"--out {out} is under {root}, a read-only data mirror; write the results elsewhere")
    data_dir = Path(args.data)
    if not data_dir.is_dir():
        ap.error(f"--data {data_dir} is not a folder (expected the multimodalsum_eval/ layout: data/yelp/test/, data/amazon/test/, output/)")
    results = {
        "protocol": {"py_rouge": PY_ROUGE_KWARGS, "preprocessing": "PlanSum (models/multimodalsum/rouge.py)", "multi_reference": "mean over reference columns", "secondary": "rouge-score rouge1/rouge2/rougeL F, use_stemmer=True"},
        "selection": {"clustroid_and_oracle_score": f"py-rouge {ext.SELECTION_SCORE} of R1/R2/RL F", "lexrank": f"lexrank package, one review per entity, threshold={ext.LEXRANK_THRESHOLD}, IDF over all input reviews of the split"},
        "data": str(data_dir),
        "datasets": {},
    }
    try:
        for dataset in args.datasets:
            results["datasets"][dataset] = run_dataset(data_dir, dataset, args.seed)
    except GoldDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(markdown(results, args.seed))
    atomic_write_json(out, results)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
