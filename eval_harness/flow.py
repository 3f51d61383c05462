"""``eval_lm``: the evaluation harness (:mod:`eval_harness`) on a registered LM, as a Prefect flow, a DVC stage and a CLI.

The flow resolves the model (default ``models:/bilingual_lm@champion``: the version the alias names when the flow
starts, downloaded and joined into one Hugging Face directory), evaluates the ``tasks`` in full and the
``generation_tasks`` on their first ``generation_limit`` documents (generation on a CPU is what costs), and records
one MLflow run in the experiment ``experiment``: tags naming the registered model, version and its training run,
the per-example records, ``results.md`` / ``results.json``, a per-task bar chart and every metric; the model
version gets the tag ``eval_lm.run_id``. For DVC it writes the records folder (``out_dir``), the metrics file (the
numbers, no run id) and the chart.

    python -m eval_harness.flow                                  # params.yaml's eval_lm section (the DVC stage)
    python -m eval_harness.flow --set model=models:/bilingual_lm@champion_base --set generation_limit=5
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from data.config import ConfigError, StrictConfig, load_section
from flows.common import INTERRUPTS, configure_environment, parse_overrides


class EvalLMConfig(StrictConfig):
    model: str = "models:/bilingual_lm@champion"  # a local HF directory or an MLflow model URI
    data_root: str = "data/raw"  # the download stages' copies of the mirror
    tasks: list[str] = Field(default_factory=lambda: ["kobest", "click", "wikitext", "tokenizer_compression"])
    generation_tasks: list[str] = Field(default_factory=list)
    generation_limit: int | None = Field(default=None, ge=1)  # first N docs of each generation task; None = all
    gen_kwargs: dict[str, int | float | bool | str] = Field(default_factory=dict)  # lm-eval's --gen_kwargs
    batch_size: int = Field(default=32, ge=1)
    dtype: str = "float32"
    device: str = "cpu"
    torch_threads: int = Field(default=2, ge=1)
    experiment: str = "bilingual_lm-eval"
    out_dir: str = "outputs/bilingual_lm/eval_lm"  # records + results (the stage's DVC output)
    metrics: str = "metrics/bilingual_lm/eval_lm.json"
    plot: str = "plots/bilingual_lm/eval_lm.png"


def load_config(params_path: str | Path = "params.yaml", overrides: dict | None = None) -> EvalLMConfig:
    cfg = load_section(EvalLMConfig, "eval_lm", params_path, overrides)
    from eval_harness.tasks import resolve

    try:
        resolve(cfg.tasks + cfg.generation_tasks)
    except KeyError as err:
        raise ConfigError(f"{params_path}: eval_lm.tasks / generation_tasks: {err}") from None
    return cfg


@task(name="resolve_model", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def resolve_task(model: str, dest: str) -> tuple[str, dict]:
    from eval_harness.mlflow_log import resolve_model

    path, info = resolve_model(model, dest)
    return str(path), info


@task(name="evaluate_tasks", cache_policy=NO_CACHE)
def evaluate_task(model_dir: str, cfg: EvalLMConfig) -> dict:
    import torch

    from eval_harness.evaluate import evaluate
    from eval_harness.tasks import leaves

    torch.set_num_threads(cfg.torch_threads)
    gen = [t for name in cfg.generation_tasks for t in leaves(name)]
    return evaluate(model_dir, cfg.tasks + cfg.generation_tasks, data_root=cfg.data_root,
                    limit={t: cfg.generation_limit for t in gen}, dtype=cfg.dtype, device=cfg.device,
                    batch_size=cfg.batch_size, gen_kwargs=cfg.gen_kwargs or None)


@flow(name="eval_lm", flow_run_name="eval_lm", log_prints=True)
def eval_lm_flow(params_path: str = "params.yaml", overrides: dict | None = None) -> dict:
    """Evaluate the configured model on the harness's tasks; log to MLflow; write the DVC outputs. Returns
    ``{"run_id", "model": info, "results", "groups"}``."""
    from eval_harness import mlflow_log
    from eval_harness.evaluate import results_table, write_outputs
    from models.common import tracking

    cfg = load_config(params_path, overrides)
    with tempfile.TemporaryDirectory(prefix="eval_lm-") as tmp:
        model_dir, info = resolve_task(cfg.model, str(Path(tmp) / "model"))
        out = evaluate_task(model_dir, cfg)
        out["config"]["model"] = cfg.model
        tags = {k: str(v) for k, v in info.items() if v is not None}
        tags = {("model" if k == "model" else f"model.{k}"): v for k, v in tags.items()}
        run_id = tracking.start_run(cfg.experiment, f"eval_lm {cfg.model}", {**tags, "kind": "eval"})
        status = "FAILED"
        try:
            write_outputs(out, Path(cfg.out_dir))
            mlflow_log.log_evaluation(run_id, out, cfg.out_dir)
            if info.get("version"):
                tracking.client().set_model_version_tag(info["registered_model"], info["version"], "eval_lm.run_id",
                                                        run_id)
            status = "FINISHED"
        except INTERRUPTS:
            status = "KILLED"
            raise
        finally:
            tracking.client().set_terminated(run_id, status=status)
    summary = mlflow_log.summary(out)
    # no run id and no version number: both depend on the store (what else was registered first), not on the model
    summary["model"] = {k: v for k, v in info.items() if k not in ("run_id", "version")}
    tracking.atomic_write_json(Path(cfg.metrics), summary)
    chart = Path(cfg.out_dir) / "results_bar.png"
    if chart.is_file():
        Path(cfg.plot).parent.mkdir(parents=True, exist_ok=True)
        tmp_plot = Path(cfg.plot).with_suffix(".png.tmp")
        shutil.copyfile(chart, tmp_plot)
        tmp_plot.replace(cfg.plot)
    print(results_table(out))
    return {"run_id": run_id, "model": info, "results": out["results"], "groups": out["groups"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval_harness.flow", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the eval_lm section, e.g. generation_limit=5")
    args = ap.parse_args(argv)
    overrides = parse_overrides(args.overrides)
    from models.common.tracking import TrackingStoreError

    try:
        load_config(args.params, overrides)
        configure_environment()  # and a server tracking store answers
    except (ConfigError, TrackingStoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from flows.runtime import interrupts_raise, prefect_server

    try:
        with interrupts_raise(), prefect_server():
            result = eval_lm_flow(args.params, overrides)
    except INTERRUPTS as err:
        code = 130 if type(err) is KeyboardInterrupt else 143
        print("interrupted: the evaluation run is marked KILLED; the outputs are written whole or not at all",
              file=sys.stderr)
        return code
    print(json.dumps({"run_id": result["run_id"], "model": result["model"]}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
