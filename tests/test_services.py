"""The server stack (services/stack.py): PostgreSQL + moto S3 + MLflow server + Prefect server + a process worker,
all on 127.0.0.1. One test starts it, deploys prefect.yaml, runs the tiny MeLU deployment through the worker, finds
the run, the model version and its champion alias in the server's registry (the artifacts in S3), and stops it with
no process left behind. The others check the errors a user meets before anything starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from services import stack
from tests.conftest import REPO, free_port

BIN = Path(sys.executable).parent


def _stack_root() -> Path:
    """A folder the ``postgres`` user can enter when the tests run as root (pytest's own are mode 0700)."""
    root = Path(tempfile.mkdtemp(prefix="paperflows-stack-"))
    root.chmod(0o755)
    return root


def _settings(root: Path, **kw) -> stack.Settings:
    return stack.Settings(root=root, pg_port=free_port(), s3_port=free_port(), mlflow_port=free_port(),
                          prefect_port=free_port(), start_timeout=240, stop_timeout=30, **kw)


@pytest.fixture(scope="module")
def running_stack():
    """The stack on free ports, for the tests of this module; stopping it at the end is checked (graceful, nothing
    left: no process group, no postmaster, no listener, no process naming the stack's folder)."""
    root = _stack_root()
    s = _settings(root)
    t0 = time.monotonic()
    state = stack.start(s)
    start_s = time.monotonic() - t0
    env = {**os.environ, **state.env, "PATH": str(BIN) + os.pathsep + os.environ["PATH"],
           "PREFECT_HOME": str(root / "client_home")}
    for k in ("PREFECT_API_KEY", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(k, None)
    try:
        yield {"root": root, "settings": s, "state": state, "env": env, "start_s": start_s}
    finally:
        t = time.monotonic()
        stopped = stack.stop(root, s.stop_timeout)
        print(f"\nstack: started in {start_s:.1f} s ({state.settings['start_seconds']}), stopped in "
              f"{time.monotonic() - t:.1f} s: " + ", ".join(f"{k} {v}" for k, v in stopped.items()))
        try:
            # every process ends; "killed" (SIGKILL after SIGTERM and a second interrupt) is reported, not hidden
            assert set(stopped) == {"worker", "prefect", "mlflow", "moto_server", "postgres"}
            assert set(stopped.values()) <= {"stopped", "killed"} and stopped["postgres"] == "stopped", stopped
            assert not any(stack._group_alive(p["pgid"]) for p in state.processes.values())
            assert not (Path(state.postgres["data"]) / "postmaster.pid").exists()
            for port in (s.pg_port, s.s3_port, s.mlflow_port, s.prefect_port):
                assert stack.port_free(port), port
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
            assert str(root) not in ps, [ln for ln in ps.splitlines() if str(root) in ln]
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_stack_deploys_runs_a_deployment_through_the_worker_and_registers(running_stack):
    root, s, state, env = (running_stack[k] for k in ("root", "settings", "state", "env"))
    times = {"start": running_stack["start_s"]}
    assert set(state.processes) == {"moto_server", "mlflow", "prefect", "worker"}
    assert all(v.startswith("running") for v in stack.status(root).values()), stack.status(root)
    exported = dict(line.removeprefix("export ").split("=", 1) for line in stack.env_lines(root))
    assert exported == {k: str(v) for k, v in state.env.items()}  # what `eval "$(... env)"` sets
    assert {"MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_ENDPOINT_URL_S3"} <= set(exported)
    assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:") and "127.0.0.1" in env["PREFECT_API_URL"]
    prefect = lambda *a, timeout=300: subprocess.run([str(BIN / "prefect"), *a], cwd=REPO, env=env,  # noqa: E731
                                                     capture_output=True, text=True, timeout=timeout)

    # every deployment of prefect.yaml registers on the stack's server, on the pool the worker polls
    t = time.monotonic()
    r = prefect("--no-prompt", "deploy", "--all")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    times["deploy"] = time.monotonic() - t
    api = env["PREFECT_API_URL"]
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for dep in spec["deployments"]:
        flow_name = dep["entrypoint"].split(":")[1].removesuffix("_flow")
        got = json.loads(urllib.request.urlopen(f"{api}/deployments/name/{flow_name}/{dep['name']}", timeout=10).read())
        assert got["work_pool_name"] == "gpu"
        assert [x["schedule"]["cron"] for x in got["schedules"]] == [dep["schedules"][0]["cron"]]
        if dep["entrypoint"] != "flows/model.py:model_flow":  # eval_lm: its own parameters
            assert got["parameters"] == dep["parameters"]
            continue
        assert got["parameters"]["sync_data"] is True and got["parameters"]["model"] == dep["parameters"]["model"]

    # the MeLU deployment, on a tiny config, through the worker (which runs it in the repository)
    from models import catalog

    melu = catalog.get("melu")
    params = root / "tiny" / "params.yaml"
    params.parent.mkdir()
    params.write_text(yaml.safe_dump({melu.section: melu.tiny(root / "tiny" / "melu")}))
    t = time.monotonic()
    r = prefect("deployment", "run", "model/melu", "--param", f"params_path={params}", "--param", "sync_data=false",
                "--watch", "--watch-timeout", "420", timeout=480)
    times["run through the worker"] = time.monotonic() - t
    assert r.returncode == 0 and "Completed" in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    version = client.get_model_version_by_alias("melu", "champion")
    shutil.rmtree(REPO / "outputs" / "melu" / version.run_id, ignore_errors=True)  # the flow's weights folder
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert float(version.tags["gate_value"]) == pytest.approx(run.data.metrics["cold_mae_mean"])
    assert version.tags["validation_status"] == "champion"
    comparison = json.loads(Path(client.download_artifacts(run.info.run_id, "registry/comparison.json", str(root))).read_text())
    assert comparison["lock"] == "prefect"  # a shared tracking server: the promotion held the Prefect limit
    # the artifacts are in the S3 bucket, proxied by the tracking server (the client has no S3 credentials)
    import boto3

    s3 = boto3.client("s3", endpoint_url=state.env["MLFLOW_S3_ENDPOINT_URL"],
                      aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s.bucket, Prefix="mlflow/").get("Contents", [])]
    assert any(k.endswith("/MLmodel") for k in keys), keys[:20]
    print("\nstack test seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))


def _race(env: dict, prefix: str, rounds: int, period: float, *extra: str) -> list[dict]:
    """Both sides of tests/registry_race.py at once (started together once both are connected); their JSON lines."""
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "registry_race.py"), str(side), str(rounds), prefix,
                               str(period), *extra], cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for side in (0, 1)]
    try:
        for p in procs:
            line = p.stdout.readline()
            assert line.strip() == "ready", line + p.stderr.read()[-3000:]
        t0 = time.time() + 1.0
        for p in procs:
            p.stdin.write(f"{t0}\n")
            p.stdin.flush()
        out = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=60 + rounds * period * 4)
            assert p.returncode == 0, stderr[-6000:]
            out += [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["server", "postgresql"])
