"""EGTR flows: ``egtr-pretrain`` (stage 0, the Deformable-DETR detector) and ``egtr`` (stage 1, SGG), which chain.

``egtr`` starts from ``egtr.pretrained`` when it is set, else it runs ``egtr-pretrain`` as a subflow (which resumes
or reuses its finished checkpoint: same config fingerprint, same directory). Then: SGG training (the three
learning-rate groups, resumable) -> validation and test SGDet evaluation (R@K / mR@K with and without graph
constraint, AP50, images/s; on test also the untrained-relation-head and frequency-only predictors of the
learning benchmark) -> metrics JSON for DVC -> pyfunc -> registered model ``egtr``, gated per dataset on
validation R@50 (aliases ``champion_<dataset>`` / ``challenger_<dataset>``). Synthetic-data runs are tagged
``synthetic=true``.

    python -m flows.egtr                                   # params.yaml egtr section (synthetic scenes)
    python -m flows.egtr --variant vrd_sample              # the 61 real VRD images: a fit check
    python -m flows.egtr_pretrain                          # stage 0 alone
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prefect import flow

from flows.common import model_bundle, register_once, run_cli, run_tags, tracked_run
from models.common import tracking
from models.common.config import load_section
from models.egtr.config import EgtrConfig
from tasks.data import ensure_data
from tasks.egtr import (evaluate_detector, evaluate_egtr, example_image, log_egtr_model, plots_dir,
                        train_egtr_stage)

GATE_METRIC = "val_R_at_50"
VARIANTS = {
    "synthetic": {},
    # 61 real VRD photos, train = val = test: a fit check, not a benchmark (100 classes, 70 predicates). Train and
    # evaluation see the same picture (one size, no flip, no crop), so the question is only whether the model can
    # memorise them; small images and batch 2 buy many updates in ~40 minutes of the 2-core CPU. No early stopping
    # (patience above the epochs): a fixed number of epochs, so the result does not depend on the machine.
    "vrd_sample": {"dataset": "vrd_sample", "data_dir": "data/processed/sgg/vrd_sample", "out_dir": "outputs/egtr/vrd_sample",
                   "detector.num_queries": 40, "augment.hflip": False, "augment.flip_swap": [],
                   "augment.random_crop": False, "augment.scales": [192], "augment.max_size": 320,
                   "augment.eval_size": 192, "augment.eval_max_size": 320,
                   "pretrain.batch_size": 2, "pretrain.epochs": 110, "pretrain.finetune_epochs": 20,
                   "pretrain.patience": 1000,
                   "sgg.batch_size": 2, "sgg.epochs": 40, "sgg.finetune_epochs": 10,
                   "sgg.patience": 1000},
    # Open Images V6 (PySGG files via preprocess_sgg --source openimages; not in the mirror): the official OI
    # settings, connectivity weight 90, random non-matching sampling, one predicate per pair per sample, OI metrics
    "openimages": {"dataset": "openimages", "data_dir": "data/processed/sgg/openimages", "out_dir": "outputs/egtr/openimages",
                   "loss.conn": 90.0, "loss.nonmatching_sampling": "random", "augment.filter_multiple_rels": True,
                   "augment.flip_swap": [], "eval.protocol": "oi"},
}


def _is_synthetic(cfg: EgtrConfig) -> bool:
    meta = Path(cfg.data_dir) / "meta.json"
    return bool(json.loads(meta.read_text()).get("synthetic")) if meta.exists() else False


def reproducible(cfg: EgtrConfig) -> bool:
    """False when a stage stops on an exploration wall-clock budget (its epochs then depend on the machine)."""
    return not (cfg.pretrain.time_budget_s or cfg.sgg.time_budget_s)


def data_target(cfg: EgtrConfig) -> str:
    return f"preprocess_sgg@{cfg.dataset}"


@flow(name="egtr-pretrain", log_prints=True)
def egtr_pretrain_flow(params_path: str = "params.yaml", overrides: dict | None = None, sync_data: bool = False,
                       register_model: bool = False) -> dict:
    """Stage 0: Deformable DETR on the dataset's boxes (auxiliary losses, random crop), detector AP50 on val."""
    overrides = overrides or {}
    cfg = load_section(EgtrConfig, "egtr", params_path, overrides)
    if sync_data:
        ensure_data([data_target(cfg)])
    tags = run_tags("egtr", [cfg.data_dir], stage=None) | {"dataset": cfg.dataset, "stage": "pretrain",
                                                            "synthetic": str(_is_synthetic(cfg)).lower(),
                                                            "reproducible": str(reproducible(cfg)).lower()}
    with tracked_run(f"egtr-{cfg.dataset}", f"pretrain-{cfg.dataset}", tags, "egtr", cfg) as run_id:
        trained = train_egtr_stage(params_path, overrides, run_id, "pretrain")
        det = evaluate_detector(params_path, overrides, run_id, trained["weights"], "val")
        result = {"run_id": run_id, "weights": trained["weights"], "epochs_run": trained["epochs_run"],
                  "stopped_by": trained["stopped_by"], "reproducible": reproducible(cfg), "seconds": trained["seconds"], **det}
        tracking.write_metrics(Path(cfg.metrics_dir) / f"{cfg.dataset}-pretrain.json", result, run_id)
        return result


