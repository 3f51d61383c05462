"""Start and stop the server stack: PostgreSQL -> S3-compatible store -> MLflow tracking server -> Prefect server ->
a process worker on the ``gpu`` pool. Every server binds 127.0.0.1; every port is a parameter.

    python -m services.stack start                 # or: make services
    eval "$(python -m services.stack env)"         # MLFLOW_TRACKING_URI, PREFECT_API_URL, the S3 endpoint for DVC
    python -m flows.model melu                     # the flows run unchanged against the stack
    python -m services.stack stop                  # or: make services-stop

- **PostgreSQL**: a cluster in ``<root>/postgres/data`` made by Debian's ``initdb`` and run by ``pg_ctl``, one
  database for MLflow (``mlflow``) and one for Prefect (``prefect``); password authentication (a generated password in
  ``<root>/stack.json``, mode 0600). As root, the cluster runs as the ``postgres`` system user (PostgreSQL refuses
  root). ``--postgres-uri`` uses an existing server instead (the two databases are created when missing).
- **S3**: ``--s3-endpoint`` (default ``$MLFLOW_S3_ENDPOINT_URL``) names any S3-compatible endpoint, with the usual
  ``AWS_*`` credentials; without one, ``moto_server`` (the tests' S3) runs on ``--s3-port``. The bucket (``--bucket``)
  is created when missing; MLflow's artifacts go to ``s3://<bucket>/mlflow`` (proxied by the tracking server, so
  clients need no S3 credentials) and the DVC remote ``storage`` is ``s3://<bucket>/dvc`` (``.dvc/config``).
- **MLflow**: ``mlflow server`` on the ``mlflow`` database with ``--artifacts-destination``.
- **Prefect**: ``prefect server start`` on the ``prefect`` database (``postgresql+asyncpg``), and ``prefect worker
  start --pool gpu --type process`` in the repository, with ``MLFLOW_TRACKING_URI`` pointing at the tracking server.

Each process runs in a session of its own with its output in ``<root>/logs/<name>.log``; ``<root>/stack.json`` records
what runs (written after each start, so ``stop`` also cleans up after a start that failed half way). A component that
does not become healthy stops the start: what was started is stopped again and the error names the component, its
address and the end of its log. ``stop`` sends SIGTERM to each process group in reverse order (then SIGINT after
``--stop-timeout``, SIGKILL 30 s later) and stops PostgreSQL with ``pg_ctl stop -m fast``; it leaves no process behind.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from models.common.tracking import redact

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PG_USER = "paperflows"
DATABASES = ("mlflow", "prefect")
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class StackError(RuntimeError):
    """A component of the stack could not be started or reached (the message names it and its address)."""


@dataclass
class Settings:
    root: Path = Path(".services")
    pg_port: int = 5433
    postgres_uri: str | None = None  # an existing server: postgresql://user:password@host:port (no database)
    s3_port: int = 9000
    s3_endpoint: str | None = None  # an existing S3-compatible endpoint; None = moto_server on s3_port
    bucket: str = "paperflows"
    mlflow_port: int = 5000
    prefect_port: int = 4200
    pool: str = "gpu"
    worker: bool = True
    ui: bool = False
    start_timeout: float = 180.0
    stop_timeout: float = 60.0


@dataclass
class State:
    settings: dict
    postgres: dict = field(default_factory=dict)  # {"data": dir, "run_as": user|None, "uri": base uri, "local": bool}
    processes: dict = field(default_factory=dict)  # name -> what _track records
    env: dict = field(default_factory=dict)  # what `env` prints

    def save(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / "stack.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the database password
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2, default=str)
        os.replace(tmp, root / "stack.json")

    @classmethod
    def load(cls, root: Path) -> "State | None":
        path = root / "stack.json"
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))


# ------------------------------------------------------------------------------------------------------ helpers
def _bin(name: str) -> str:
    """A console script of this environment (next to the interpreter), else from PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise StackError(f"{name}: not found next to {sys.executable} or on PATH")
    return found


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):  # Debian's layout
        if (d / name).exists():
            return str(d / name)
    raise StackError(f"{name}: PostgreSQL's server programs are not installed (Debian: apt install postgresql)")


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: a TIME_WAIT is not "in use"
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _require_free(name: str, port: int) -> None:
    if not port_free(port):
        raise StackError(f"{name}: port {HOST}:{port} is already in use (choose another with its --*-port option, "
                         "or stop what runs there)")