def test_two_processes_promoting_at_once_leave_exactly_one_champion_the_best(running_stack, store):
    """Two promoters of the same model at the same moment, 20 rounds: against the tracking server (the lock is the
    Prefect global concurrency limit) and against its PostgreSQL database directly (an advisory lock). Every round
    ends with the higher gate value as the only champion; without the lock (the control, 3 rounds) it does not."""
    from mlflow import MlflowClient

    state, env = running_stack["state"], dict(running_stack["env"])
    if store == "postgresql":
        env["MLFLOW_TRACKING_URI"] = state.postgres["uri"] + "/mlflow"
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    rounds, control = 20, 3
    for prefix, n in ((f"race-{store}", rounds), (f"nolock-{store}", control)):
        for i in range(n):
            client.create_registered_model(f"{prefix}-{i}")
    t = time.monotonic()
    records = _race(env, f"race-{store}", rounds, 1.5)
    elapsed = time.monotonic() - t
    assert {r["lock"] for r in records} == {"prefect" if store == "server" else "postgresql"}
    for i in range(rounds):
        name = f"race-{store}-{i}"
        both = sorted((r for r in records if r["round"] == i), key=lambda r: -r["value"])
        assert len(both) == 2
        champion = client.get_model_version_by_alias(name, "champion")
        assert str(champion.version) == both[0]["version"], (name, both)
        assert float(champion.tags["gate_value"]) == 0.9
        # serialised: one side decided first (it saw no champion), the other saw what the first one decided
        first, second = sorted(both, key=lambda r: r["saw"] is not None)
        assert first["saw"] is None and second["saw"] == (first["value"] if first["promoted"] else None), both
    print(f"\n{store}: {rounds} rounds of two simultaneous promotions, one champion (the best) every time; "
          f"{elapsed:.1f} s")
    bad = _race(env, f"nolock-{store}", control, 1.5, "--no-lock")
    broken = 0
    for i in range(control):  # the race is real: without the lock every round ends wrong or in an error
        both = [r for r in bad if r["round"] == i]
        best = max(both, key=lambda r: r["value"])["version"]
        try:
            wrong = str(client.get_model_version_by_alias(f"nolock-{store}-{i}", "champion").version) != best
        except Exception:  # noqa: BLE001 - no champion at all
            wrong = True
        broken += wrong or any("error" in r for r in both)
    print(f"{store}, no lock: {broken} of {control} rounds wrong or failed "
          f"({sum('error' in r for r in bad)} promotions failed)")
    assert broken == control


