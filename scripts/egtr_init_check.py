"""EGTR relation-head initialisation check: stage 1 for a few epochs from one stage-0 detector, once per
``relation.init`` (official N(0, 0.02) / zero bias vs nn.Linear's default), then validation R@50 (graph constraint
and none). Everything else comes from ``params.yaml`` ``egtr``; outputs go under ``--out`` (nothing registered).

    python scripts/egtr_init_check.py --detector outputs/egtr/synthetic/pretrain-<fingerprint>/best.pt --epochs 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.config import load_section  # noqa: E402
from models.common.tracking import atomic_write_json  # noqa: E402
from models.egtr.config import EgtrConfig  # noqa: E402
from models.egtr.evaluate import evaluate  # noqa: E402
from models.egtr.recipe import load_model, train_stage  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", required=True, help="a stage-0 detector best.pt")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default="outputs/egtr/init_check")
    args = ap.parse_args(argv)
    rows = []
    for init in ("pytorch", "official"):
        cfg = load_section(EgtrConfig, "egtr", args.params, {
            "relation.init": init, "sgg.epochs": args.epochs, "sgg.finetune_epochs": 0, "sgg.time_budget_s": 0.0,
            "pretrained": args.detector, "out_dir": f"{args.out}/{init}"})
        t = time.monotonic()
        trained = train_stage(cfg, "sgg", init_from=args.detector, progress=False)
        model, _ = load_model(trained["weights"], "egtr")
        res = evaluate(model, cfg, "val", progress=False)
        rows.append({"init": init, "epochs": args.epochs, "seconds": time.monotonic() - t,
                     "val_R_at_50": res["R_at_50"], "val_ngc_R_at_50": res["ngc_R_at_50"], "val_mR_at_50": res["mR_at_50"]})
    print(f"{'init':10s} {'R@50':>8s} {'ngc R@50':>9s} {'mR@50':>8s}")
    for r in rows:
        print(f"{r['init']:10s} {r['val_R_at_50']:8.4f} {r['val_ngc_R_at_50']:9.4f} {r['val_mR_at_50']:8.4f}")
    atomic_write_json(Path(args.out) / "init_check.json", {"detector": args.detector, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
