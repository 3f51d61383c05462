"""The seqrec recipe check at convergence: validation NDCG@10 against wall-clock seconds, the project's cells and RecBole.

    .venv/bin/python scripts/seqrec_recipe_figure.py --dir docs/seqrec_recipe_check

Reads every ``<model>-<dataset>-<cell>.json`` of ``scripts/seqrec_recipe_check.py`` and ``recbole-<Model>-<dataset>.json``
of ``scripts/seqrec_recbole_run.py --budget-s 0`` (RecBole trained to its own early stopping) in ``--dir``; for each
(model, dataset) writes ``<model>-<dataset>.png`` (validation NDCG@10 after each epoch against the summed train +
validation seconds so far; the best epoch marked) and prints one markdown table: epochs, best epoch, best validation
NDCG@10, test NDCG@10 / HR@10 of the best-validation weights, seconds to the best epoch, seconds per epoch, and the
speed to RecBole's quality: RecBole's seconds to its best epoch over the cell's seconds to the first epoch whose
validation NDCG@10 reaches RecBole's best ("-" when it never does). The ratio is only meaningful for runs measured
side by side on the same machine and threads; each JSON records its threads.
Writes ``--out`` (JSON) with the same numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.atomic import atomic_write_json  # noqa: E402


def _curve(epochs: list[dict]) -> tuple[list[float], list[float]]:
    seconds, total, ndcg = [], 0.0, []
    for e in epochs:
        total += e["train_seconds"] + e["valid_seconds"]
        seconds.append(total)
        ndcg.append(e["valid_ndcg_at_10"])
    return seconds, ndcg


def load_runs(folder: Path) -> dict[tuple[str, str], list[dict]]:
    runs: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("summary"):
            continue
        r = json.loads(path.read_text())
        if path.name.startswith("recbole-"):
            model, dataset = r["model"].lower(), r["dataset"]
            epochs = [{"train_seconds": e["train_seconds"], "valid_seconds": e["valid_seconds"],
                       "valid_ndcg_at_10": e["valid_ndcg_at_10"]} for e in r["epochs"]]
            test = r["test"]
            label, system, threads = "RecBole 1.2.1", "recbole", r.get("torch_threads")
        else:
            model, dataset = r["variant"], r["dataset"]
            epochs = r["history"]
            test = {k[len("test_"):]: v for k, v in r["test"].items()}
            over = {k: v for k, v in r["overrides"].items() if not k.startswith("train.checkpoint_dir")}
            label = "ours: " + (", ".join(f"{k.split('.')[-1]}={v}" for k, v in over.items()) or "shared defaults")
            system, threads = "ours", r.get("threads")
        seconds, ndcg = _curve(epochs)
        best = max(range(len(ndcg)), key=ndcg.__getitem__)
        runs.setdefault((model, dataset), []).append({
            "file": path.name, "system": system, "label": label, "threads": threads, "epochs": len(ndcg),
            "best_epoch": best + 1, "best_valid_ndcg_at_10": ndcg[best], "seconds_to_best": seconds[best],
            "seconds_total": seconds[-1], "seconds_per_epoch": seconds[-1] / len(ndcg),
            "test_ndcg_at_10": test.get("ndcg_at_10"), "test_hr_at_10": test.get("hr_at_10"),
            "curve": {"seconds": seconds, "valid_ndcg_at_10": ndcg}})
    return runs


def compare(rows: list[dict]) -> None:
    ref = next((r for r in rows if r["system"] == "recbole"), None)
    for r in rows:
        r["speed_to_recbole_quality"] = None
        if ref is None or r is ref:
            continue
        reach = next((s for s, v in zip(r["curve"]["seconds"], r["curve"]["valid_ndcg_at_10"]) if v >= ref["best_valid_ndcg_at_10"]), None)
        if reach:
            r["speed_to_recbole_quality"] = ref["seconds_to_best"] / reach


def plot(key: tuple[str, str], rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows:
        c = r["curve"]
        line, = ax.plot(c["seconds"], c["valid_ndcg_at_10"], marker=".", lw=1.2, label=f"{r['label']} ({r['threads']} thread)")
        ax.plot(r["seconds_to_best"], r["best_valid_ndcg_at_10"], marker="*", ms=12, color=line.get_color())
    ax.set_xlabel("train + validation seconds (cumulative)")
    ax.set_ylabel("validation NDCG@10 (full ranking)")
    ax.set_title(f"{key[0]} on {key[1]}: to early stopping (star = best epoch)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="docs/seqrec_recipe_check")
    ap.add_argument("--out", default=None, help="summary JSON (default: <dir>/summary.json)")
    args = ap.parse_args(argv)
    folder = Path(args.dir)
    runs = load_runs(folder)
    if not runs:
        print(f"error: no result JSON in {folder}", file=sys.stderr)
        return 2
    print("| model | dataset | run | threads | epochs | best epoch | best valid NDCG@10 | test NDCG@10 | test HR@10 | s to best | s / epoch | speed to RecBole's quality |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, rows in sorted(runs.items()):
        compare(rows)
        plot(key, rows, folder / f"{key[0]}-{key[1]}.png")
        for r in rows:
            sp = r["speed_to_recbole_quality"]
            print(f"| {key[0]} | {key[1]} | {r['label']} | {r['threads']} | {r['epochs']} | {r['best_epoch']} | {r['best_valid_ndcg_at_10']:.4f} | "
                  f"{r['test_ndcg_at_10']:.4f} | {r['test_hr_at_10']:.4f} | {r['seconds_to_best']:.0f} | {r['seconds_per_epoch']:.0f} | "
                  f"{'-' if sp is None else f'{sp:.2f}x'} |")
    atomic_write_json(Path(args.out) if args.out else folder / "summary.json",
                      {f"{m}-{d}": [{k: v for k, v in r.items() if k != "curve"} for r in rows] for (m, d), rows in runs.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