def test_a_port_in_use_stops_the_start_before_anything_runs():
    import socket

    root = _stack_root()
    try:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            s = _settings(root)
            s.mlflow_port = busy.getsockname()[1]
            with pytest.raises(stack.StackError, match=rf"mlflow: port 127\.0\.0\.1:{s.mlflow_port} is already in use"):
                stack.start(s)
        assert not (root / "postgres").exists()  # checked before PostgreSQL was made
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_unavailable_names_the_uri_without_its_password():
    uri = f"postgresql://paperflows:s3cret@127.0.0.1:{free_port()}"
    with pytest.raises(stack.StackError) as err:
        stack.create_databases(uri)
    assert f"postgresql://paperflows:***@127.0.0.1:{uri.rsplit(':', 1)[1]}/postgres" in str(err.value)
    assert "s3cret" not in str(err.value)


def test_env_and_stop_without_a_stack(tmp_path, capsys):
    assert stack.stop(tmp_path) == {} and stack.status(tmp_path) == {}
    assert stack.main(["env", "--root", str(tmp_path)]) == 1
    assert "no stack runs from" in capsys.readouterr().err


@pytest.mark.parametrize("uri", ["postgresql://paperflows:s3cret@127.0.0.1:{port}/mlflow", "http://127.0.0.1:{port}"])
def test_a_flow_against_an_unreachable_server_store_stops_at_once_naming_the_uri(uri):
    """PostgreSQL (or the tracking server) down at the start: exit 2 with the URI (password hidden), before any run."""
    uri = uri.format(port=free_port())
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "flows.model", "melu", "--no-register"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    shown = uri.replace(":s3cret@", ":***@")
    assert f"error: MLFLOW_TRACKING_URI={shown}: " in r.stderr and "s3cret" not in r.stderr + r.stdout, r.stderr
    assert "Traceback" not in r.stderr and time.monotonic() - t < 60


def _tiny_melu_params(root: Path, name: str, epochs: int) -> tuple[Path, Path]:
    """A params file whose MeLU section trains the tiny set for ``epochs`` epochs; (params file, checkpoint folder)."""
    from models import catalog

    melu = catalog.get("melu")
    cfg = melu.tiny(root / name)
    cfg["train"]["epochs"] = epochs
    params = root / name / "params.yaml"
    params.write_text(yaml.safe_dump({melu.section: cfg}))
    return params, Path(cfg["train"]["checkpoint_dir"])


