"""EGTR's declaration for the generic flow: stage ``pretrain`` (Deformable DETR on the dataset's boxes, auxiliary
losses, random crop; detector AP50 on val, ``<dataset>-pretrain.json``) -> stage ``sgg`` (EGTR from that detector)
-> SGDet evaluation with the learning-benchmark predictors -> pyfunc -> registry (``egtr``, alias
``champion_<dataset>``, validation R@50, higher is better).

Stage ``sgg`` keys its checkpoints on its own config plus stage 0's (``recipe.fingerprint``), so a changed relation
head reuses the trained detector and a changed detector retrains both. ``egtr.pretrained`` (a detector ``.pt``)
skips stage 0. ``python -m flows.model egtr --until pretrain`` trains the detector alone.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from models.common import distributed, tracking
from models.common.contract import Evaluation, ModelSpec, RunIdentity, Stage, dvc_address
from models.common.seed import select_device
from models.egtr import recipe, report
from models.egtr.tiny import tiny
from models.egtr.config import VARIANTS, EgtrConfig

def _is_synthetic(cfg: EgtrConfig) -> bool:
    meta = Path(cfg.data_dir) / "meta.json"
    return bool(json.loads(meta.read_text()).get("synthetic")) if meta.exists() else False


def reproducible(cfg: EgtrConfig) -> bool:
    """False when a stage stops on an exploration wall-clock budget (its epochs then depend on the machine)."""
    return not (cfg.pretrain.time_budget_s or cfg.sgg.time_budget_s)


def identity(cfg: EgtrConfig) -> RunIdentity:
    return RunIdentity(
        experiment=f"{cfg.registry.experiment}-{cfg.dataset}", run_name=f"sgg-{cfg.dataset}", dvc_stage=dvc_address("egtr", f"train_egtr@{cfg.dataset}"),
        registered_model=cfg.registry.model_name, gate_metric=cfg.registry.gate_metric, gate_mode=cfg.registry.gate_mode,
        scope=cfg.dataset, data_paths=(cfg.data_dir,),
        tags={"model": "egtr", "dataset": cfg.dataset, "synthetic": str(_is_synthetic(cfg)).lower(),
              "reproducible": str(reproducible(cfg)).lower()})


def _train_stage(cfg: EgtrConfig, run_id: str, stage: str, init_from: str | None = None) -> dict:
    """Stage ``pretrain`` (detector) or ``sgg`` (EGTR); resumable; per-epoch metrics to ``run_id``."""
    log_epoch = tracking.EpochLogger(run_id, "pretrain_" if stage == "pretrain" else "")
    result = recipe.train_stage(cfg, stage, init_from=init_from, on_epoch_end=[log_epoch])
    if not distributed.is_main():  # under torchrun rank 0 reports; the flow takes its result
        return {"weights": result["weights"], "rank": "not 0"}
    log_epoch.backfill(result["history"])
    csv = tracking.write_history_csv(result["history"], report.plots_dir(cfg) / f"{stage}_curve.csv")
    tracking.log_file(run_id, csv, "plots")
    c = tracking.client()
    c.set_tag(run_id, f"{stage}.stopped_by", result["stopped_by"])
    c.set_tag(run_id, f"{stage}.epochs_run", str(result["epochs_run"]))
    return {k: v for k, v in result.items() if k != "history"} | {"last": result["history"][-1]}


def evaluate_detector(cfg: EgtrConfig, run_id: str, weights: str, split: str = "val") -> dict:
    """Detector-only AP50 / AP (pycocotools) of a stage-0 checkpoint."""
    import torch

    from models.egtr.data import SceneGraphDataset, collate
    from models.egtr.evaluate import ground_truth, postprocess
    from models.egtr.metrics import detection_ap50

    model, state = recipe.load_model(weights, "detector")
    model.to(select_device(cfg.device)).eval()
    ds = SceneGraphDataset(cfg.data_dir, split, cfg.augment, train=False, seed=cfg.seed, max_images=cfg.eval.max_images)
    gts, preds = [], []
    with torch.no_grad():
        for pixel_values, pixel_mask, targets in torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate):
            device = next(model.parameters()).device
            out = model(pixel_values.to(device), pixel_mask.to(device))
            for p in postprocess(model, out, targets, cfg, predictor="egtr"):
                gt = ground_truth(ds, p["image_id"])
                gts.append({"boxes": gt["boxes"], "labels": gt["labels"]})
                preds.append(p["det"])
    ap = detection_ap50(gts, preds, state["categories"])
    metrics = {f"pretrain_{split}_AP50": float(ap["AP50"]), f"pretrain_{split}_AP": float(ap["AP"])}
    tracking.log_metrics(run_id, metrics)
    return metrics


def pretrain(cfg: EgtrConfig, run_id: str, done: dict) -> dict:
    """Stage 0, then its AP50 on val into ``<metrics_dir>/<dataset>-pretrain.json``; ``egtr.pretrained`` skips it."""
    if cfg.pretrained:
        return {"weights": cfg.pretrained, "source": "egtr.pretrained"}
    trained = _train_stage(cfg, run_id, "pretrain")
    if not distributed.is_main():
        return trained
    det = evaluate_detector(cfg, run_id, trained["weights"], "val")
    result = {"run_id": run_id, "weights": trained["weights"], "epochs_run": trained["epochs_run"],
              "stopped_by": trained["stopped_by"], "reproducible": reproducible(cfg), "seconds": trained["seconds"], **det}
    tracking.write_metrics(Path(cfg.outputs.metrics_dir) / f"{cfg.dataset}-pretrain.json", result, run_id)
    return result | {"source": "stage pretrain"}


def sgg(cfg: EgtrConfig, run_id: str, done: dict) -> dict:
    return _train_stage(cfg, run_id, "sgg", init_from=done["pretrain"]["weights"])


def evaluate_split(cfg: EgtrConfig, run_id: str, weights: str, split: str, predictors: tuple[str, ...] = ("egtr",)) -> dict:
    """SGDet metrics on ``split`` for each predictor (``egtr``, ``untrained_head``, ``freq_only``)."""
    from models.egtr.evaluate import evaluate

    device = select_device(cfg.device)
    out: dict[str, dict] = {}
    for predictor in predictors:
        model, state = recipe.load_model(weights, "egtr")
        res = evaluate(model.to(device), cfg, split, predictor=predictor)
        per_pred = res.pop("per_predicate_R_at_50")
        prefix = f"{split}_" if predictor == "egtr" else f"{split}_{predictor}_"
        tracking.log_metrics(run_id, {prefix + k: v for k, v in res.items() if isinstance(v, float)})
        if predictor == "egtr" and split == "test":
            report.write_predicate_recall(cfg, run_id, per_pred, state["predicates"])
        out[predictor] = res | {"per_predicate_R_at_50": per_pred}
    tracking.log_json(run_id, out, f"evaluation/{split}.json")
    return out


def evaluate(cfg: EgtrConfig, run_id: str, done: dict) -> Evaluation:
    trained, detector = done["sgg"], done["pretrain"]
    val = evaluate_split(cfg, run_id, trained["weights"], "val")
    test = evaluate_split(cfg, run_id, trained["weights"], "test", ("egtr", "untrained_head", "freq_only"))
    keys = ["R_at_20", "R_at_50", "R_at_100", "mR_at_20", "mR_at_50", "mR_at_100", "ngc_R_at_20", "ngc_R_at_50",
            "ngc_R_at_100", "ngc_mR_at_50", "AP50", "images_per_s", "params_total", "params_relation_head"]
    result = {
        "run_id": run_id, "dataset": cfg.dataset, "synthetic": _is_synthetic(cfg), "detector": detector,
        "sgg_epochs_run": trained["epochs_run"], "sgg_stopped_by": trained["stopped_by"], "sgg_seconds": trained["seconds"],
        "reproducible": reproducible(cfg),
        "val_R_at_50": val["egtr"]["R_at_50"],
        cfg.registry.gate_metric: val["egtr"][cfg.registry.gate_metric.removeprefix("val_")],
        "test": {k: test["egtr"][k] for k in keys if k in test["egtr"]},
        "test_untrained_head": {k: test["untrained_head"][k] for k in ("R_at_20", "R_at_50", "R_at_100", "mR_at_50")},
        "test_freq_only": {k: test["freq_only"][k] for k in ("R_at_20", "R_at_50", "R_at_100", "mR_at_50")},
        "gates": {k: v for k, v in trained["last"].items() if k.startswith("val_rel_gate")},
    }
    for extra in ("oi_R_at_50", "oi_wmAP_rel", "oi_wmAP_phr", "oi_score_wtd"):
        if extra in test["egtr"]:
            result["test"][extra] = test["egtr"][extra]
    tracking.write_metrics(Path(cfg.outputs.metrics_dir) / f"{cfg.dataset}.json", result, run_id)
    return Evaluation(result, result[cfg.registry.gate_metric])


def example_image(cfg: EgtrConfig) -> str:
    from data.sgg_schema import load_split

    sg = load_split(cfg.data_dir, "test")
    return str(sg.image_path(sg.image_ids[0]))


def log_model(cfg: EgtrConfig, run_id: str, done: dict) -> str:
    """Log the pyfunc (signature from its own prediction on one test image) with the detector's requirements."""
    import pandas as pd
    import scipy
    import timm
    import transformers

    from models.egtr.pyfunc import SceneGraphPyfunc

    example = pd.DataFrame([{"image": base64.b64encode(Path(example_image(cfg)).read_bytes()).decode()}])
    extra = [f"transformers=={transformers.__version__}", f"timm=={timm.__version__}", f"scipy=={scipy.__version__}",
             "pycocotools", "pillow"]
    return tracking.log_pyfunc(run_id, SceneGraphPyfunc(), {"weights": done["sgg"]["weights"]}, example,
                               extra_requirements=extra)


MODEL = ModelSpec.of(
    __name__,
    name="egtr",
    description="EGTR (CVPR 2024): one-stage scene graph generation; stage-0 detector -> SGG -> evaluate -> register.",
    config=EgtrConfig,
    stages=(Stage("pretrain", pretrain, distributed=True), Stage("sgg", sgg, distributed=True)),
    variants=VARIANTS,
    data_targets=lambda cfg: (f"preprocess_sgg@{cfg.dataset}",),
    example="sgg.epochs=10",
)
