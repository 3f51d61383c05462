"""The sequential-recommendation results table: datasets x variants x HR/NDCG@{5,10,20} (test split).

Reads the per-run metric files of the ``train_seqrec`` DVC stages (metrics/seqrec/<variant>-<dataset>.json)
and writes a Markdown table, the same numbers as JSON, and a bar chart of test NDCG@10. FaNC rows are
labelled "FaNC (reconstruction)"; the protocol (full ranking unless a file says otherwise) and the stopping
rule are printed with the table, with each run's best epoch and what stopped it (a run under an exploration
time budget is flagged as not reproducible).

    python scripts/seqrec_table.py --metrics-dir metrics/seqrec --out docs/seqrec_table --plot plots/seqrec/summary.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.common.tracking import atomic_write_json, atomic_write_text, save_figure  # noqa: E402
from models.seqrec.config import DATASETS, VARIANTS  # noqa: E402

LABELS = {
    "gru4rec": "GRU4Rec",
    "sasrec": "SASRec",
    "fanc": "FaNC (reconstruction)",
    "fanc_no_gravity": "FaNC (reconstruction), no gravity",
    "fanc_no_gate": "FaNC (reconstruction), no gate",
}
COLS = ["hr_at_5", "hr_at_10", "hr_at_20", "ndcg_at_5", "ndcg_at_10", "ndcg_at_20"]


def collect(metrics_dir: Path) -> list[dict]:
    rows = []
    for dataset in DATASETS:
        for variant in VARIANTS:
            path = metrics_dir / f"{variant}-{dataset}.json"
            if not path.exists():
                continue
            r = json.loads(path.read_text())
            missing = [c for c in COLS if f"test_{c}" not in r.get("test", {})]
            if missing:
                raise ValueError(f"{path}: field test.test_{missing[0]} missing; expected the seqrec flow's metrics file")
            rows.append({
                "dataset": dataset, "variant": variant, "label": LABELS[variant], "protocol": r["protocol"],
                **{c: r["test"][f"test_{c}"] for c in COLS},
                "valid_ndcg_at_10": r["best_valid"]["valid_ndcg_at_10"], "epochs": r["epochs"],
                "best_epoch": r["stopping"]["best_epoch"], "stopped_by": r["stopping"]["stopped_by"],
                "patience": r["stopping"]["patience"], "max_epochs": r["stopping"]["max_epochs"],
                "reproducible": r["stopping"]["reproducible"],
                "gate_mean_last": (r.get("fanc_analysis") or {}).get("gate_mean_last"),
                "clip_fraction": (r.get("fanc_analysis") or {}).get("clip_fraction"),
            })
    return rows


def markdown(rows: list[dict]) -> str:
    protocols = sorted({r["protocol"] for r in rows})
    rules = sorted({(r["patience"], r["max_epochs"]) for r in rows})
    out = [f"Test split, protocol: {'; '.join(protocols)}; already-seen items not masked. "
           f"Stopping: early stopping on validation NDCG@10 (patience {', '.join(str(p) for p, _ in rules)}) under at most "
           f"{', '.join(str(m) for _, m in rules)} epochs; the test numbers are the best validation epoch's. "
           "FaNC is a reconstruction from the paper's abstract (spec fanc.md), not the authors' model.", ""]
    exploratory = [f"{r['label']} on {r['dataset']}" for r in rows if not r["reproducible"]]
    if exploratory:
        out[0] += f" Not reproducible (stopped by an exploration time budget, machine-dependent): {', '.join(exploratory)}."
    head = ["dataset", "model", "HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "valid NDCG@10", "best epoch / run",
            "stopped by"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for ds in DATASETS:
        sub = [r for r in rows if r["dataset"] == ds]
        if not sub:
            continue
        best = {c: max(r[c] for r in sub) for c in COLS}
        for r in sub:
            cells = [f"**{r[c]:.4f}**" if r[c] == best[c] else f"{r[c]:.4f}" for c in COLS]
            out.append("| " + " | ".join([ds, r["label"], *cells, f"{r['valid_ndcg_at_10']:.4f}",
                                          f"{r['best_epoch']} / {r['epochs']}", r["stopped_by"].replace("_", " ")]) + " |")
    gates = [r for r in rows if r["gate_mean_last"] is not None]
    if gates:
        out += ["", "FaNC gate (mean over d of g in h = g*c + (1-g)*u; 1 = conscious) at the last step of the test inputs, "
                "and the share of steps whose gravitational acceleration hit the clip:", "",
                "| dataset | model | mean gate | clip fraction |", "|---|---|---|---|"]
        out += [f"| {r['dataset']} | {r['label']} | {r['gate_mean_last']:.3f} | {r['clip_fraction']:.3f} |" for r in gates]
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in rows)]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    w = 0.8 / max(len(variants), 1)
    for i, v in enumerate(variants):
        ys = [next((r["ndcg_at_10"] for r in rows if r["dataset"] == d and r["variant"] == v), np.nan) for d in datasets]
        ax.bar(np.arange(len(datasets)) + i * w, ys, w, label=LABELS[v])
    ax.set_xticks(np.arange(len(datasets)) + w * (len(variants) - 1) / 2, datasets)
    ax.set_ylabel("test NDCG@10 (full ranking)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--metrics-dir", default="metrics/seqrec")
    ap.add_argument("--out", default="docs/seqrec_table", help="writes <out>.md and <out>.json")
    ap.add_argument("--plot", default="plots/seqrec/summary.png")
    args = ap.parse_args(argv)
    rows = collect(Path(args.metrics_dir))
    if not rows:
        raise SystemExit(f"{args.metrics_dir}: no <variant>-<dataset>.json files; run `dvc repro models/seqrec/dvc.yaml:train_seqrec` first")
    md = markdown(rows)
    atomic_write_text(f"{args.out}.md", md)
    atomic_write_json(f"{args.out}.json", rows)
    plot(rows, Path(args.plot))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
