"""The harness's results in MLflow: resolve a registered model to a Hugging Face directory, log an evaluation run
(per-example records, results table in Markdown and JSON, a per-task bar chart, one metric per task and metric).

A registered model (``models:/bilingual_lm@champion``, ``models:/bilingual_lm/2``, ``runs:/<id>/model``) logged with
MLflow's transformers flavour holds the weights and config under ``model/`` and the tokenizer under
``components/tokenizer/``; :func:`resolve_model` downloads the artifacts and joins the two into one directory that
``AutoModelForCausalLM`` / ``AutoTokenizer`` load, and reports which version it was (name, version, run id, the
alias asked for), so an evaluation run names exactly what it scored.

Metric names: MLflow allows letters, digits, ``_ - . / space``; ``pass@1`` becomes ``pass_at_1`` and lm-eval's
``exact_match,strict-match`` becomes ``exact_match/strict-match``, prefixed by the task (``gsm8k/exact_match/...``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

# the metric a task's bar shows, first match wins
PRIMARY = ("acc", "exact_match,flexible-extract", "exact_match,get-answer", "exact_match,strict-match", "pass@1",
           "chrf", "bits_per_byte", "overall")


def metric_name(task: str, metric: str) -> str:
    """``("humaneval", "pass@1")`` -> ``"humaneval/pass_at_1"``: a name MLflow accepts."""
    name = f"{task}/{metric}".replace("@", "_at_").replace(",", "/")
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def flat_metrics(out: dict) -> dict[str, float]:
    """Every numeric result of every task and group, named by :func:`metric_name` (stderrs included; ``None``s and
    counts left out)."""
    flat: dict[str, float] = {}

    def add(prefix: str, d: dict) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                add(f"{prefix}/{k}", v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("n", "texts"):
                flat[metric_name(prefix, k)] = float(v)

    for t, r in out["results"].items():
        add(t, r)
    for g, r in out["groups"].items():
        add(g, r)
    return flat


def primary(result: dict) -> tuple[str, float] | None:
    """(metric, value) a task's bar shows, or ``None`` (tokenizer compression: one row per text set)."""
    for m in PRIMARY:
        if isinstance(result.get(m), (int, float)):
            return m, float(result[m])
    return None


def bar_chart(out: dict, path: str | Path) -> Path | None:
    """One horizontal bar per task (and group, darker) with its primary metric, one panel per metric; ``None`` when no
    task has one."""
    rows = [(n, *p) for n, r in out["results"].items() if (p := primary(r))]
    rows += [(f"[{n}]", *p) for n, r in out["groups"].items() if (p := primary(r))]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.common.tracking import save_figure

    metrics = list(dict.fromkeys(m for _, m, _ in rows))
    heights = [sum(1 for _, m2, _ in rows if m2 == m) for m in metrics]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 1.2 + 0.28 * sum(heights) + 0.6 * len(metrics)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False, constrained_layout=True)
    for ax, m in zip(axes[:, 0], metrics):
        sel = [(n, v) for n, m2, v in rows if m2 == m]
        names, vals = [n for n, _ in sel], [v for _, v in sel]
        colors = ["#2b5d8a" if n.startswith("[") else "#7fa7cf" for n in names]
        ax.barh(range(len(sel)), vals, color=colors)
        ax.set_yticks(range(len(sel)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(m + (" (lower is better)" if m == "bits_per_byte" else ""), fontsize=8)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.3f}", va="center", fontsize=6)
        if m in ("acc", "pass@1") or m.startswith("exact_match"):
            ax.set_xlim(0, 1.05)
    c = out["config"]
    limit = c["limit"]
    if isinstance(limit, dict):
        limited = sorted({v for v in limit.values() if v is not None})
        limit = "none" if not limited else f"{', '.join(map(str, limited))} docs on some tasks"
    fig.suptitle(f"{Path(c['model']).name or c['model']}  (dtype {c['dtype']}, limit: {limit})", fontsize=9)
    return save_figure(fig, path)


def resolve_model(model: str, dest: str | Path) -> tuple[Path, dict]:
    """A local model directory as is, or an MLflow model URI downloaded into ``dest`` and joined into one Hugging
    Face directory. Returns ``(directory, info)``; ``info`` names the registered version when there is one."""
    p = Path(model)
    if "://" not in model and ":/" not in model:
        return p, {"model": str(p), "source": "local"}
    import mlflow

    from models.common import tracking

    info: dict = {"model": model, "source": "mlflow"}
    m = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", model)
    if m:
        from mlflow.exceptions import MlflowException

        c = tracking.client()
        name, alias, version = m.groups()
        try:
            mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
        except MlflowException as err:
            raise FileNotFoundError(f"{model}: not in the registry of {mlflow.get_tracking_uri()} "
                                    f"({err.message}); train and register it first") from None
        info.update(registered_model=name, alias=alias, version=mv.version, run_id=mv.run_id)
        run_tags = c.get_run(mv.run_id).data.tags
        info["kind"] = run_tags.get("kind")
        uri = f"models:/{name}/{mv.version}"  # the version the alias pointed at when the run started
    else:
        uri = model
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest / "artifacts")))
    weights = local / "model" if (local / "model" / "config.json").is_file() else local
    tok = local / "components" / "tokenizer"
    if not (weights / "config.json").is_file():
        raise FileNotFoundError(f"{model}: no config.json under {local} (not a transformers-flavour model)")
    hf = dest / "hf"
    hf.mkdir(parents=True)
    for src in [weights, tok] if tok.is_dir() else [weights]:
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, hf / f.name)
    return hf, info


def log_evaluation(run_id: str, out: dict, out_dir: str | Path) -> dict[str, float]:
    """Log the results directory written by :func:`eval_harness.evaluate.write_outputs` (records, results.json,
    results.md), the bar chart and every metric to the MLflow run ``run_id``; returns the metrics logged."""
    from models.common import tracking

    out_dir = Path(out_dir)
    chart = bar_chart(out, out_dir / "results_bar.png")
    c = tracking.client()
    for f in sorted(out_dir.glob("samples_*.jsonl")):
        c.log_artifact(run_id, str(f), "samples")
    for name in ("results.json", "results.md"):
        c.log_artifact(run_id, str(out_dir / name))
    if chart is not None:
        c.log_artifact(run_id, str(chart))
    flat = flat_metrics(out)
    tracking.log_metrics(run_id, flat)
    cfg = out["config"]
    tracking.log_params(run_id, {"eval": {k: cfg[k] for k in ("dtype", "device", "batch_size", "max_length", "limit",
                                                              "fewshot_seed", "seed", "tokenizer_sha256")}})
    tracking.log_json(run_id, {"num_fewshot": cfg["num_fewshot"], "prompt_hash": cfg["prompt_hash"],
                               "gen_kwargs": cfg["gen_kwargs"]}, "eval_config.json")
    return flat


def summary(out: dict) -> dict:
    """What the DVC metrics file keeps: per task and group the numbers (no records, no run-specific fields)."""
    keep = {k: out["config"][k] for k in ("tokenizer_sha256", "dtype", "limit", "fewshot_seed", "num_fewshot",
                                          "prompt_hash", "gen_kwargs")}
    return json.loads(json.dumps({"config": keep, "results": out["results"], "groups": out["groups"]}))
