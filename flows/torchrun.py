"""A model's training stage on several processes: the flow's stage task launches ``torchrun``, which runs this module.

How many processes (:func:`launch_settings`), highest first:

1. the flow run's job variables ``nproc_per_node``, ``nnodes``, ``rdzv_endpoint``, ``rdzv_id`` (a deployment's
   ``job_variables`` in ``prefect.yaml`` or a run's), falling back to the defaults the work pool declares (the
   ``gpu`` pool of ``services/stack.py`` declares all four in its base job template);
2. for command-line runs, ``PAPERFLOWS_NPROC_PER_NODE``, ``PAPERFLOWS_NNODES``, ``PAPERFLOWS_RDZV_ENDPOINT``,
   ``PAPERFLOWS_RDZV_ID`` in the environment;
3. a stage section's own ``nproc`` (the bilingual LM's ``pretrain.nproc`` / ``sft.nproc``), else one process.

With one process in all, or for a stage that is not data-parallel (``Stage.distributed`` False), the stage runs in
the task's own process as before. Otherwise the task runs, and waits for::

    python -m torch.distributed.run --nproc_per_node N --nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        --rdzv-id ID -m flows.torchrun MODEL STAGE --job DIR

``DIR`` holds the frozen config the flow validated (``config.json``), the results of the earlier stages
(``done.json``) and the MLflow run id; every rank re-validates the same config, joins the process group and calls the
stage's ``train``; rank 0 alone logs to MLflow and writes checkpoints (:mod:`models.common.distributed`) and the
result (``result.json``), which the task returns. On several nodes the same command runs on each of them (the task
prints it) and the checkpoint directories must be on a shared file system. An interrupt of the task stops the
launcher's process group (SIGTERM, then SIGKILL after 30 s); the next attempt resumes from the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ENV = {"nproc_per_node": "PAPERFLOWS_NPROC_PER_NODE", "nnodes": "PAPERFLOWS_NNODES",
       "rdzv_endpoint": "PAPERFLOWS_RDZV_ENDPOINT", "rdzv_id": "PAPERFLOWS_RDZV_ID"}

# the job variables the gpu pool adds to the process worker's base job template: services/gpu_pool_template.json
# (`prefect work-pool create gpu --type process --base-job-template services/gpu_pool_template.json`; a test checks
# that file is Prefect's default process template plus these)
JOB_VARIABLES = {
    "nproc_per_node": {"title": "Processes per node", "type": "integer", "minimum": 1, "default": 1,
                       "description": "torchrun --nproc_per_node for the data-parallel training stages (one per GPU)"},
    "nnodes": {"title": "Nodes", "type": "integer", "minimum": 1, "default": 1,
               "description": "torchrun --nnodes; the other nodes run the launcher command the task prints"},
    "rdzv_endpoint": {"title": "Rendezvous endpoint", "type": "string", "default": "127.0.0.1:29400",
                      "description": "torchrun --rdzv-endpoint (c10d), HOST:PORT of the node that hosts it"},
    "rdzv_id": {"title": "Rendezvous id", "anyOf": [{"type": "string"}, {"type": "null"}], "default": None,
                "description": "torchrun --rdzv-id shared by all nodes of one job (default: the MLflow run id)"},
}


class LaunchError(RuntimeError):
    """The launch settings are invalid, or the launcher failed."""


@dataclass(frozen=True)
class Launch:
    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str = "127.0.0.1:29400"
    rdzv_id: str | None = None
    source: str = "default"

    @property
    def world(self) -> int:
        return self.nproc_per_node * self.nnodes

    def command(self, model: str, stage: str, job_dir: Path, rdzv_id: str) -> list[str]:
        """The launcher command. On one node the rendezvous is a free port of 127.0.0.1 (two jobs on one machine
        never collide); ``rdzv_endpoint`` is for several nodes."""
        endpoint = self.rdzv_endpoint
        if self.nnodes == 1:
            from flows.runtime import free_port

            endpoint = f"127.0.0.1:{free_port()}"
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={self.nproc_per_node}",
                f"--nnodes={self.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
                f"--rdzv-id={self.rdzv_id or rdzv_id}", "-m", "flows.torchrun", model, stage, "--job", str(job_dir)]


def _parse(values: dict, source: str) -> Launch:
    out = {}
    for key in ("nproc_per_node", "nnodes"):
        if values.get(key) is None:
            continue
        try:
            n = int(values[key])
        except (TypeError, ValueError):
            raise LaunchError(f"{source}: {key}: expected a whole number >= 1, got {values[key]!r}") from None
        if n < 1:
            raise LaunchError(f"{source}: {key}: expected a whole number >= 1, got {n}")
        out[key] = n
    for key in ("rdzv_endpoint", "rdzv_id"):
        if values.get(key):
            out[key] = str(values[key])
    if "rdzv_endpoint" in out and ":" not in out["rdzv_endpoint"]:
        raise LaunchError(f"{source}: rdzv_endpoint: expected HOST:PORT, got {out['rdzv_endpoint']!r}")
    return Launch(**out, source=source)


def _job_variables() -> dict | None:
    """The current flow run's job variables over its work pool's declared defaults; None outside a deployment run."""
    try:
        from prefect import get_client
        from prefect.context import FlowRunContext
    except ImportError:  # pragma: no cover
        return None
    ctx = FlowRunContext.get()
    run = getattr(ctx, "flow_run", None) if ctx else None
    if run is None or not getattr(run, "work_pool_name", None):
        return None
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def read() -> dict:
        async with get_client() as c:
            pool = await c.read_work_pool(run.work_pool_name)
            props = (pool.base_job_template or {}).get("variables", {}).get("properties", {})
            values = {k: props[k].get("default") for k in JOB_VARIABLES if k in props}
            return values | {k: v for k, v in (run.job_variables or {}).items() if k in JOB_VARIABLES}

    return run_coro_as_sync(read())


def launch_settings() -> Launch:
    """See the module docstring: job variables of the flow run, else the environment, else one process."""
    jv = _job_variables()
    if jv and any(v is not None for v in jv.values()):
        return _parse(jv, "job variables")
    env = {k: os.environ.get(v) for k, v in ENV.items()}
    if any(env.values()):
        return _parse(env, "environment (" + ", ".join(ENV.values()) + ")")
    return Launch()


def run_stage(model: str, stage, cfg, run_id: str, done: dict) -> dict:
    """``stage.train(cfg, run_id, done)`` in this process, or under torchrun when the launch asks for more than one."""
    launch = launch_settings() if stage.distributed else Launch()
    own = getattr(getattr(cfg, stage.name, None), "nproc", None)  # a stage config's own count (the LM's nproc)
    if stage.distributed and launch.source == "default" and isinstance(own, int) and own > 1:
        launch = Launch(nproc_per_node=own, source=f"{stage.name}.nproc")
    if launch.world == 1:
        return stage.train(cfg, run_id, done)
    with tempfile.TemporaryDirectory(prefix=f"torchrun-{model}-{stage.name}-") as tmp:
        job = Path(tmp)
        (job / "config.json").write_text(cfg.model_dump_json())
        (job / "done.json").write_text(json.dumps(done, default=str))
        (job / "run_id").write_text(run_id)
        cmd = launch.command(model, stage.name, job, run_id)
        print(f"{model}.{stage.name}: {launch.world} processes ({launch.nproc_per_node} per node x {launch.nnodes} "
              f"nodes, from {launch.source}): {shlex.join(cmd)}", file=sys.stderr, flush=True)
        if launch.nnodes > 1:
            print(f"{model}.{stage.name}: on each other node, from the same checkout and a shared {job}: "
                  f"{shlex.join(cmd)}", file=sys.stderr, flush=True)
        _launch(cmd)
        out = job / "result.json"
        if not out.is_file():
            raise LaunchError(f"{model}.{stage.name}: torchrun exited 0 but rank 0 wrote no {out}")
        return json.loads(out.read_text())


def _launch(cmd: list[str]) -> None:
    from flows.runtime import _die_with_parent

    root = str(Path(__file__).resolve().parents[1])  # the checkout this flow runs from, whatever the working directory
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL, env=env)
    try:
        code = proc.wait()
    except BaseException:  # an interrupt of the task: stop the launcher and its workers, then re-raise
        _stop_group(proc)
        raise
    if code != 0:
        raise LaunchError(f"torchrun exited with {code}: {shlex.join(cmd)}")


def _stop_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    """The entry point on every rank (started by :func:`run_stage` through torchrun)."""
    ap = argparse.ArgumentParser(prog="python -m flows.torchrun", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("stage")
    ap.add_argument("--job", type=Path, required=True, help="the folder with config.json, done.json and run_id")
    args = ap.parse_args(argv)
    from data.atomic import atomic_write_json
    from models import catalog
    from models.common import distributed

    spec = catalog.get(args.model)
    stage = next((s for s in spec.stages if s.name == args.stage), None)
    if stage is None:
        raise SystemExit(f"error: {args.stage!r} is not a stage of {args.model}; expected one of {spec.stage_names()}")
    cfg = spec.config.model_validate_json((args.job / "config.json").read_text())
    done = json.loads((args.job / "done.json").read_text())
    run_id = (args.job / "run_id").read_text().strip()
    distributed.init(_device_of(cfg))
    try:
        result = stage.train(cfg, run_id, done)
        if distributed.is_main():
            atomic_write_json(args.job / "result.json", result)
        distributed.barrier()
    finally:
        distributed.shutdown()
    return 0


def _device_of(cfg) -> str:
    """The device a config asks for (``device``, ``train.device``; ``auto`` = CUDA when present), for the backend."""
    import torch

    spec = getattr(cfg, "device", None) or getattr(getattr(cfg, "train", None), "device", None) or "auto"
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(spec)


if __name__ == "__main__":
    sys.exit(main())
