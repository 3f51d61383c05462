"""DisSAN flow, parameterised by dataset (sick | snli) and variant (dissan | dissan_no_distance | bilstm_max):
train (selection on dev accuracy) -> dev/test evaluation (length buckets, confusion matrix) -> metrics
file -> log model -> register.

Only the ``dissan`` variant registers, as model ``dissan`` gated per dataset on dev accuracy (aliases
``champion_sick`` / ``champion_snli``); the ablation and the BiLSTM-max baseline are tracked, not registered.
An SNLI run without the SNLI train split is a pipeline check, tagged ``comparable_to_paper=false`` and
never registered.

    python -m flows.dissan --variant dissan_no_distance
    python -m flows.dissan --set data.dataset=snli --set data.vectors=data/raw/glove_840b/glove.840B.300d.zip \
        --set data.lowercase=false --set eval.length_buckets=[10,14,19,24]          # the paper's configuration
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from flows.common import model_bundle, register_once, run_cli, run_tags, tracked_run
from models.common import tracking
from models.common.config import load_section
from models.dissan.config import VARIANTS, DissanConfig, variant_of
from models.dissan.recipe import GATE_METRIC
from tasks.data import ensure_data
from tasks.dissan import evaluate_dissan, log_dissan_model, train_dissan

DATA_TARGETS = ["download@snli", "download@sick", "download@glove_6b_50d"]


@flow(name="dissan", log_prints=True)
def dissan_flow(params_path: str = "params.yaml", overrides: dict | None = None, sync_data: bool = False, register_model: bool = True) -> dict:
    overrides = overrides or {}
    cfg = load_section(DissanConfig, "dissan", params_path, overrides)
    if sync_data:
        ensure_data(DATA_TARGETS)
    dataset, variant = cfg.data.dataset, variant_of(cfg)
    tags = run_tags("dissan", [f"{cfg.data.raw_dir}/{dataset}", cfg.data.vectors], stage=f"train_dissan@{variant}-{dataset}")
    tags.update({"dataset": dataset, "variant": variant})
    with tracked_run(f"dissan-{dataset}", f"{variant}-{dataset}", tags, "dissan", cfg) as run_id:
        out_dir = str(Path("outputs") / "dissan" / run_id)
        trained = train_dissan(params_path, overrides, run_id, out_dir)
        evaluated = evaluate_dissan(params_path, overrides, run_id, trained["weights"])
        result = {
            "run_id": run_id, "variant": variant, "dataset": dataset, "protocol": trained["data"]["protocol"],
            "comparable_to_paper": trained["data"]["comparable_to_paper"], "epochs": trained["epochs"],
            "n_trainable_parameters": trained["n_trainable"], "best_dev": trained["best_dev"],
            "dev_accuracy": evaluated["metrics"]["dev_accuracy"], "test_accuracy": evaluated["metrics"]["test_accuracy"],
            "test_buckets": evaluated["test"]["buckets"], "test_confusion": evaluated["test"]["confusion"],
            "oov_rate": trained["data"]["oov_rate"], "vectors": trained["data"]["vectors"],
        }
        tracking.write_metrics(Path(cfg.outputs.metrics_dir) / f"{variant}-{dataset}.json", result, run_id)
        registers = register_model and variant == "dissan" and result["comparable_to_paper"]
        gate = evaluated["metrics"][GATE_METRIC]
        stage = f"train_dissan@{variant}-{dataset}" if result["comparable_to_paper"] else f"{dataset}_check_dissan"
        result["bundle"] = model_bundle(trained["weights"], stage, "dissan" if registers else None, GATE_METRIC, gate, "max",
                                        scope=dataset)
        if registers:
            result["registry"] = register_once(result["bundle"], run_id,
                                               lambda: log_dissan_model(run_id, trained["weights"], trained["meta"]))
        return result


def main(argv: list[str] | None = None) -> int:
    return run_cli(dissan_flow, "Run the DisSAN flow (train -> evaluate -> register).", "--set data.dataset=snli", argv, presets=VARIANTS,
                   config=(DissanConfig, "dissan"))


if __name__ == "__main__":
    sys.exit(main())
