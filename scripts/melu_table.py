"""MeLU paper Table 2 (MovieLens-1M): MeLU-5, MeLU-1, Wide&Deep and PPR over several episode seeds.

Every method is trained and evaluated on the same episodes (one set per episode seed: the per-user
support/query shuffle). Prints a markdown table of mean ± std beside the paper's numbers and writes the
raw per-seed metrics as JSON.

    python scripts/melu_table.py --seeds 0 1 2 --out docs/melu_table.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from data.config import load_section, updated
from models.melu import recipe
from models.melu.baselines import fit_baseline, predict_baseline
from models.melu.config import MeluConfig
from models.melu.metrics import TIE_RULE, rating_metrics

PAPER = {  # paper Table 2, MovieLens: MAE / nDCG@1 / nDCG@3
    "warm": {"PPR": (0.1820, 0.9796, 0.9831), "Wide&Deep": (0.9047, 0.9090, 0.9117), "MeLU-1": (0.7661, 0.8866, 0.8904), "MeLU-5": (0.7567, 0.8870, 0.8919)},
    "user_cold": {"PPR": (1.0748, 0.8299, 0.8468), "Wide&Deep": (1.0694, 0.8559, 0.8639), "MeLU-1": (0.7884, 0.8799, 0.8810), "MeLU-5": (0.7854, 0.8803, 0.8812)},
    "item_cold": {"PPR": (1.2441, 0.7289, 0.7632), "Wide&Deep": (1.2655, 0.7420, 0.7721), "MeLU-1": (0.9361, 0.7715, 0.7990), "MeLU-5": (0.9275, 0.7697, 0.8005)},
    "user_and_item_cold": {"PPR": (1.2596, 0.7292, 0.7634), "Wide&Deep": (1.3114, 0.7680, 0.7874), "MeLU-1": (0.9299, 0.7760, 0.8011), "MeLU-5": (0.9235, 0.7752, 0.8008)},
}
STATES = ["warm", "user_cold", "item_cold", "user_and_item_cold"]
METRICS = ["mae", "ndcg_at_1", "ndcg_at_3"]


def run_seed(base: MeluConfig, seed: int, methods: list[str], ckpt_root: str) -> dict[str, dict[str, float]]:
    cfg = updated(base, {"data.episode_seed": seed})
    data = recipe.load_data(cfg)
    out: dict[str, dict[str, float]] = {}
    for method in methods:
        t0 = time.time()
        if method.startswith("MeLU-"):
            steps = int(method.split("-")[1])
            mcfg = updated(cfg, {"train.local_steps": steps})
            model, _ = recipe.train(mcfg, data, ckpt_dir=f"{ckpt_root}/{recipe.fingerprint(mcfg)}", eval_every_epoch=False)
            out[method] = recipe.evaluate_states(model, data, mcfg)
        else:
            name, _, variant = method.partition("+")  # "Wide&Deep+S": also trained on the cold states' support sets
            kind = {"Wide&Deep": "wide_deep", "PPR": "ppr"}[name]
            bcfg = getattr(cfg.baselines, kind)
            if variant:
                bcfg = updated(bcfg, {"use_test_support": True})
            extra = [data.episodes[s] for s in data.episodes if s != "warm_state"]
            model = fit_baseline(kind, data.tables, data.episodes["warm_state"], extra, bcfg, cfg.model, seed=cfg.train.init_seed)
            res = {}
            for state, ep in data.episodes.items():
                pred = predict_baseline(model, data.tables, ep)
                m = rating_metrics(pred.numpy(), ep.query_y.numpy(), ep.query_movie_ids.numpy(), cfg.eval.ndcg_k)
                res.update({f"{state.removesuffix('_state')}_{k}": v for k, v in m.items()})
            out[method] = res
        out[method]["seconds"] = time.time() - t0
        print(f"seed {seed} {method}: " + ", ".join(f"{k}={v:.4f}" for k, v in out[method].items() if k.endswith("mae")), flush=True)
    return out


def markdown(results: dict[int, dict[str, dict[str, float]]], methods: list[str], cfg: MeluConfig) -> str:
    seeds = sorted(results)
    lines = [
        f"MovieLens-1M, episode seeds {seeds}; mean ± std over seeds; paper Table 2 in brackets. "
        f"MeLU: {cfg.train.meta_order}-order, {cfg.train.epochs} epochs, alpha={cfg.train.local_lr}, beta={cfg.train.global_lr}, "
        f"{cfg.train.global_optimizer}. nDCG tie rule: {TIE_RULE}.",
        "",
        "| state | method | MAE | nDCG@1 | nDCG@3 |",
        "|---|---|---|---|---|",
    ]
    for state in STATES:
        for method in methods:
            cells = []
            for i, metric in enumerate(METRICS):
                vals = np.array([results[s][method][f"{state}_{metric}"] for s in seeds])
                paper = PAPER[state].get(method)
                ref = f" [{paper[i]:.4f}]" if paper else ""
                cells.append(f"{vals.mean():.4f} ± {vals.std(ddof=1) if len(vals) > 1 else 0:.4f}{ref}")
            lines.append(f"| {state} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["MeLU-5", "MeLU-1", "Wide&Deep", "PPR", "Wide&Deep+S", "PPR+S"])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--checkpoints", default="checkpoints/melu_table")
    ap.add_argument("--out", default="docs/melu_table.json")
    args = ap.parse_args()
    from flows.common import parse_overrides

    cfg = load_section(MeluConfig, "melu", args.params, parse_overrides(args.overrides))
    results = {s: run_seed(cfg, s, args.methods, args.checkpoints) for s in args.seeds}
    table = markdown(results, args.methods, cfg)
    print(table)
    from models.common.tracking import atomic_write_json, atomic_write_text

    atomic_write_json(args.out, {"config": cfg.model_dump(mode="json"), "results": results, "tie_rule": TIE_RULE})
    atomic_write_text(Path(args.out).with_suffix(".md"), table + "\n")


if __name__ == "__main__":
    main()