def _tail(path: Path, n: int = 2500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return 200 <= r.status < 300
    except (OSError, urllib.error.HTTPError):
        return False


def _wait(name: str, check, proc: subprocess.Popen | None, log: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{name}: exited with status {proc.returncode} before {what}; end of {log}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise StackError(f"{name}: not {what} within {timeout:.0f} s; end of {log}:\n{_tail(log)}")
        time.sleep(0.5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie leader of our own still counts as the group; reap it if it is our child
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(pgid: int, timeout: float) -> bool:
    """SIGTERM to the process group; after ``timeout`` a SIGINT (a second interrupt is Prefect's "force": a worker
    under load was seen to stall in its graceful shutdown), SIGKILL 30 s later. True if it had to be killed."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGINT, 30.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return False
            time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 10
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def _spawn(name: str, cmd: list[str], env: dict, logs: Path, cwd: Path | None = None) -> subprocess.Popen:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


# ------------------------------------------------------------------------------------------------------ PostgreSQL
def _runuser() -> str:
    """util-linux's runuser (in /usr/sbin, which a plain user's PATH often lacks)."""
    for found in (shutil.which("runuser"), "/usr/sbin/runuser", "/sbin/runuser"):
        if found and Path(found).exists():
            return found
    raise StackError("postgres: running as root needs util-linux's runuser to start PostgreSQL as 'postgres' "
                     "(not found), or pass --postgres-uri")


def _as_user(run_as: str | None, cmd: list[str]) -> list[str]:
    return [_runuser(), "-u", run_as, "--", *cmd] if run_as else cmd


def _pg_run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise StackError("PostgreSQL refuses to run as root and there is no 'postgres' user to run it as "
                         "(run the stack as an unprivileged user, or pass --postgres-uri)") from None
    return "postgres"


def _chown_tree(path: Path, user: str) -> None:
    import pwd

    pw = pwd.getpwnam(user)
    for p in [path, *path.rglob("*")]:
        os.chown(p, pw.pw_uid, pw.pw_gid)


def _ensure_traversable(path: Path, user: str) -> None:
    """Every folder above ``path`` must let ``user`` through (a 0700 home or temporary folder does not)."""
    for parent in [path, *path.parents]:
        if parent.exists():
            r = subprocess.run(_as_user(user, ["test", "-x", str(parent)]), capture_output=True)
            if r.returncode != 0:
                raise StackError(f"postgres: the '{user}' user cannot enter {parent} (mode "
                                 f"{oct(parent.stat().st_mode & 0o777)}); put --root where it can (e.g. under /srv or "
                                 "/tmp), or pass --postgres-uri")


def start_postgres(s: Settings, state: State) -> str:
    """The base URI (``postgresql://user:password@127.0.0.1:port``) of a running cluster with both databases."""
    if s.postgres_uri:
        base = s.postgres_uri.rstrip("/")
        state.postgres = {"uri": base, "local": False}
    else:
        root = s.root.resolve() / "postgres"
        data, run = root / "data", root / "run"
        run_as = _pg_run_as()
        root.mkdir(parents=True, exist_ok=True)
        run.mkdir(exist_ok=True)
        logs = s.root.resolve() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        pw_file = root / "password"
        if not (data / "PG_VERSION").is_file():
            if data.exists():
                shutil.rmtree(data)  # a half-made cluster from an interrupted initdb
            pw_file.write_text(secrets.token_urlsafe(18))
            os.chmod(pw_file, 0o600)
            if run_as:
                _ensure_traversable(root, run_as)
                _chown_tree(root, run_as)
            r = subprocess.run(_as_user(run_as, [_pg_bin("initdb"), "-D", str(data), "-U", PG_USER, "-E", "UTF8",
                                                 "--locale=C.UTF-8", "--auth=scram-sha-256", f"--pwfile={pw_file}"]),
                               capture_output=True, text=True, cwd="/")
            if r.returncode != 0:
                raise StackError(f"postgres: initdb -D {data} failed:\n{(r.stdout + r.stderr)[-2500:]}")
        elif run_as:
            _chown_tree(run, run_as)
        _require_free("postgres", s.pg_port)
        log = logs / "postgres.log"
        if run_as:  # pg_ctl opens its log as the user it runs as
            log.touch(exist_ok=True)
            _chown_tree(log, run_as)
        r = subprocess.run(_as_user(run_as, [_pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t",
                                             str(int(s.start_timeout)), "-o",
                                             f"-p {s.pg_port} -k {run} -c listen_addresses={HOST}", "start"]),
                           capture_output=True, text=True, cwd="/")
        if r.returncode != 0:
            raise StackError(f"postgres: pg_ctl start on {HOST}:{s.pg_port} failed:\n{(r.stdout + r.stderr)[-1500:]}\n"
                             f"end of {log}:\n{_tail(log)}")
        base = f"postgresql://{PG_USER}:{pw_file.read_text().strip()}@{HOST}:{s.pg_port}"
        state.postgres = {"uri": base, "local": True, "data": str(data), "run_as": run_as}
    state.save(s.root)
    create_databases(base)
    return base


def create_databases(base: str, names=DATABASES) -> None:
    import psycopg

    try:
        with psycopg.connect(f"{base}/postgres", autocommit=True, connect_timeout=10) as conn:
            have = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
            for name in names:
                if name not in have:
                    conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as err:
        raise StackError(f"postgres: cannot connect to {redact(base)}/postgres: {err}".strip()) from None


def stop_postgres(state: State) -> None:
    pg = state.postgres
    if not pg.get("local") or not Path(pg["data"], "postmaster.pid").exists():
        return
    subprocess.run(_as_user(pg.get("run_as"), [_pg_bin("pg_ctl"), "-D", pg["data"], "-m", "fast", "-w", "-t", "60",
                                                "stop"]), capture_output=True, text=True, cwd="/")


# ------------------------------------------------------------------------------------------------------ the stack
def s3_env(state: State) -> dict:
    return {k: v for k, v in state.env.items() if k.startswith("AWS_") or k == "MLFLOW_S3_ENDPOINT_URL"}


def ensure_bucket(endpoint: str, bucket: str, env: dict) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                      aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                      region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"))
    try:
        names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if bucket not in names:
            s3.create_bucket(Bucket=bucket)
    except Exception as err:  # botocore's errors do not share one base class with connection errors
        raise StackError(f"s3: bucket {bucket!r} at {endpoint}: {err}") from None


def _track(state: State, s: Settings, name: str, proc: subprocess.Popen, cmd: list[str], url: str, env: dict,
           health: str, cwd: Path | None = None) -> None:
    """Record a started process with what :func:`restart` needs to start it again: its command, working folder,
    the environment variables the stack set or removed for it (stack.json is mode 0600), and its health check."""
    state.processes[name] = {"pid": proc.pid, "pgid": proc.pid, "cmd": cmd, "url": url, "health": health,
                             "cwd": str(cwd) if cwd else None,
                             "env": {k: v for k, v in env.items() if os.environ.get(k) != v},
                             "unset": sorted(k for k in os.environ if k not in env),
                             "log": str(s.root.resolve() / "logs" / f"{name}.log")}
    state.save(s.root)


def _launch(state: State, s: Settings, name: str, cmd: list[str], env: dict, url: str, health: str, what: str,
            cwd: Path | None = None) -> float:
    """Start one process of the stack, record it, wait until its health check passes; returns the seconds taken."""
    t = time.monotonic()
    proc = _spawn(name, cmd, env, s.root.resolve() / "logs", cwd=cwd)
    _track(state, s, name, proc, cmd, url, env, health, cwd=cwd)
    p = state.processes[name]
    _wait(name, lambda: _healthy(p), proc, Path(p["log"]), s.start_timeout, what)
    return time.monotonic() - t


def _healthy(p: dict) -> bool:
    kind, _, arg = p["health"].partition(" ")
    return _worker_online(p["url"], arg) if kind == "worker" else _http_ok(arg)


def restart(root: Path, name: str, timeout: float = 180.0) -> float:
    """Stop one process of the stack (SIGTERM to its group) and start it again as it was started; returns the
    seconds until it is healthy again (the tests restart the tracking server in the middle of a run)."""
    state = State.load(root)
    if state is None or name not in state.processes:
        raise StackError(f"{name}: not a process of the stack in {root.resolve()}")
    p = state.processes[name]
    t0 = time.monotonic()
    stop_group(p["pgid"], timeout)
    env = {k: v for k, v in os.environ.items() if k not in p["unset"]} | p["env"]
    proc = _spawn(name, p["cmd"], env, Path(p["log"]).parent, cwd=Path(p["cwd"]) if p["cwd"] else None)
    p.update(pid=proc.pid, pgid=proc.pid)
    state.save(root)
    _wait(name, lambda: _healthy(p), proc, Path(p["log"]), timeout, "healthy again")
    return time.monotonic() - t0


def start(s: Settings) -> State:
    """Start every component (see the module doc); on failure, stop what was started and raise :class:`StackError`."""
    s.root.mkdir(parents=True, exist_ok=True)
    old = State.load(s.root)
    if old is not None and any(_group_alive(p["pgid"]) for p in old.processes.values()):
        raise StackError(f"a stack already runs from {s.root.resolve()} (python -m services.stack stop --root {s.root})")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()}
    state = State(settings=settings)
    for name, port, wanted in (("moto_server", s.s3_port, not s.s3_endpoint), ("mlflow", s.mlflow_port, True),
                               ("prefect", s.prefect_port, True)):
        if wanted:
            _require_free(name, port)
    try:
        t0 = time.monotonic()
        timings = {}
        base = start_postgres(s, state)
        timings["postgres"] = time.monotonic() - t0
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "DO_NOT_TRACK": "1"}
        env.pop("PREFECT_API_KEY", None)
        if s.s3_endpoint:
            endpoint = s.s3_endpoint
        else:
            endpoint = f"http://{HOST}:{s.s3_port}"
            env.update(MOTO_CREDENTIALS)
            _launch(state, s, "moto_server", [_bin("moto_server"), "-H", HOST, "-p", str(s.s3_port)], env, endpoint,
                    f"http {endpoint}/moto-api/", "answering")
        aws = {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION") if k in env}
        ensure_bucket(endpoint, s.bucket, aws)
        timings["s3"] = time.monotonic() - t0 - sum(timings.values())
        # moto's fixed test credentials are exported; a real store's stay where the user keeps them
        state.env.update({"MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint,
                          **({} if s.s3_endpoint else aws)})
        env.update({"MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint})

        mlflow_url = f"http://{HOST}:{s.mlflow_port}"
        cmd = [_bin("mlflow"), "server", "--backend-store-uri", f"{base}/mlflow", "--artifacts-destination",
               f"s3://{s.bucket}/mlflow", "--host", HOST, "--port", str(s.mlflow_port), "--workers", "1"]
        timings["mlflow"] = _launch(state, s, "mlflow", cmd, env, mlflow_url, f"http {mlflow_url}/health",
                                    f"answering on {mlflow_url}/health")
        state.env["MLFLOW_TRACKING_URI"] = mlflow_url

        prefect_api = f"http://{HOST}:{s.prefect_port}/api"
        penv = {**env, "PREFECT_HOME": str(s.root.resolve() / "prefect_home"),
                "PREFECT_API_DATABASE_CONNECTION_URL": base.replace("postgresql://", "postgresql+asyncpg://", 1) + "/prefect",
                "PREFECT_UI_ENABLED": "true" if s.ui else "false"}
        penv.pop("PREFECT_API_URL", None)
        cmd = [_bin("prefect"), "server", "start", "--host", HOST, "--port", str(s.prefect_port)]
        timings["prefect"] = _launch(state, s, "prefect", cmd, penv, prefect_api, f"http {prefect_api}/health",
                                     f"answering on {prefect_api}/health")
        state.env["PREFECT_API_URL"] = prefect_api

        if s.worker:
            t = time.monotonic()
            wenv = {**env, **state.env, "PREFECT_HOME": str(s.root.resolve() / "prefect_home")}
            wenv.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
            if not _http_ok(f"{prefect_api}/work_pools/{s.pool}"):  # the README's command, once per server
                # the process template plus the torchrun job variables (nproc_per_node, nnodes, rdzv_*)
                r = subprocess.run([_bin("prefect"), "work-pool", "create", s.pool, "--type", "process",
                                    "--base-job-template", str(REPO / "services" / "gpu_pool_template.json")], env=wenv,
                                   capture_output=True, text=True, timeout=120)
                if r.returncode != 0:
                    raise StackError(f"prefect: work-pool create {s.pool} failed:\n{(r.stdout + r.stderr)[-2000:]}")
            cmd = [_bin("prefect"), "worker", "start", "--pool", s.pool, "--type", "process"]
            _launch(state, s, "worker", cmd, wenv, prefect_api, f"worker {s.pool}", f"online in pool {s.pool!r}", cwd=REPO)
            timings["worker"] = time.monotonic() - t
        state.settings["start_seconds"] = {k: round(v, 1) for k, v in timings.items()}
        state.save(s.root)
        return state
    except BaseException:
        stop(s.root, s.stop_timeout)
        raise


def _worker_online(api: str, pool: str) -> bool:
    req = urllib.request.Request(f"{api}/work_pools/{pool}/workers/filter", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return any(w.get("status") == "ONLINE" for w in json.loads(r.read()))
    except (OSError, ValueError):
        return False


def stop(root: Path, timeout: float = 60.0) -> dict:
    """Stop what ``root/stack.json`` records, in reverse order. Returns {name: "stopped" | "killed" | "not running"}."""
    state = State.load(root)
    if state is None:
        return {}
    out = {}
    for name in reversed(list(state.processes)):
        p = state.processes[name]
        if not _group_alive(p["pgid"]):
            out[name] = "not running"
            continue
        out[name] = "killed" if stop_group(p["pgid"], timeout) else "stopped"
    if state.postgres.get("local"):
        running = Path(state.postgres["data"], "postmaster.pid").exists()
        stop_postgres(state)
        out["postgres"] = "stopped" if running else "not running"
    state.processes = {}
    state.save(root)
    return out


def status(root: Path) -> dict:
    state = State.load(root)
    if state is None:
        return {}
    out = {name: ("running" if _group_alive(p["pgid"]) else "stopped") + f" ({p['url']})"
           for name, p in state.processes.items()}
    if state.postgres.get("local"):
        up = Path(state.postgres["data"], "postmaster.pid").exists()
        out = {"postgres": ("running" if up else "stopped") + f" ({redact(state.postgres['uri'])})", **out}
    return out


def env_lines(root: Path) -> list[str]:
    import shlex

    state = State.load(root)
    if state is None or not state.env:
        raise StackError(f"no stack runs from {root.resolve()} (python -m services.stack start --root {root})")
    return [f"export {k}={shlex.quote(str(v))}" for k, v in state.env.items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.stack", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["start", "stop", "status", "env"])
    d = Settings()
    ap.add_argument("--root", type=Path, default=d.root, help="data, logs and state of the stack (default %(default)s)")
    ap.add_argument("--pg-port", type=int, default=d.pg_port)
    ap.add_argument("--postgres-uri", help="an existing PostgreSQL server (postgresql://user:password@host:port)")
    ap.add_argument("--s3-port", type=int, default=d.s3_port, help="moto_server's port when no --s3-endpoint is given")
    ap.add_argument("--s3-endpoint", default=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None,
                    help="an existing S3-compatible endpoint (default $MLFLOW_S3_ENDPOINT_URL; none: moto_server)")
    ap.add_argument("--bucket", default=d.bucket)
    ap.add_argument("--mlflow-port", type=int, default=d.mlflow_port)
    ap.add_argument("--prefect-port", type=int, default=d.prefect_port)
    ap.add_argument("--pool", default=d.pool, help="the process worker's work pool (default %(default)s)")
    ap.add_argument("--no-worker", action="store_true")
    ap.add_argument("--ui", action="store_true", help="serve Prefect's UI too")
    ap.add_argument("--start-timeout", type=float, default=d.start_timeout)
    ap.add_argument("--stop-timeout", type=float, default=d.stop_timeout)
    a = ap.parse_args(argv)
    try:
        if a.command == "start":
            s = Settings(root=a.root, pg_port=a.pg_port, postgres_uri=a.postgres_uri, s3_port=a.s3_port,
                         s3_endpoint=a.s3_endpoint, bucket=a.bucket, mlflow_port=a.mlflow_port,
                         prefect_port=a.prefect_port, pool=a.pool, worker=not a.no_worker, ui=a.ui,
                         start_timeout=a.start_timeout, stop_timeout=a.stop_timeout)
            state = start(s)
            for name, line in status(a.root).items():
                print(f"{name:12s} {line}")
            print("started in " + ", ".join(f"{k} {v} s" for k, v in state.settings["start_seconds"].items()))
            print(f'use it: eval "$(python -m services.stack env --root {a.root})"')
        elif a.command == "stop":
            for name, what in stop(a.root, a.stop_timeout).items():
                print(f"{name:12s} {what}")
        elif a.command == "status":
            got = status(a.root)
            for name, line in got.items():
                print(f"{name:12s} {line}")
            if not got:
                print(f"no stack in {a.root.resolve()}")
        else:
            print("\n".join(env_lines(a.root)))
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
