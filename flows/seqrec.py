"""Sequential-recommendation flow, parameterised by model (fanc | gru4rec | sasrec) and dataset:
train (early stopping on validation NDCG@10 under a fixed maximum of epochs) -> test evaluation -> FaNC gate and
trajectory analysis -> metrics file -> log model -> register.

The registered model is named after the model (``fanc``, ``gru4rec``, ``sasrec``) and gated per dataset:
aliases ``champion_<dataset>`` / ``challenger_<dataset>`` (e.g. ``models:/fanc@champion_beauty``), gate
metric validation NDCG@10 (higher is better). The FaNC ablations (``--variant fanc_no_gravity`` /
``fanc_no_gate``) are tracked and written to the table but not registered. FaNC is a reconstruction
(see models/seqrec/modeling.py).

    python -m flows.seqrec --variant sasrec --set data.dataset=Yelp
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from flows.common import model_bundle, register_once, run_cli, run_tags, tracked_run
from models.common import tracking
from models.common.config import load_section
from models.seqrec.config import ABLATIONS, VARIANTS, SeqRecConfig, variant_of
from models.seqrec.metrics import FULL
from models.seqrec.recipe import GATE_METRIC, stop_rule
from tasks.data import ensure_data
from tasks.seqrec import analyze_fanc, evaluate_seqrec, log_seqrec_model, train_seqrec

DATA_TARGETS = ["download@s3rec_sequences", "preprocess_seqrec"]


@flow(name="seqrec", log_prints=True)
def seqrec_flow(params_path: str = "params.yaml", overrides: dict | None = None, sync_data: bool = False, register_model: bool = True) -> dict:
    overrides = overrides or {}
    cfg = load_section(SeqRecConfig, "seqrec", params_path, overrides)
    if sync_data:
        ensure_data(DATA_TARGETS)
    name, dataset, variant = cfg.model.name, cfg.data.dataset, variant_of(cfg)
    tags = run_tags(name, ["data/raw/s3rec_sequences", cfg.data.processed_dir], stage=f"train_seqrec@{variant}-{dataset}")
    tags.update({"dataset": dataset, "variant": variant, "reconstruction": str(name == "fanc").lower(),
                 "reproducible": str(stop_rule(cfg).reproducible).lower()})
    with tracked_run(f"seqrec-{dataset}", f"{variant}-{dataset}", tags, "seqrec", cfg) as run_id:
        out_dir = str(Path("outputs") / "seqrec" / run_id)
        trained = train_seqrec(params_path, overrides, run_id, out_dir)
        metrics = evaluate_seqrec(params_path, overrides, run_id, trained["weights"])
        analysis = analyze_fanc(params_path, overrides, run_id, trained["weights"])
        result = {
            "run_id": run_id, "model": name, "variant": variant, "dataset": dataset,
            "label": "FaNC (reconstruction)" if name == "fanc" else name,
            "protocol": FULL if cfg.eval.protocol == "full" else f"sampled: {cfg.eval.n_negatives} negatives (not comparable to full ranking)",
            "mask_history": cfg.eval.mask_history, "stopping": trained["stopping"],
            "best_valid": trained["best_valid"], "test": metrics, "epochs": trained["epochs"],
            "training": trained["training"], "fanc_analysis": analysis,
        }
        tracking.write_metrics(Path(cfg.outputs.metrics_dir) / f"{variant}-{dataset}.json", result, run_id)
        registers = register_model and variant not in ABLATIONS
        gate = trained["best_valid"][GATE_METRIC]
        result["bundle"] = model_bundle(trained["weights"], f"train_seqrec@{variant}-{dataset}", name if registers else None,
                                        GATE_METRIC, gate, "max", scope=dataset.lower())
        if registers:
            result["registry"] = register_once(result["bundle"], run_id,
                                               lambda: log_seqrec_model(params_path, overrides, run_id, trained["weights"]))
        return result


def main(argv: list[str] | None = None) -> int:
    return run_cli(seqrec_flow, "Run the sequential-recommendation flow.", "--set model.name=sasrec --set data.dataset=Yelp", argv,
                   presets=VARIANTS, config=(SeqRecConfig, "seqrec"))


if __name__ == "__main__":
    sys.exit(main())
