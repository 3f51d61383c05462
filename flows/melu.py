"""MeLU flow: train -> evaluate -> evidence candidates -> log model -> register (champion/challenger).

Run by the DVC stage ``train_melu`` (``python -m flows.melu``) and by the Prefect deployment ``melu``
(``sync_data=True`` so the scheduled run first brings the data up to date with DVC).
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from flows.common import model_bundle, register_once, run_cli, run_tags, tracked_run
from models.common.config import load_section
from models.melu.config import MeluConfig
from tasks.data import ensure_data
from tasks.melu import evaluate_melu, evidence_candidates, log_melu_model, train_melu

DATA_TARGETS = ["download@melu_movielens", "preprocess_melu"]


@flow(name="melu", log_prints=True)
def melu_flow(params_path: str = "params.yaml", overrides: dict | None = None, sync_data: bool = False, register_model: bool = True) -> dict:
    """Train, evaluate and register MeLU; returns the final metrics and the registry decision."""
    overrides = overrides or {}
    cfg = load_section(MeluConfig, "melu", params_path, overrides)  # fail fast on a bad key or type
    if sync_data:
        ensure_data(DATA_TARGETS)
    tags = run_tags("melu", [cfg.data.raw_dir, cfg.data.processed_dir], stage="train_melu")
    tags.update({"meta_order": cfg.train.meta_order, "local_steps": str(cfg.train.local_steps)})
    run_name = f"melu-{cfg.train.local_steps}-{cfg.train.meta_order}"
    with tracked_run(cfg.registry.experiment, run_name, tags, "melu", cfg) as run_id:
        out_dir = str(Path("outputs") / "melu" / run_id)
        trained = train_melu(params_path, overrides, run_id, out_dir)
        metrics = evaluate_melu(params_path, overrides, run_id, trained["weights"], trained["history"])
        if cfg.evidence.enabled:
            evidence_candidates(params_path, overrides, run_id, trained["weights"], out_dir)
        r = cfg.registry
        result = {"run_id": run_id, "metrics": metrics,
                  "bundle": model_bundle(trained["weights"], "train_melu", r.model_name if register_model else None,
                                         r.gate_metric, metrics[r.gate_metric], r.gate_mode)}
        if register_model:
            result["registry"] = register_once(result["bundle"], run_id,
                                               lambda: log_melu_model(params_path, overrides, run_id, trained["weights"]))
        return result


def main(argv: list[str] | None = None) -> int:
    return run_cli(melu_flow, "Run the MeLU flow (train -> evaluate -> register).", "--set train.epochs=3", argv,
                   config=(MeluConfig, "melu"))


if __name__ == "__main__":
    sys.exit(main())