def _start_deployment(env: dict, params: Path) -> str:
    """Trigger the MeLU deployment (no waiting); its flow-run id."""
    r = subprocess.run([str(BIN / "prefect"), "deployment", "run", "model/melu", "--param", f"params_path={params}",
                        "--param", "sync_data=false"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    import re

    return re.search(r"UUID: ([0-9a-f-]{36})", r.stdout).group(1)


def _flow_run_state(env: dict, flow_run_id: str) -> str:
    got = json.loads(urllib.request.urlopen(f"{env['PREFECT_API_URL']}/flow_runs/{flow_run_id}", timeout=10).read())
    return got["state_type"]


def _wait_for(what: str, check, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _epochs_saved(ckpt: Path) -> int:
    """The newest epoch checkpoint's number (the loop keeps the last two)."""
    found = [int(p.stem.split("-")[1]) for p in ckpt.rglob("epoch-*.pt")] if ckpt.exists() else []
    return max(found, default=0)


@pytest.mark.slow
def test_the_tracking_server_restarted_during_a_run_the_flow_completes_with_one_version(running_stack):
    """The MLflow server is stopped and started again while the deployment trains: the flow's MLflow calls retry,
    the run finishes, and its model is registered once."""
    from mlflow import MlflowClient

    root, env = running_stack["root"], running_stack["env"]
    params, ckpt = _tiny_melu_params(root, "restart_mlflow", epochs=40)
    flow_run = _start_deployment(env, params)
    _wait_for("the first epoch checkpoint", lambda: _epochs_saved(ckpt) >= 1, 300)
    down = stack.restart(root, "mlflow")
    assert _epochs_saved(ckpt) < 40  # the restart happened in the middle of the training
    state = _wait_for("the flow run to end", lambda: (s := _flow_run_state(env, flow_run)) in
                      ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and s, 600)
    print(f"\ntracking server restarted ({down:.1f} s until healthy) during the run; flow run {state}")
    assert state == "COMPLETED", (root / "logs" / "worker.log").read_text()[-4000:]
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("melu").experiment_id],
                              filter_string=f"tags.`prefect.flow_run_id` = '{flow_run}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    versions = [v for v in client.search_model_versions("name='melu'") if v.run_id == runs[0].info.run_id]
    assert len(versions) == 1, versions
    shutil.rmtree(REPO / "outputs" / "melu" / runs[0].info.run_id, ignore_errors=True)


@pytest.mark.slow
def test_the_worker_killed_mid_training_the_rerun_resumes_from_the_checkpoint(running_stack):
    """kill -9 of the worker and of the flow run it started (a machine lost in the middle of an epoch loop); the
    worker comes back, the deployment runs again on the same config and resumes from the last epoch checkpoint."""
    import signal

    root, env = running_stack["root"], running_stack["env"]
    params, ckpt = _tiny_melu_params(root, "kill_worker", epochs=40)
    flow_run = _start_deployment(env, params)
    _wait_for("two epoch checkpoints", lambda: _epochs_saved(ckpt) >= 2, 300)
    worker = stack.State.load(root).processes["worker"]
    os.killpg(worker["pgid"], signal.SIGKILL)
    for pid in os.listdir("/proc"):  # the flow run's own process (the process worker starts it in a new session)
        try:
            if f"PREFECT__FLOW_RUN_ID={flow_run}".encode() in Path(f"/proc/{pid}/environ").read_bytes():
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            continue
    killed_at = _epochs_saved(ckpt)
    assert 2 <= killed_at < 40
    log = root / "logs" / "worker.log"
    before = len(log.read_bytes())
    stack.restart(root, "worker")
    again = _start_deployment(env, params)
    state = _wait_for("the second flow run to end", lambda: (s := _flow_run_state(env, again)) in
                      ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and s, 600)
    text = log.read_bytes()[before:].decode(errors="replace")
    assert state == "COMPLETED", text[-4000:]
    resumed = [ln for ln in text.splitlines() if "resuming from" in ln]
    assert resumed and "of 40 epochs done" in resumed[0], text[-4000:]
    done = int(resumed[0].split(": ")[-1].split(" of ")[0])
    print(f"\nworker killed after {killed_at} epoch checkpoints; the rerun resumed with {done} of 40 epochs done")
    assert done >= killed_at and _epochs_saved(ckpt) == 40
