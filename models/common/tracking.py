"""MLflow utilities with explicit run ids (safe under Prefect's task runners).

Nothing here calls ``mlflow.set_tracking_uri``: the tracking store comes from ``MLFLOW_TRACKING_URI``
(the Makefile and the flow entry points default it to ``sqlite:///mlflow.db`` in the repository).
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from data.atomic import atomic_file, atomic_write_json, atomic_write_text  # noqa: F401 - re-exported for the recipes

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def ensure_tracking_env() -> str:
    """Default the tracking store for command-line entry points (not for library code)."""
    return os.environ.setdefault("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


class TrackingStoreError(RuntimeError):
    """The tracking store of ``MLFLOW_TRACKING_URI`` cannot be reached (the message names the URI, no password)."""


def redact(uri: str) -> str:
    """``postgresql://user:***@host:port/db``: a URI fit for a message or a log."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def check_tracking_store(uri: str | None = None, timeout: float = 10.0) -> None:
    """Fail fast, before a run starts, when a server store is down: a ``postgresql`` store must accept a connection
    and an ``http(s)`` tracking server must answer ``/health`` within ``timeout`` seconds. Local stores pass."""
    import urllib.request
    from urllib.parse import urlparse

    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme == "postgresql":
        import psycopg

        try:
            psycopg.connect("postgresql://" + uri.split("://", 1)[1], connect_timeout=max(1, int(timeout))).close()
        except psycopg.Error as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise TrackingStoreError(f"MLFLOW_TRACKING_URI={redact(uri)}: cannot connect to PostgreSQL: {first}") from None
    elif scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                pass
        except OSError as err:
            raise TrackingStoreError(f"MLFLOW_TRACKING_URI={redact(uri)}: the tracking server does not answer on "
                                     f"/health: {err}") from None


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive within the block are delivered at its end, to the handlers installed before it.

    An interrupt raised in the middle of an MLflow store write (between a statement and its commit) can leave the
    SQLite database locked by a connection the exception's traceback keeps alive: the run's own ``set_terminated``
    then waits out MLflow's 20 s ``busy_timeout`` and fails (a CI run exited 1 after 23 s instead of 130). Each
    write of :func:`client` therefore runs whole, and the interrupt comes right after it (within the write's time:
    milliseconds). Whatever handler is in force is kept: Python's KeyboardInterrupt, ``flows.runtime``'s
    :class:`Interrupted`, Prefect's ``TerminationSignal``; an ignored signal stays ignored. Only the main thread
    receives signals, so elsewhere the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum, frame):  # noqa: ARG001
        pending.append(signum)

    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is not None and handler is not signal.SIG_IGN:
            saved[sig] = signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)


class _DeferringClient:
    """An ``MlflowClient`` whose every call runs within :func:`signals_deferred`."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            with signals_deferred():
                return attr(*args, **kwargs)

        return call


class _MutedClient:
    """What :func:`client` gives a process that is not rank 0 of a torchrun job: every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def client():
    """The MLflow client of ``MLFLOW_TRACKING_URI``; an interrupt never lands inside one of its calls
    (:func:`signals_deferred`). Under ``torchrun`` only rank 0 logs: other ranks get a client that does nothing."""
    from mlflow import MlflowClient

    from models.common.distributed import is_main

    if not is_main():
        return _MutedClient()
    return _DeferringClient(MlflowClient())


def git_commit(cwd: str | Path = ".") -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def dvc_output_hashes(paths: list[str], lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """The md5 that dvc.lock records for each of ``paths`` as the output of an (upstream) stage.

    DVC writes a stage's lock entry when the stage finishes, so while the train stage runs, the data it
    reads is already locked as the outputs of the download/preprocess stages.
    """
    p = Path(lock_path)
    if not p.exists():
        return {}
    lock = yaml.safe_load(p.read_text()) or {}
    found: dict[str, str] = {}
    for entry in (lock.get("stages") or {}).values():
        for out in entry.get("outs", []):
            if out["path"] in paths:
                found[out["path"]] = out.get("md5", out.get("hash", ""))
    return found


def prefect_flow_run_id() -> str:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id or "")
    except Exception:  # noqa: BLE001 - outside Prefect there is simply no id
        return ""


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def start_run(experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """Create a run (not an 'active' run) and return its id."""
    c = client()
    exp = c.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else c.create_experiment(experiment)
    return c.create_run(exp_id, run_name=run_name, tags=tags).info.run_id


def log_params(run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    flat = flatten(params)
    items = [Param(k, json.dumps(v) if isinstance(v, (list, tuple)) else str(v)) for k, v in flat.items()]
    c = client()
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i : i + 100])


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    c = client()
    items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
    for i in range(0, len(items), 500):
        c.log_batch(run_id, metrics=items[i : i + 500])


def log_json(run_id: str, obj: Any, artifact_file: str) -> None:
    client().log_dict(run_id, obj, artifact_file)


class EpochLogger:
    """``on_epoch_end`` callback logging each epoch's metrics to ``run_id`` (step = epoch + 1, names prefixed);
    ``backfill(history)`` then logs the epochs a resumed run restored from a checkpoint instead of training."""

    def __init__(self, run_id: str, prefix: str = ""):
        self.run_id, self.prefix, self.logged = run_id, prefix, set()

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        log_metrics(self.run_id, {f"{self.prefix}{k}": v for k, v in metrics.items()}, step=epoch + 1)
        self.logged.add(epoch)

    def backfill(self, history: list[dict[str, float]]) -> None:
        for epoch, metrics in enumerate(history):
            if epoch not in self.logged:
                self(epoch, metrics)


