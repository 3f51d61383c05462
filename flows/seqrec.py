"""Sequential-recommendation flow, parameterised by model (fanc | gru4rec | sasrec) and dataset:
train (early stopping on validation NDCG@10) -> test evaluation -> log model -> register.

The registered model is named after the model (``fanc``, ``gru4rec``, ``sasrec``); its gate metric is the
validation NDCG@10 (higher is better). FaNC is a reconstruction (see models/seqrec/modeling.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from flows.common import run_cli, run_tags, tracked_run
from models.common.config import load_section
from models.seqrec.config import SeqRecConfig
from models.seqrec.recipe import GATE_METRIC
from tasks.data import ensure_data
from tasks.registry import register_and_promote
from tasks.seqrec import evaluate_seqrec, log_seqrec_model, train_seqrec

DATA_TARGETS = ["download@s3rec_sequences", "preprocess_seqrec"]


@flow(name="seqrec", log_prints=True)
def seqrec_flow(params_path: str = "params.yaml", overrides: dict | None = None, sync_data: bool = False, register_model: bool = True) -> dict:
    overrides = overrides or {}
    cfg = load_section(SeqRecConfig, "seqrec", params_path, overrides)
    if sync_data:
        ensure_data(DATA_TARGETS)
    name = cfg.model.name
    tags = run_tags(name, ["data/raw/s3rec_sequences", cfg.data.processed_dir])  # no DVC train stage yet
    tags.update({"dataset": cfg.data.dataset, "reconstruction": str(name == "fanc").lower()})
    with tracked_run(f"seqrec-{cfg.data.dataset}", f"{name}-{cfg.data.dataset}", tags, "seqrec", cfg) as run_id:
        out_dir = str(Path("outputs") / "seqrec" / run_id)
        trained = train_seqrec(params_path, overrides, run_id, out_dir)
        metrics = evaluate_seqrec(params_path, overrides, run_id, trained["weights"])
        result = {"run_id": run_id, "best_valid": trained["best_valid"], "test": metrics, "epochs": trained["epochs"]}
        if register_model:
            uri = log_seqrec_model(params_path, overrides, run_id, trained["weights"])
            result["registry"] = register_and_promote(uri, name, run_id, GATE_METRIC, trained["best_valid"][GATE_METRIC], "max")
        return result


def main(argv: list[str] | None = None) -> int:
    return run_cli(seqrec_flow, "Run the sequential-recommendation flow.", "--set model.name=sasrec --set data.dataset=Yelp", argv)


if __name__ == "__main__":
    sys.exit(main())