@flow(name="egtr", log_prints=True)
def egtr_flow(params_path: str = "params.yaml", overrides: dict | None = None, sync_data: bool = False,
              register_model: bool = True) -> dict:
    overrides = overrides or {}
    cfg = load_section(EgtrConfig, "egtr", params_path, overrides)
    if sync_data:
        ensure_data([data_target(cfg)])
    if cfg.pretrained:
        detector = {"weights": cfg.pretrained, "source": "egtr.pretrained"}
    else:
        detector = egtr_pretrain_flow(params_path, overrides, sync_data=False) | {"source": "egtr-pretrain subflow"}
    synthetic = _is_synthetic(cfg)
    tags = run_tags("egtr", [cfg.data_dir], stage=f"train_egtr@{cfg.dataset}") | {
        "dataset": cfg.dataset, "stage": "sgg", "synthetic": str(synthetic).lower(), "detector": detector["weights"],
        "reproducible": str(reproducible(cfg)).lower()}
    with tracked_run(f"egtr-{cfg.dataset}", f"sgg-{cfg.dataset}", tags, "egtr", cfg) as run_id:
        trained = train_egtr_stage(params_path, overrides, run_id, "sgg", init_from=detector["weights"])
        val = evaluate_egtr(params_path, overrides, run_id, trained["weights"], "val", ["egtr"])
        test = evaluate_egtr(params_path, overrides, run_id, trained["weights"], "test",
                             ["egtr", "untrained_head", "freq_only"])
        keys = ["R_at_20", "R_at_50", "R_at_100", "mR_at_20", "mR_at_50", "mR_at_100", "ngc_R_at_20", "ngc_R_at_50",
                "ngc_R_at_100", "ngc_mR_at_50", "AP50", "images_per_s", "params_total", "params_relation_head"]
        result = {
            "run_id": run_id, "dataset": cfg.dataset, "synthetic": synthetic, "detector": detector,
            "sgg_epochs_run": trained["epochs_run"], "sgg_stopped_by": trained["stopped_by"], "sgg_seconds": trained["seconds"],
            "reproducible": reproducible(cfg),
            "val_R_at_50": val["egtr"]["R_at_50"],
            "test": {k: test["egtr"][k] for k in keys if k in test["egtr"]},
            "test_untrained_head": {k: test["untrained_head"][k] for k in ("R_at_20", "R_at_50", "R_at_100", "mR_at_50")},
            "test_freq_only": {k: test["freq_only"][k] for k in ("R_at_20", "R_at_50", "R_at_100", "mR_at_50")},
            "gates": {k: v for k, v in trained["last"].items() if k.startswith("val_rel_gate")},
        }
        for extra in ("oi_R_at_50", "oi_wmAP_rel", "oi_wmAP_phr", "oi_score_wtd"):
            if extra in test["egtr"]:
                result["test"][extra] = test["egtr"][extra]
        tracking.write_metrics(Path(cfg.metrics_dir) / f"{cfg.dataset}.json", result, run_id)
        result["bundle"] = model_bundle(trained["weights"], f"train_egtr@{cfg.dataset}", "egtr" if register_model else None,
                                        GATE_METRIC, result[GATE_METRIC], "max", scope=cfg.dataset)
        if register_model:
            result["registry"] = register_once(result["bundle"], run_id,
                                               lambda: log_egtr_model(run_id, trained["weights"], example_image(cfg)))
        return result


def main(argv: list[str] | None = None) -> int:
    return run_cli(egtr_flow, "Run the EGTR flow (stage-0 detector if needed -> SGG -> evaluate -> register).",
                   "--set sgg.epochs=10", argv, presets=VARIANTS,
                   config=(EgtrConfig, "egtr"))


def main_pretrain(argv: list[str] | None = None) -> int:
    return run_cli(egtr_pretrain_flow, "Run EGTR stage 0 (Deformable-DETR detector pretraining).",
                   "--set pretrain.epochs=10", argv, presets=VARIANTS,
                   config=(EgtrConfig, "egtr"))


if __name__ == "__main__":
    sys.exit(main())
