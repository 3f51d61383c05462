"""MultimodalSum evaluation protocol on the gold test sets: the official outputs and four training-free extractive systems.

Reads the processed review tables of the two gold sets (``--tables``: ``<DIR>/yelp_gold`` and ``<DIR>/amazon_gold``,
written by the DVC stages ``build_review_tables@yelp_gold`` / ``@amazon_gold``, schema ``data/review_schema.py``;
split ``test``, entities in the row order of the official files) and the official outputs (``--outputs``: a folder
with ``Yelp.txt`` / ``Amazon.txt``, one summary per test row in row order, as the mirror's
``multimodalsum_eval/output/``), scores

(a) the official MultimodalSum summaries against the test references (the regression target of spec §6:
    Yelp 33.00 / 6.63 / 19.84, Amazon 34.19 / 7.05 / 20.81), and
(b) the extractive systems of ``models.multimodalsum.extractive`` (random review, clustroid review, LexRank review,
    oracle review) on the same test sets,

with the §5 protocol (py-rouge 1.1 + PlanSum preprocessing, averaged over references) and Google rouge-score as a
secondary column; prints markdown tables and writes everything as JSON (atomically).

Test sets (see ``data/stages/build_review_tables.py``): Yelp = rows 100-199 of
``data/yelp/test/summaries_0-200_cleaned.csv`` (rows 0-99 are dev), one reference; Amazon = ``data/amazon/test/test.csv``
(32 products), three references. Eight input reviews per entity.

    dvc repro build_review_tables@yelp_gold build_review_tables@amazon_gold
    python scripts/multimodalsum_extractive.py --out docs/multimodalsum_extractive.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python scripts/multimodalsum_extractive.py` from the repository root

from data.atomic import atomic_write_json  # noqa: E402
from data.review_schema import ReviewDataError, entity_texts, read_tables  # noqa: E402
from models.multimodalsum import extractive as ext  # noqa: E402
from models.multimodalsum.rouge import KEYS, PY_ROUGE_KWARGS, rouge_score_secondary, rouge_scores  # noqa: E402

SHARED = Path("/work/shared")
DATASETS = ("yelp", "amazon")
TABLES = {"yelp": "yelp_gold", "amazon": "amazon_gold"}  # folders under --tables (build_review_tables@<name>)
SPLIT = "test"
OUTPUTS = {"yelp": "Yelp.txt", "amazon": "Amazon.txt"}  # files under --outputs
# spec §6, the regression target for the evaluation code (R1 / R2 / RL at two decimals)
EXPECTED_OFFICIAL = {"yelp": (33.00, 6.63, 19.84), "amazon": (34.19, 7.05, 20.81)}
OFFICIAL = "MultimodalSum (official outputs)"
SYSTEMS = ("random", "clustroid", "lexrank", "oracle")


class GoldDataError(ValueError):
    """A missing file or folder, or an official output file whose line count does not match the test split."""


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
        raise GoldDataError(f"missing file {path} ({what}); --outputs must point at a folder with Yelp.txt / Amazon.txt")
    return path


def load_test_set(tables_dir: str | Path, dataset: str) -> dict:
    """The test entities of one gold set from its review tables: ``{"folder", "split", "rows", "ids", "reviews":
    list[list[str]], "references": list[list[str]]}``, in the row order of the official file."""
    folder = Path(tables_dir) / TABLES[dataset]
    if not folder.is_dir():
        raise GoldDataError(f"missing tables folder {folder} ({dataset} gold set; run "
                            f"`dvc repro build_review_tables@{TABLES[dataset]}` or point --tables at its parent)")
    ents = entity_texts(read_tables(folder), SPLIT)
    rows = [e.row for e in ents]
    if None in rows or rows != list(range(rows[0], rows[0] + len(rows))):
        raise GoldDataError(f"{folder / 'entities.parquet'}: split {SPLIT!r}: row: expected consecutive rows of the official "
                            f"file (output line j = the j-th test row), got {rows[:10]}{' ...' if len(rows) > 10 else ''}")
    span = f"rows {rows[0]}-{rows[-1]}"
    return {
        "folder": str(folder),
        "split": f"{TABLES[dataset]} split {SPLIT}, {span} of the official file",
        "rows": rows,
        "ids": [e.entity_id for e in ents],
        "reviews": [e.reviews for e in ents],
        "references": [e.references for e in ents],
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


def run_dataset(tables_dir: Path, outputs_dir: Path, dataset: str, seed: int, log=print) -> dict:
    gold = load_test_set(tables_dir, dataset)
    refs, entities = gold["references"], gold["reviews"]
    against = f"{Path(gold['folder']) / 'entities.parquet'} (split {SPLIT!r}, {len(refs)} entities)"
    outputs = load_outputs(outputs_dir / OUTPUTS[dataset], len(refs), against)
    res = {"tables": gold["folder"], "split": gold["split"], "n_entities": len(refs), "n_references": len(refs[0]), "systems": {}}
    t0 = time.time()
    official = score(outputs, refs)
    got = tuple(round(official["py_rouge"][k], 2) for k in KEYS)
    official.update({"file": str(outputs_dir / OUTPUTS[dataset]), "expected_spec": list(EXPECTED_OFFICIAL[dataset]), "matches_spec": got == EXPECTED_OFFICIAL[dataset], "seconds": time.time() - t0})
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
    ap.add_argument("--tables", default="data/processed/reviews", help="folder holding yelp_gold/ and amazon_gold/ (build_review_tables)")
    ap.add_argument("--outputs", default="data/raw/multimodalsum_eval/output", help="folder with the official Yelp.txt / Amazon.txt (read only)")
    ap.add_argument("--out", default=str(REPO / "outputs" / "multimodalsum" / "extractive.json"), help="JSON results (written atomically)")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random-review baseline")
    args = ap.parse_args(argv)
    out = Path(args.out)
    for root in protected_roots():
        if _under(out, root):
            ap.error(f"--out {out} is under {root}, a read-only data mirror; write the results elsewhere")
    tables_dir, outputs_dir = Path(args.tables), Path(args.outputs)
    if not tables_dir.is_dir():
        ap.error(f"--tables {tables_dir} is not a folder (expected the build_review_tables outputs: yelp_gold/, amazon_gold/)")
    results = {
        "protocol": {"py_rouge": PY_ROUGE_KWARGS, "preprocessing": "PlanSum (models/multimodalsum/rouge.py)", "multi_reference": "mean over reference columns", "secondary": "rouge-score rouge1/rouge2/rougeL F, use_stemmer=True"},
        "selection": {"clustroid_and_oracle_score": f"py-rouge {ext.SELECTION_SCORE} of R1/R2/RL F", "lexrank": f"lexrank package, one review per entity, threshold={ext.LEXRANK_THRESHOLD}, IDF over all input reviews of the split"},
        "tables": str(tables_dir),
        "outputs": str(outputs_dir),
        "datasets": {},
    }
    try:
        for dataset in args.datasets:
            results["datasets"][dataset] = run_dataset(tables_dir, outputs_dir, dataset, args.seed)
    except (GoldDataError, ReviewDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(markdown(results, args.seed))
    atomic_write_json(out, results)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
