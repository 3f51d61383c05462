"""The one Prefect flow of every model in the catalog: train stages -> evaluate -> log model -> register.

The config is read and validated once, at the start (bad keys or types stop the run before anything starts, one
line per problem); the frozen object is what every task gets, so editing ``params.yaml`` during a run changes
nothing in it. Each training stage is a task (retried once: a retry resumes from its newest checkpoint) that sees
the results of the stages before it. Evaluation writes the committed metrics and plots; the model is logged and
registered (champion/challenger gate on the metric named in the model's ``registry`` section) only when the
weights are new to the registry.

    python -m flows.model melu                                    # the DVC stage models/melu/dvc.yaml:train_melu
    python -m flows.model seqrec --variant sasrec --set data.dataset=Yelp
    python -m flows.model egtr --variant vrd_sample --until pretrain   # stage 0 (the detector) only
    python -m flows.model --list                                  # the catalog
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import (INTERRUPTS, configure_environment, model_bundle, parse_overrides, register_once, run_tags,
                          tracked_run, write_model_bundle)
from models import catalog


def _stage_task(model: str, stage: str, retries: int):
    def run(model: str, stage: str, cfg, run_id: str, done: dict) -> dict:
        from flows.torchrun import run_stage  # one process, or torchrun on the work pool's nproc_per_node x nnodes

        spec = catalog.get(model)
        return run_stage(model, next(s for s in spec.stages if s.name == stage), cfg, run_id, done)

    return task(run, name=f"{model}.{stage}", retries=retries, retry_delay_seconds=5, cache_policy=NO_CACHE)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(model: str, cfg, run_id: str, done: dict):
    return catalog.get(model).evaluate(cfg, run_id, done)


@task(name="log_model", retries=2, retry_delay_seconds=[2, 8], cache_policy=NO_CACHE)
def log_model(model: str, cfg, run_id: str, done: dict) -> str:
    return catalog.get(model).log_model(cfg, run_id, done)


@flow(name="model", flow_run_name="{model}", log_prints=True)
def model_flow(model: str, params_path: str = "params.yaml", overrides: dict | None = None, sync_data: bool = False,
               register_model: bool = True, until: str | None = None, variant: str | None = None) -> dict:
    """Run ``model`` of the catalog on ``params_path`` + the named ``variant``'s overrides + ``overrides``; ``until``
    stops after that training stage (no evaluation, no registration). Returns the result (metrics, registry decision,
    model bundle)."""
    spec = catalog.get(model)
    cfg = spec.load_config(params_path, {**spec.variant(variant), **(overrides or {})})  # once: the frozen object goes to every task
    names = spec.stage_names()
    if until is not None and until not in names:
        raise ValueError(f"until: {until!r} is not a stage of {model}; expected one of {names}")
    if sync_data and spec.data_targets_for(cfg):
        from tasks.data import ensure_data

        ensure_data(spec.data_targets_for(cfg))
    ident = spec.identity(cfg)
    tags = run_tags(ident.registered_model or model, list(ident.data_paths), stage=ident.dvc_stage) | dict(ident.tags)
    with tracked_run(ident.experiment, ident.run_name, tags, spec.section, cfg) as run_id:
        done: dict[str, dict] = {}
        for stage in spec.stages:
            done[stage.name] = _stage_task(model, stage.name, stage.retries)(model, stage.name, cfg, run_id, done)
            if stage.name == until:
                return {"run_id": run_id, "model": model, "stages": done}
        ev = evaluate(model, cfg, run_id, done)
        result = dict(ev.result)
        registers = bool(register_model and ident.registered_model and ev.registrable)
        result["bundle"] = model_bundle(done[names[-1]]["weights"], ev.dvc_stage or ident.dvc_stage,
                                        ident.registered_model if registers else None, ident.gate_metric,
                                        ev.gate_value, ident.gate_mode, scope=ident.scope)
        if registers:
            result["registry"] = register_once(result["bundle"], run_id, lambda: log_model(model, cfg, run_id, done))
        return result


def main(argv: list[str] | None = None) -> int:
    """The command line of every model: ``python -m flows.model MODEL [--variant V] [--set KEY=VALUE ...]``.

    The configuration is validated before anything starts (no Prefect server, no data loaded); a mistake exits
    with status 2 and one line per problem naming its source (the file or the ``--set`` override), the key and
    the expectation. SIGINT / SIGTERM exit 130 / 143 with the MLflow run marked KILLED (``flows.runtime``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--list"]:
        for name in catalog.names():
            spec = catalog.get(name)
            print(f"{name:8s} stages: {' -> '.join(spec.stage_names())}; variants: {', '.join(spec.variants) or '-'}")
        return 0
    if not argv or argv[0].startswith("-") or argv[0] not in catalog.names():
        print(f"usage: python -m flows.model MODEL [options]; MODEL is one of {', '.join(catalog.names())} "
              "(--list describes them; MODEL --help its options)", file=sys.stderr)
        return 2
    model, argv = argv[0], argv[1:]
    spec = catalog.get(model)
    ap = argparse.ArgumentParser(prog=f"python -m flows.model {model}", description=spec.description)
    ap.add_argument("--params", default="params.yaml")
    if spec.variants:
        ap.add_argument("--variant", choices=sorted(spec.variants), help="a named set of overrides: " +
                        "; ".join(f"{k} = {v}" for k, v in spec.variants.items()))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help=f"override a key of the {spec.section} section of the params file, e.g. {spec.example}")
    ap.add_argument("--until", choices=spec.stage_names(), help="stop after this training stage (no evaluation or registration)")
    ap.add_argument("--sync-data", action="store_true", help="run dvc pull/repro for the data first (not from a DVC stage)")
    ap.add_argument("--no-register", action="store_true")
    ap.add_argument("--record", help="write the run id, metrics and registry decision to this JSON file")
    ap.add_argument("--model-out", help="write the final weights and model card to this folder (the DVC stage's output)")
    args = ap.parse_args(argv)
    overrides = spec.variant(getattr(args, "variant", None)) | parse_overrides(args.overrides)
    from data.config import ConfigError
    from models.common.tracking import TrackingStoreError

    try:
        spec.load_config(args.params, overrides)
        configure_environment()  # and a server tracking store answers
    except (ConfigError, TrackingStoreError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from flows.runtime import interrupts_raise, prefect_server

    try:
        with interrupts_raise(), prefect_server():
            result = model_flow(model, args.params, overrides, args.sync_data, not args.no_register, args.until)
    except INTERRUPTS as err:
        code = 130 if type(err) is KeyboardInterrupt else 143
        print(f"interrupted ({'SIGINT' if code == 130 else 'SIGTERM'}): the MLflow run is marked KILLED; the next start "
              "resumes from the last epoch checkpoint", file=sys.stderr)
        return code
    if args.model_out and "bundle" in result:
        write_model_bundle(args.model_out, result["bundle"])
    if args.record:
        from models.common import tracking

        tracking.atomic_write_json(Path(args.record), result)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
