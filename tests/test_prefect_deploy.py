"""`prefect deploy --all` registers every deployment of prefect.yaml against a local Prefect server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow


def test_prefect_deploy_all_registers_every_deployment(tmp_path):
    port = free_port()
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect_home"), "PATH": bindir + os.pathsep + os.environ["PATH"],
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    env.pop("PREFECT_API_KEY", None)
    server = subprocess.Popen([os.path.join(bindir, "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 150
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail("prefect server did not start: " + (server.stdout.read() if server.poll() is not None else "timeout"))
                time.sleep(1)
        prefect = os.path.join(bindir, "prefect")
        run = lambda *a: subprocess.run([prefect, *a], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # noqa: E731
        r = run("work-pool", "create", "gpu", "--type", "process")
        assert r.returncode == 0, r.stdout + r.stderr
        r = run("--no-prompt", "deploy", "--all")
        assert r.returncode == 0, r.stdout + r.stderr
        spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
        for dep in spec["deployments"]:
            flow_name = dep["entrypoint"].split(":")[1].removesuffix("_flow")
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/deployments/name/{flow_name}/{dep['name']}")
            got = json.loads(urllib.request.urlopen(req, timeout=10).read())
            assert got["work_pool_name"] == "gpu"
            assert [s["schedule"]["cron"] for s in got["schedules"]] == [dep["schedules"][0]["cron"]]
            if dep["entrypoint"] != "flows/model.py:model_flow":  # eval_lm: its own parameters
                assert got["parameters"] == dep["parameters"]
                continue
            assert got["parameters"]["sync_data"] is True and got["parameters"]["model"] == dep["parameters"]["model"]
        # the README's worker command starts, polls the pool, and stops on SIGTERM. Its output goes to a file, not a
        # pipe: a pipe nobody reads after "started" can fill and block the worker's shutdown logging.
        log = tmp_path / "worker.log"
        with open(log, "w") as out:
            worker = subprocess.Popen([prefect, "worker", "start", "--pool", "gpu"], cwd=REPO, env=env, stdout=out,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            deadline = time.time() + 120
            while "started" not in log.read_text().lower() and time.time() < deadline and worker.poll() is None:
                time.sleep(0.5)
            assert "started" in log.read_text().lower(), log.read_text()[-3000:]
            workers = json.loads(urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/api/work_pools/gpu/workers/filter", data=b"{}", method="POST",
                headers={"Content-Type": "application/json"}), timeout=10).read())
            assert workers and workers[0]["status"] == "ONLINE", workers
            # SIGTERM to the worker's process group, as a service manager or a terminal sends it: `prefect worker start`
            # runs the worker in a child process, which under load did not act on the SIGINT the parent forwards
            os.killpg(worker.pid, signal.SIGTERM)
            t0 = time.time()
            try:
                code = worker.wait(timeout=90)
            except subprocess.TimeoutExpired:
                # a second interrupt is Prefect's "force" (as a second Ctrl+C or a service manager's escalation):
                # on a heavily loaded machine the graceful shutdown was seen to stall on its API calls
                os.killpg(worker.pid, signal.SIGINT)
                try:
                    code = worker.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pytest.fail("the worker did not stop within 90 s of SIGTERM and 60 s of a second interrupt:\n"
                                + log.read_text()[-3000:])
            print(f"worker stopped {time.time() - t0:.1f} s after SIGTERM, exit code {code}")
        finally:
            if worker.poll() is None:  # never leave the worker (or its child) behind, whatever failed above
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=30)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
