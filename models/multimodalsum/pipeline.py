"""MultimodalSum's declaration for the generic flow (``python -m flows.model multimodalsum``): five training stages in
spec order, ``denoise`` (step 0) -> ``text`` (1) -> ``image`` (2a) -> ``table`` (2b) -> ``multimodal`` (3), each
resumable from its own checkpoints and keyed on its config plus its upstream's (:func:`recipe.fingerprints`);
a disabled modality skips its stage (text-only: 2a, 2b and 3), its upstream's weights passing through. Then the
dev beam search and test scoring (:mod:`models.multimodalsum.evaluate`), the metrics file and learning curves
(:mod:`models.multimodalsum.report`), the pyfunc (:mod:`models.multimodalsum.pyfunc`) and the registry: model
``multimodalsum``, aliases ``champion_<run>`` / ``challenger_<run>``, gate = dev mean of ROUGE-1/2/L (higher is
better).

    python -m flows.model multimodalsum --variant synthetic        # all four steps on the synthetic set (CPU)
    python -m flows.model multimodalsum --variant text_only_gold   # steps 0-1 text-only on the gold dev reviews
    python -m flows.model multimodalsum --variant synthetic --until text   # steps 0 and 1 only
"""

from __future__ import annotations

import json
from pathlib import Path

from models.common import distributed, tracking
from models.common.contract import Evaluation, ModelSpec, RunIdentity, Stage, dvc_address
from models.multimodalsum import recipe, report
from models.multimodalsum.config import DVC_REVIEW_TABLES, VARIANTS, MultimodalSumConfig
from models.multimodalsum.tiny import tiny

STAGE_SUMMARY = ("step", "epochs_run", "stopped_by", "best_epoch", "best_val_loss", "train_seconds", "skipped",
                 "tokenizer_vocab", "tokenizer_texts", "hours_k", "train_entities", "val_entities", "skipped_entities")


def is_synthetic(cfg: MultimodalSumConfig) -> bool:
    import pyarrow.parquet as pq

    from data.review_schema import METADATA_KEY

    for folder in cfg.data.folders:
        p = Path(folder) / "entities.parquet"
        if p.is_file():
            meta = pq.read_schema(p).metadata or {}
            if json.loads(meta.get(METADATA_KEY, b"{}")).get("synthetic"):
                return True
    return False


def label(cfg: MultimodalSumConfig) -> str:
    parts = ["TEXT-ONLY (alpha = beta = 0)" if cfg.modalities.text_only else
             "multimodal (" + ", ".join(m for m in ("images", "table") if getattr(cfg.modalities, m)) + ")"]
    if not cfg.model.pretrained:
        parts.append(f"random-init BART d={cfg.model.d_model}, {cfg.model.encoder_layers}+{cfg.model.decoder_layers} layers")
    else:
        parts.append(f"BART from {cfg.model.pretrained}")
    return "; ".join(parts)


def identity(cfg: MultimodalSumConfig) -> RunIdentity:
    r = cfg.registry
    return RunIdentity(
        experiment=f"{r.experiment}-{cfg.run}", run_name=f"multimodalsum-{cfg.run}",
        dvc_stage=dvc_address("multimodalsum", f"train_multimodalsum@{cfg.run}"), registered_model=r.model_name,
        gate_metric=r.gate_metric, gate_mode=r.gate_mode, scope=cfg.run, data_paths=tuple(cfg.data.folders),
        tags={"model": "multimodalsum", "run": cfg.run, "synthetic": str(is_synthetic(cfg)).lower(),
              "text_only": str(cfg.modalities.text_only).lower(), "pad_in_loss": cfg.model.pad_in_loss,
              "pretrained": cfg.model.pretrained or "none", "reproducible": "true"})


def data_targets(cfg: MultimodalSumConfig) -> tuple[str, ...]:
    """The DVC stages that build the run's review tables (the licence-gated Yelp / Amazon sets are built by hand)."""
    return tuple(f"build_review_tables@{Path(f).name}" for f in cfg.data.folders if Path(f).name in DVC_REVIEW_TABLES)


