"""Prefect tasks of the EGTR flows: the two training stages, SGDet evaluation (with the learning-benchmark
predictors), figures, and the pyfunc. Files for DVC go under ``plots_dir/<dataset>/``."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from models.common import tracking
from models.common.config import load_section
from models.common.seed import select_device
from models.egtr import recipe
from models.egtr.config import EgtrConfig


def _cfg(params_path: str, overrides: dict) -> EgtrConfig:
    return load_section(EgtrConfig, "egtr", params_path, overrides)


def plots_dir(cfg: EgtrConfig) -> Path:
    return Path(cfg.plots_dir) / cfg.dataset


@task(retries=1, retry_delay_seconds=5)
def train_egtr_stage(params_path: str, overrides: dict, run_id: str, stage: str, init_from: str | None = None) -> dict:
    """Stage ``pretrain`` (detector) or ``sgg`` (EGTR); resumable; per-epoch metrics to ``run_id``."""
    cfg = _cfg(params_path, overrides)
    prefix = "pretrain_" if stage == "pretrain" else ""
    log_epoch = tracking.EpochLogger(run_id, prefix)
    result = recipe.train_stage(cfg, stage, init_from=init_from, on_epoch_end=[log_epoch])
    log_epoch.backfill(result["history"])
    csv = tracking.write_history_csv(result["history"], plots_dir(cfg) / f"{stage}_curve.csv")
    tracking.log_file(run_id, csv, "plots")
    c = tracking.client()
    c.set_tag(run_id, f"{stage}.stopped_by", result["stopped_by"])
    c.set_tag(run_id, f"{stage}.epochs_run", str(result["epochs_run"]))
    return {k: v for k, v in result.items() if k != "history"} | {"last": result["history"][-1]}


def _plot_predicate_recall(per_predicate: list[float], names: list[str], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    vals = np.asarray([np.nan if v is None else v for v in per_predicate], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(names) + 1.5), 3.2))
    ax.bar(range(len(names)), np.nan_to_num(vals), color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("R@50 (graph constraint)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return tracking.save_figure(fig, path)


@task
def evaluate_egtr(params_path: str, overrides: dict, run_id: str, weights: str, split: str,
                  predictors: list[str] = ("egtr",)) -> dict:
    """SGDet metrics on ``split`` for each predictor (``egtr``, ``untrained_head``, ``freq_only``)."""
    from models.egtr.evaluate import evaluate

    cfg = _cfg(params_path, overrides)
    device = select_device(cfg.device)
    out: dict[str, dict] = {}
    for predictor in predictors:
        model, state = recipe.load_model(weights, "egtr")
        res = evaluate(model.to(device), cfg, split, predictor=predictor)
        per_pred = res.pop("per_predicate_R_at_50")
        prefix = f"{split}_" if predictor == "egtr" else f"{split}_{predictor}_"
        tracking.log_metrics(run_id, {prefix + k: v for k, v in res.items() if isinstance(v, float)})
        if predictor == "egtr" and split == "test":
            fig = _plot_predicate_recall(per_pred, state["predicates"], f"EGTR on {cfg.dataset} test: per-predicate R@50",
                                         plots_dir(cfg) / "test_predicate_recall.png")
            tracking.log_file(run_id, fig, "figures")
            rows = ["predicate,R_at_50"] + [f"{n},{'' if v is None or v != v else round(v, 6)}"
                                            for n, v in zip(state["predicates"], per_pred)]
            tracking.atomic_write_text(plots_dir(cfg) / "test_predicate_recall.csv", "\n".join(rows) + "\n")
        out[predictor] = res | {"per_predicate_R_at_50": per_pred}
    tracking.log_json(run_id, out, f"evaluation/{split}.json")
    return out


@task
def evaluate_detector(params_path: str, overrides: dict, run_id: str, weights: str, split: str = "val") -> dict:
    """Detector-only AP50 / AP (pycocotools) of a stage-0 checkpoint."""
    import torch

    from models.egtr.data import SceneGraphDataset, collate
    from models.egtr.evaluate import ground_truth, postprocess
    from models.egtr.metrics import detection_ap50

    cfg = _cfg(params_path, overrides)
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


@task(retries=2, retry_delay_seconds=[2, 8])
def log_egtr_model(run_id: str, weights: str, example_image: str) -> str:
    """Log the pyfunc (signature from its own prediction on one test image) with the detector's requirements."""
    import base64

    import pandas as pd
    import scipy
    import timm
    import transformers

    from models.egtr.pyfunc import SceneGraphPyfunc

    example = pd.DataFrame([{"image": base64.b64encode(Path(example_image).read_bytes()).decode()}])
    extra = [f"transformers=={transformers.__version__}", f"timm=={timm.__version__}", f"scipy=={scipy.__version__}",
             "pycocotools", "pillow"]
    return tracking.log_pyfunc(run_id, SceneGraphPyfunc(), {"weights": weights}, example, extra_requirements=extra)


def example_image(cfg: EgtrConfig) -> str:
    from models.egtr.schema import load_split

    sg = load_split(cfg.data_dir, "test")
    return str(sg.image_path(sg.image_ids[0]))

