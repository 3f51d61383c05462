"""DisSAN results table on SICK: {DisSAN, DisSAN without the distance mask, BiLSTM-max} x seeds.

Each run trains with the params.yaml ``dissan`` settings (GloVe 6B-50d, d = 50, 20 epochs, Adam 1e-3,
batch 64), selects the epoch on SICK trial (dev) accuracy and reports SICK test accuracy overall and per
length bucket. Seeds change the initialisation, the OOV vectors and the example order. Identical configs
reuse their finished checkpoints (e.g. the seed-0 runs of the DVC stages).

    .venv/bin/python scripts/dissan_table.py --seeds 0 1 2 --out docs/dissan_table
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.config import load_section  # noqa: E402
from models.common.tracking import atomic_write_json, atomic_write_text  # noqa: E402
from models.dissan import recipe  # noqa: E402
from models.dissan.config import VARIANTS, DissanConfig  # noqa: E402

LABELS = {"dissan": "DisSAN", "dissan_no_distance": "DisSAN without distance mask", "bilstm_max": "BiLSTM-max (baseline)"}


def run(params: str, variant: str, seed: int, overrides: list[str]) -> dict:
    from flows.common import parse_overrides

    ov = {**VARIANTS[variant], "train.init_seed": seed, "train.order_seed": seed, **parse_overrides(overrides)}
    cfg = load_section(DissanConfig, "dissan", params, ov)
    model, history, data = recipe.train(cfg, progress=False)
    device = next(model.parameters()).device
    test = recipe.evaluate(model, data.splits["test"], device, cfg.eval.length_buckets)
    dev = recipe.evaluate(model, data.splits["dev"], device, cfg.eval.length_buckets)
    return {"variant": variant, "seed": seed, "dev_accuracy": dev["accuracy"], "test_accuracy": test["accuracy"],
            "buckets": {k: b for k, b in test["buckets"].items()}, "best_epoch": 1 + max(range(len(history)), key=lambda i: history[i][recipe.SELECT_METRIC]),
            "train_seconds": sum(h["train_seconds"] for h in history), "n_trainable": model.n_trainable(), "protocol": data.info["protocol"]}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for v in VARIANTS:
        rs = [r for r in rows if r["variant"] == v]
        if not rs:
            continue
        acc = [r["test_accuracy"] for r in rs]
        buckets = {}
        for name in rs[0]["buckets"]:
            vals = [r["buckets"][name]["accuracy"] for r in rs if r["buckets"][name]["accuracy"] is not None]
            buckets[name] = {"n": rs[0]["buckets"][name]["n"], "mean": statistics.mean(vals) if vals else None}
        out[v] = {"test_mean": statistics.mean(acc), "test_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                  "dev_mean": statistics.mean(r["dev_accuracy"] for r in rs), "seeds": [r["seed"] for r in rs],
                  "buckets": buckets, "n_trainable": rs[0]["n_trainable"]}
    return out


def markdown(summary: dict, rows: list[dict]) -> str:
    names = list(next(iter(summary.values()))["buckets"])
    seeds = next(iter(summary.values()))["seeds"]
    head = ["model", "trainable params", "dev (trial) acc", "test acc (mean ± std)", *[f"test {n.removeprefix('len_').replace('_', '-')} (n={summary[next(iter(summary))]['buckets'][n]['n']})" for n in names]]
    lines = [f"SICK (SemEval-2014 splits: train 4,500 -> trial 500 for selection -> test 4,927), GloVe 6B-50d frozen, d = 50, "
             f"seeds {', '.join(map(str, seeds))}. Buckets: length of the longer sentence of a pair (tokens).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, s in summary.items():
        cells = [LABELS[v], f"{s['n_trainable']:,}", f"{s['dev_mean']:.4f}", f"{s['test_mean']:.4f} ± {s['test_std']:.4f}"]
        cells += ["-" if s["buckets"][n]["mean"] is None else f"{s['buckets'][n]['mean']:.4f}" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per seed (test accuracy): " + "; ".join(f"{LABELS[r['variant']]} seed {r['seed']}: {r['test_accuracy']:.4f}" for r in rows)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default="docs/dissan_table", help="writes <out>.md and <out>.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    rows = []
    for v in args.variants:
        for seed in args.seeds:
            rows.append(run(args.params, v, seed, args.overrides))
            print(f"{LABELS[v]} seed {seed}: test {rows[-1]['test_accuracy']:.4f} (dev {rows[-1]['dev_accuracy']:.4f})", flush=True)
    summary = summarise(rows)
    md = markdown(summary, rows)
    atomic_write_text(f"{args.out}.md", md)
    atomic_write_json(f"{args.out}.json", {"summary": summary, "runs": rows, "command": " ".join(sys.argv)})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