def _tracked(cfg: MultimodalSumConfig, run_id: str, stage: str, train) -> dict:
    """Run one stage with per-epoch MLflow metrics (``<stage>_*``), then its learning curve and run tags."""
    log_epoch = tracking.EpochLogger(run_id, f"{stage}_")
    result = train([log_epoch])
    if not distributed.is_main():  # under torchrun rank 0 reports; the flow takes its result
        return {"weights": result["weights"]}
    log_epoch.backfill(result["history"])
    report.write_curve(cfg, run_id, stage, result["history"])
    c = tracking.client()
    c.set_tag(run_id, f"{stage}.stopped_by", result["stopped_by"])
    c.set_tag(run_id, f"{stage}.epochs_run", str(result["epochs_run"]))
    c.set_tag(run_id, f"{stage}.fingerprint", result["fingerprint"])
    return {k: v for k, v in result.items() if k != "history"} | {"last": result["history"][-1] if result["history"] else {}}


def denoise(cfg: MultimodalSumConfig, run_id: str, done: dict) -> dict:
    return _tracked(cfg, run_id, "denoise", lambda cb: recipe.train_denoise(cfg, on_epoch_end=cb))


def text(cfg: MultimodalSumConfig, run_id: str, done: dict) -> dict:
    return _tracked(cfg, run_id, "text", lambda cb: recipe.train_text(cfg, done["denoise"], on_epoch_end=cb))


def image(cfg: MultimodalSumConfig, run_id: str, done: dict) -> dict:
    return _tracked(cfg, run_id, "image", lambda cb: recipe.train_pivot(cfg, "image", done["text"], on_epoch_end=cb))


def table(cfg: MultimodalSumConfig, run_id: str, done: dict) -> dict:
    return _tracked(cfg, run_id, "table", lambda cb: recipe.train_pivot(cfg, "table", done["text"], on_epoch_end=cb))


def multimodal(cfg: MultimodalSumConfig, run_id: str, done: dict) -> dict:
    return _tracked(cfg, run_id, "multimodal", lambda cb: recipe.train_multimodal(
        cfg, done["text"], done["image"], done["table"], on_epoch_end=cb))


def _without_summaries(obj):
    if isinstance(obj, dict):
        return {k: _without_summaries(v) for k, v in obj.items() if k != "summaries"}
    return obj


def evaluate(cfg: MultimodalSumConfig, run_id: str, done: dict) -> Evaluation:
    """Dev search + test scoring + baselines; the committed metrics file; the gate value (dev mean ROUGE)."""
    from models.multimodalsum.evaluate import evaluate_model

    corpus = recipe.load_corpus(cfg)
    ev = evaluate_model(cfg, done["multimodal"]["weights"], corpus, text_weights=done["text"]["weights"])
    for name, res in ev["datasets"].items():
        for system, part in res.items():
            if isinstance(part, dict) and "summaries" in part:
                tracking.log_json(run_id, part["summaries"], f"evaluation/{name}/{system}_test_summaries.json")
    datasets = _without_summaries(ev["datasets"])
    result = {
        "run_id": run_id, "run": cfg.run, "label": label(cfg), "synthetic": is_synthetic(cfg),
        "text_only": cfg.modalities.text_only, "modalities": cfg.modalities.model_dump(mode="json"),
        "pad_in_loss": cfg.model.pad_in_loss, "reproducible": True,
        "sources": {name: corpus.eval_entities(cfg.data.test_split, name, 1)[0].source for name in corpus.datasets()},
        "steps": {s: {k: done[s][k] for k in STAGE_SUMMARY if k in done[s]} for s in recipe.STAGES},
        cfg.registry.gate_metric: ev["dev_rouge_mean"],
        "datasets": datasets,
    }
    numbers = {}
    for name, res in datasets.items():
        for system, part in res.items():
            if system == "extractive":
                for ex, sc in part.items():
                    numbers.update({f"{name}.test.{ex}.{k}": v for k, v in sc["rouge"].items()})
                continue
            numbers.update({f"{name}.dev.{system}.{k}": v for k, v in part["dev"]["rouge"].items()})
            numbers.update({f"{name}.test.{system}.{k}": v for k, v in part["test"]["rouge"].items()})
            for g, v in (part["test"].get("gates") or {}).items():
                if isinstance(v, float):
                    numbers[f"{name}.test.{system}.{g}"] = v
    numbers[cfg.registry.gate_metric] = ev["dev_rouge_mean"]
    tracking.log_metrics(run_id, numbers)
    report.write_metrics(cfg, run_id, result)
    return Evaluation(result, float(ev["dev_rouge_mean"]))


