"""One cell of a recipe check for the sequential baselines: train a params.yaml variant with overrides to convergence.

    .venv/bin/python scripts/seqrec_recipe_check.py --variant sasrec --dataset Beauty --threads 1 \
        --set train.batch_size=128 --set model.dropout=0.5 --out docs/seqrec_recipe_check/sasrec-Beauty-b128-d05.json

What it does:
- loads ``params.yaml`` ``seqrec`` with the variant's overrides, ``data.dataset`` and every ``--set KEY=VALUE``
  (values parsed as YAML: ``0.5``, ``true``, ``xavier``), validated as the DVC stage's config would be;
- trains with the project's loop (:func:`models.seqrec.recipe.train`: early stopping on validation NDCG@10 with
  ``train.patience`` under ``train.epochs``; no wall-clock budget unless ``--set train.time_budget_s`` says so,
  which marks the cell not reproducible), checkpointing under ``train.checkpoint_dir/<fingerprint>`` as the stage
  does, so an interrupted cell resumes and the cell whose config becomes the variant's is not trained twice;
- evaluates the best-validation weights on the test split and writes one JSON (atomically): the overrides, the
  fingerprint, the per-epoch history (validation metrics, train / validation seconds), the best epoch, what
  stopped the run and the test HR / NDCG@K. Nothing is logged to MLflow or registered.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.atomic import atomic_write_text  # noqa: E402
from models.catalog import get  # noqa: E402
from models.seqrec import recipe  # noqa: E402


def parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set {item!r}: expected KEY=VALUE (e.g. train.batch_size=128)")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", required=True, choices=("gru4rec", "sasrec", "fanc", "fanc_no_gravity", "fanc_no_gate"))
    ap.add_argument("--dataset", required=True, choices=("Beauty", "Sports_and_Outdoors", "Toys_and_Games", "Yelp"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--out", required=True, help="result JSON")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    spec = get("seqrec")
    extra = parse_set(args.overrides)
    overrides = spec.variant(args.variant) | {"data.dataset": args.dataset} | extra
    cfg = spec.load_config(args.params, overrides)  # refuses a bad key or value before any work
    fp = recipe.fingerprint(cfg)
    started = time.perf_counter()
    data = recipe.load_data(cfg)
    model, history = recipe.train(cfg, data)
    device = next(model.parameters()).device
    test = recipe.evaluate(model, data.test, cfg, device)
    best = max(range(len(history)), key=lambda i: history[i][recipe.SELECT_METRIC])
    result = {
        "variant": args.variant, "dataset": args.dataset, "overrides": extra, "fingerprint": fp,
        "config": {"model": cfg.model.model_dump(), "train": cfg.train.model_dump(exclude={"checkpoint_dir", "device", "resume"})},
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "epochs": len(history), "best_epoch": best + 1, "stopping": recipe.stop_rule(cfg).summary(history),
        "best_valid": {k: v for k, v in history[best].items() if k.startswith("valid_")},
        "test": {f"test_{k}": v for k, v in test.items()},
        "train_seconds_total": sum(h["train_seconds"] for h in history),
        "valid_seconds_total": sum(h["valid_seconds"] for h in history),
        "history": history,
        "wall_seconds_this_call": time.perf_counter() - started,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps({k: result[k] for k in ("variant", "dataset", "overrides", "epochs", "best_epoch", "test")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
