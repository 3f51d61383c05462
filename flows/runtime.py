"""How a command-line run starts, is interrupted and ends: its own Prefect server, signals, stale MLflow runs.

Without ``PREFECT_API_URL``, Prefect would start a temporary server as a child in the run's process group: a
Ctrl-C (SIGINT to the group) or ``timeout`` (SIGTERM) kills it together with the run, and the run then spends
minutes retrying calls to the dead server before it exits; a ``kill -9`` of the run leaves it behind with no
parent. :func:`prefect_server` starts that server itself instead:

- in a session of its own, so a signal to the terminal's process group reaches the run but not the server, and
  the run can report how it ended before the server is stopped (within seconds);
- with ``PR_SET_PDEATHSIG`` (Linux), so the kernel kills it when the run dies, even by ``kill -9``;
- bound to 127.0.0.1 on a free port, started and health-checked within
  ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``.

:func:`interrupts_raise` turns SIGTERM into :class:`Interrupted` (SIGINT already raises KeyboardInterrupt), so
the flow's ``finally`` blocks run: the MLflow run is marked ``KILLED`` (``flows.common.tracked_run``) and the
epoch checkpoints already written are what the next start resumes from. An interrupt never lands inside an MLflow
call (``models.common.tracking.signals_deferred``): one raised between a SQLite write and its commit left the database
locked, and marking the run then failed after MLflow's 20 s busy timeout. A run killed with ``kill -9`` cannot
mark itself; the next run of the same experiment on this host marks it ``KILLED`` (:func:`mark_stale_runs`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from typing import Iterator

HOST_TAG, PID_TAG = "run.host", "run.pid"


class Interrupted(KeyboardInterrupt):
    """The run received SIGTERM (``timeout``, a scheduler, ``kill``)."""


@contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Interrupted` in the main thread (as SIGINT raises KeyboardInterrupt).

    Both signals are unblocked for the block: a run started by a parent that blocks them (some CI runners and job
    wrappers do, and the mask is inherited through exec) would otherwise leave them pending and train on to the
    end (a mask leaked through exec is an accident; an ignored SIGINT, as a non-interactive shell gives its ``&``
    jobs, is a choice and is kept). The mask is restored afterwards."""

    def _raise(signum, frame):  # noqa: ARG001
        raise Interrupted(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, _raise)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGTERM, previous)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the atexit stop still applies to normal exits
        pass


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the tests' servers use it too)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api_url_configured() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


@contextmanager
def prefect_server(verbose: bool = True) -> Iterator[str | None]:
    """A temporary Prefect server for this run unless ``PREFECT_API_URL`` names one; yields its API URL (or None)."""
    if _api_url_configured():
        yield None
        return
    import prefect
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings
    from prefect.settings.context import get_current_settings

    port = free_port()
    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
           "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
         "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
         "--lifespan", "on"],
        env=env, start_new_session=True, preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"the temporary Prefect server exited with {proc.returncode} before answering on {url}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the temporary Prefect server did not answer on {url} within "
                                       f"{PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()} s")
                time.sleep(0.2)
        if verbose:
            print(f"prefect: temporary server pid {proc.pid} on {url} (stopped at the end of this run)", file=sys.stderr, flush=True)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _drain_prefect_workers()
    finally:
        _stop(proc)


def _drain_prefect_workers(timeout: float = 5.0) -> None:
    """Send the logs and events Prefect still holds while the server is up (else the exit retries against a dead one)."""
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for worker in (APILogWorker, EventsWorker):
            try:
                worker.drain_all(timeout=timeout)
            except (RuntimeError, TypeError):  # never started in this process
                pass
    except ImportError:  # pragma: no cover - prefect moved them
        pass


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_identity() -> dict[str, str]:
    """Tags that let a later run tell whether this one is still alive."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def mark_stale_runs(experiment_id: str) -> list[str]:
    """Mark ``KILLED`` the runs of this experiment that are ``RUNNING`` on this host but whose process is gone
    (a ``kill -9``, a power cut); returns their ids."""
    from models.common.tracking import client

    c = client()
    host = socket.gethostname()
    stale = []
    for run in c.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get(HOST_TAG) == host and tags.get(PID_TAG, "").isdigit() and not pid_alive(int(tags[PID_TAG])):
            c.set_tag(run.info.run_id, "run.end", f"process {tags[PID_TAG]} gone (killed); marked by a later run")
            c.set_terminated(run.info.run_id, status="KILLED")
            stale.append(run.info.run_id)
    return stale