def generation_settings(cfg: MultimodalSumConfig, result: dict | None = None) -> dict:
    """The beam settings chosen on dev, per entity source (what the pyfunc decodes with)."""
    if result is None:
        path = report.metrics_path(cfg)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no metrics file; the evaluation writes the dev-chosen beam settings there")
        result = json.loads(path.read_text())
    settings = {result["sources"][name]: res["model"]["dev"]["chosen"] for name, res in result["datasets"].items()}
    e = cfg.eval
    return {"settings": settings, "no_repeat_ngram_size": e.no_repeat_ngram_size, "early_stopping": e.early_stopping,
            "decoder_start": e.decoder_start}


def example_request(cfg: MultimodalSumConfig):
    """The input example: the first test entity of the first dataset (reviews, photos, metadata JSON, source)."""
    import pandas as pd

    corpus = recipe.load_corpus(cfg)
    e = corpus.eval_entities(cfg.data.test_split, corpus.datasets()[0], 1)[0]
    row = {"reviews": list(e.reviews), "source": e.source}
    if cfg.modalities.images and e.photos:
        row["photos"] = [str(Path(p).resolve()) for p in e.photos]
    if cfg.modalities.table:
        meta = {k: v for k, v in (e.table or {}).items() if v is not None}
        row["metadata"] = json.dumps(meta, sort_keys=True)
    return pd.DataFrame([row])


def log_model(cfg: MultimodalSumConfig, run_id: str, done: dict) -> str:
    """Log the pyfunc (final weights + the dev-chosen beam settings; signature from its own prediction)."""
    import tempfile

    import tokenizers
    import torchvision
    import transformers

    from models.multimodalsum.pyfunc import MultimodalSumPyfunc

    tmp = Path(tempfile.mkdtemp(prefix="multimodalsum-generation-"))
    gen = tmp / "generation.json"
    gen.write_text(json.dumps(generation_settings(cfg), indent=2, sort_keys=True))
    extra = [f"transformers=={transformers.__version__}", f"tokenizers=={tokenizers.__version__}",
             f"torchvision=={torchvision.__version__.split('+')[0]}", "pillow", "pydantic"]
    return tracking.log_pyfunc(run_id, MultimodalSumPyfunc(), {"weights": done["multimodal"]["weights"],
                                                               "generation": str(gen)},
                               example_request(cfg), extra_requirements=extra,
                               optional_inputs=("photos", "metadata", "source"))


MODEL = ModelSpec.of(
    __name__,
    name="multimodalsum",
    description="MultimodalSum (ACL 2021): self-supervised multimodal opinion summarization; denoise -> text -> image "
                "-> table -> multimodal -> dev beam search -> test ROUGE -> register.",
    config=MultimodalSumConfig,
    stages=tuple(Stage(name, fn, distributed=True) for name, fn in (
        ("denoise", denoise), ("text", text), ("image", image), ("table", table), ("multimodal", multimodal))),
    variants=VARIANTS,
    data_targets=data_targets,
    example="text.epochs=10",
)
