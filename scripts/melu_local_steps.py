"""How much does MeLU's local adaptation contribute? Evaluate one trained model with 0..N local steps.

Paper Fig. 4 reports that the MAE drops sharply after one local step. This loads a trained MeLU
checkpoint (e.g. from `make melu-table` or the flow) and evaluates every state with l = 0 (no
adaptation: the meta-learned prior) up to the given step counts, with the training local learning rate.

    python scripts/melu_local_steps.py --checkpoint checkpoints/melu_table/<fingerprint>/epoch-0030.pt --steps 0 1 5 20
"""

from __future__ import annotations

import argparse

from models.common.checkpoint import load_checkpoint
from data.config import load_section
from models.melu import recipe
from models.melu.config import MeluConfig
from models.melu.modeling import MeLU


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 1, 5, 20])
    ap.add_argument("--episode-seed", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args()
    cfg = load_section(MeluConfig, "melu", args.params, {"data.episode_seed": args.episode_seed})
    data = recipe.load_data(cfg)
    model = MeLU.from_config(cfg.model, data.tables.vocab_sizes)
    model.load_state_dict(load_checkpoint(args.checkpoint)["model"])
    rows = {}
    print("| local steps | " + " | ".join(f"{s} MAE" for s in ("warm", "user_cold", "item_cold", "user_and_item_cold")) + " |")
    print("|---|---|---|---|---|")
    for steps in args.steps:
        m = recipe.evaluate_states(model, data, cfg, local_steps=steps)  # the config stays the validated one
        rows[steps] = m
        print(f"| {steps} | " + " | ".join(f"{m[f'{s}_mae']:.4f}" for s in ("warm", "user_cold", "item_cold", "user_and_item_cold")) + " |")
    if args.out:
        from models.common.tracking import atomic_write_json

        atomic_write_json(args.out, {"checkpoint": args.checkpoint, "local_lr": cfg.train.local_lr, "results": rows})


if __name__ == "__main__":
    main()