def log_file(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    client().log_artifact(run_id, str(path), artifact_path)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt

    from models.common.distributed import is_main

    try:
        if not is_main():  # rank 0 writes the files of a torchrun job
            return Path(path)
        with atomic_file(path, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


# Values that differ between two runs of the same computation: ids of the run, wall-clock times and rates.
RUN_SPECIFIC = re.compile(r"^(run_id|seconds|decided_at|.*_seconds|.*_seconds_per_epoch|.*_per_s)$")


def split_run_specific(obj: Any) -> tuple[Any, dict]:
    """(the result without run ids and timings, those values in the same nesting), for dicts at any depth."""
    if not isinstance(obj, dict):
        return obj, {}
    stable: dict = {}
    specific: dict = {}
    for k, v in obj.items():
        if RUN_SPECIFIC.match(str(k)):
            specific[k] = v
            continue
        stable[k], sub = split_run_specific(v)
        if sub:
            specific[k] = sub
    return stable, specific


def write_metrics(path: str | Path, result: dict, run_id: str) -> dict:
    """The committed metrics file of a train stage: only what the computation determines, so re-running the same
    computation rewrites the same bytes (``git status`` stays clean). Run ids, times and throughput go to the MLflow
    run (``metrics/run_specific.json``, and as metrics ``timing.*``); returns the stable part."""
    from models.common.distributed import is_main

    stable, specific = split_run_specific(result)
    if not is_main():  # rank 0 writes the files of a torchrun job
        return stable
    atomic_write_json(path, stable)
    log_json(run_id, specific, "metrics/run_specific.json")
    timings = {f"timing.{k}": v for k, v in flatten(specific).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if timings:
        log_metrics(run_id, timings)
    return stable


def write_history_csv(history: list[dict[str, float]], path: str | Path) -> Path:
    """Per-epoch metrics as a CSV with an ``epoch`` column (DVC plots), written atomically. Times and rates
    (:data:`RUN_SPECIFIC`) are left out: the file is committed, and the same computation must rewrite the same
    bytes (the per-epoch times are in the MLflow run's metric history)."""
    from models.common.distributed import is_main

    keys = [k for k in history[0] if not RUN_SPECIFIC.match(k)]
    lines = [",".join(["epoch", *keys])]
    lines += [",".join([str(i), *[f"{h[k]:.6f}" for k in keys]]) for i, h in enumerate(history, 1)]
    return atomic_write_text(path, "\n".join(lines) + "\n") if is_main() else Path(path)


def lenient_numbers(schema, optional: tuple[str, ...] | list[str] = ()):
    """The input schema with every float column (and list of floats) typed ``Any``: MLflow's enforcement refuses the
    integers a person writes for a float (``"support_ratings": [5, 3, 4]`` gives "Can not safely convert int64 to
    float64"), so the column's type is left to the pyfunc, which converts and validates each value itself. The
    columns named in ``optional`` may be left out of a request (``required=False``)."""
    from mlflow.types.schema import AnyType, Array, ColSpec, DataType, Schema

    floats = (DataType.double, DataType.float)
    cols = []
    for col in schema.inputs:
        t = col.type
        if t in floats:
            t = AnyType()
        elif isinstance(t, Array) and t.dtype in floats:
            t = Array(AnyType())
        cols.append(ColSpec(t, col.name, required=col.required and col.name not in optional))
    return Schema(cols)


def log_pyfunc(run_id: str, python_model, artifacts: dict[str, str], input_example,
               extra_requirements: list[str] = (), optional_inputs: tuple[str, ...] | list[str] = ()) -> str:
    """Log ``python_model`` to ``run_id`` as ``model`` with a signature inferred from its own prediction on
    ``input_example`` (the columns in ``optional_inputs`` not required in a request), the project's ``models`` and
    ``data`` packages as code (models import the config and data-contract modules of ``data``), and pinned
    requirements (plus the model's own ``extra_requirements``); return its URI."""
    import mlflow
    import pandas as pd
    import torch
    from mlflow.models import infer_signature

    ctx = type("Context", (), {"artifacts": artifacts})()
    python_model.load_context(ctx)
    signature = infer_signature(input_example, python_model.predict(ctx, input_example))
    signature.inputs = lenient_numbers(signature.inputs, optional_inputs)
    repo_root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as tmp, signals_deferred(), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=python_model, artifacts=artifacts, signature=signature,
            input_example=input_example, code_paths=[str(python_package_copy(repo_root / "models", tmp)), str(python_package_copy(repo_root / "data", tmp))],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                              f"pandas=={pd.__version__}", "pyarrow<26", "numpy", *extra_requirements],
        )
    return info.model_uri


def python_package_copy(package: Path, dest: str | Path) -> Path:
    """``dest/<package name>/``: the package's ``.py`` files only (``data/`` also holds the datasets, which must
    never travel with a model; ``models/<m>/`` holds its DVC files, which DVC would collect from an artifact store
    inside the repository as pipelines of their own)."""
    import shutil

    out = Path(dest) / package.name
    for src in package.rglob("*.py"):
        rel = src.relative_to(package)
        if not all((package.joinpath(*rel.parts[:i]) / "__init__.py").exists() for i in range(1, len(rel.parts))):
            continue  # inside a folder that is not a subpackage (raw/, processed/)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out / rel)
    return out
