"""The bilingual LM's committed outputs: ``<outputs.metrics_dir>/<name>.json`` (:func:`name`) (DVC metrics; run ids and times
go to the MLflow run, :func:`models.common.tracking.write_metrics`) and ``<outputs.plots_dir>/<name>/``: the
loss curve of each stage per optimiser step (CSV without times + PNG, with the held-out bits per byte where they
were measured and the unigram baseline's as lines)."""

from __future__ import annotations

from pathlib import Path

from models.common import tracking


def name(cfg) -> str:
    """``<run>-sft`` or ``<run>-base-<tokenizer>`` (the base model is pretrained with each tokenizer to choose one)."""
    return f"{cfg.run}-sft" if cfg.sft.enabled else f"{cfg.run}-base-{cfg.tokenizer.variant}"


def plots_dir(cfg) -> Path:
    return Path(cfg.outputs.plots_dir) / name(cfg)


def metrics_path(cfg) -> Path:
    return Path(cfg.outputs.metrics_dir) / f"{name(cfg)}.json"


def write_curve(cfg, run_id: str | None, stage: str, history: list[dict], baseline: dict | None = None) -> list[Path]:
    if not history:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["loss", "lr", "grad_norm"] + [k for k in ("heldout_bpb_ko", "heldout_bpb_en") if k in history[-1]]
    rows = [{"step": h["step"], **{k: h.get(k, float("nan")) for k in keys}} for h in history]
    csv = tracking.write_history_csv([{k: r[k] for k in keys} for r in rows], plots_dir(cfg) / f"{stage}_curve.csv")
    fig, ax = plt.subplots(1, 2, figsize=(8.4, 3.0))
    steps = [h["step"] for h in history]
    ax[0].plot(steps, [h["loss"] for h in history], lw=1)
    ax[0].set_xlabel("optimiser step")
    ax[0].set_ylabel("training loss (nats / token)")
    evals = [h for h in history if "heldout_bpb_ko" in h]
    for lang, mark in (("ko", "o"), ("en", "s")):
        if evals:
            ax[1].plot([h["step"] for h in evals], [h[f"heldout_bpb_{lang}"] for h in evals], marker=mark,
                       label=f"held-out {lang}")
        if baseline and f"unigram_bpb_{lang}" in baseline:
            ax[1].axhline(baseline[f"unigram_bpb_{lang}"], ls="--", lw=0.8, label=f"unigram {lang}")
    ax[1].set_xlabel("optimiser step")
    ax[1].set_ylabel("bits per byte")
    if evals or baseline:
        ax[1].legend(fontsize=7)
    fig.suptitle(f"bilingual LM {name(cfg)}: {stage} ({cfg.model.preset}, {cfg.model.norm}, "
                 f"{cfg.tokenizer.variant} tokenizer)", fontsize=9)
    fig.tight_layout()
    png = tracking.save_figure(fig, plots_dir(cfg) / f"{stage}_curve.png")
    if run_id:
        for p in (csv, png):
            tracking.log_file(run_id, p, "plots")
    return [csv, png]


def write(cfg, run_id: str, result: dict, done: dict) -> dict:
    base = {k: v for k, v in result.items() if k.startswith("unigram_bpb_")}
    write_curve(cfg, run_id, "pretrain", done["pretrain"]["history"], base)
    if not done["sft"].get("skipped"):
        write_curve(cfg, run_id, "sft", done["sft"]["history"])
    return tracking.write_metrics(metrics_path(cfg), result, run_id)
