"""`dvc repro` on the real mirror (tiny model settings) of one train stage per system: data stages -> MeLU
flow, one seqrec matrix stage, one DisSAN matrix stage, the synthetic EGTR stage -> MLflow champions; a second `dvc repro` does
nothing; `dvc metrics show` and `dvc plots show` work; the registry check of `make run` finds every model, repairs
an empty registry by re-running the stages, and the tracked files come out byte-identical. (The full pipeline trains 20 seqrec runs of 240 s:
too long for CI, and the same stages are exercised here with tiny settings.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, mirror_dir

pytestmark = [pytest.mark.slow, pytest.mark.mirror]


TARGETS = ["models/melu/dvc.yaml:train_melu", "models/seqrec/dvc.yaml:train_seqrec@fanc-Beauty",
           "models/dissan/dvc.yaml:train_dissan@dissan-sick", "models/egtr/dvc.yaml:train_egtr@synthetic"]


@pytest.fixture(scope="module")
def trained_copy(tmp_path_factory):
    """A copy of the repository (a git repository of its own) where ``dvc repro`` ran one train stage per system on
    the real mirror with tiny model settings: (work dir, environment, runner, first repro's output)."""
    mirror_dir("melu_movielens")
    work = tmp_path_factory.mktemp("pipeline") / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, work / f)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["melu"]["model"] = {"embedding_dim": 8, "hidden": [16, 16]}
    params["melu"]["train"].update({"epochs": 2, "local_steps": 1, "global_lr": 1e-3})
    params["seqrec"]["model"]["hidden"] = 8
    params["seqrec"]["train"].update({"epochs": 1, "time_budget_s": 0.0})
    params["dissan"]["model"].update({"classifier_hidden": 16})
    params["dissan"]["train"].update({"epochs": 1})
    params["data"]["preprocess_sgg"]["synthetic"].update({"train": 12, "val": 4, "test": 4, "size": 64, "max_objects": 3, "max_size": 24})
    from models.egtr.tiny import TINY_EGTR

    for key in ("detector", "pretrain", "sgg", "augment"):
        params["egtr"][key] = TINY_EGTR[key]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    sh = lambda *a: subprocess.run(list(a), cwd=work, env=env, capture_output=True, text=True, timeout=900)  # noqa: E731
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        assert sh(*cmd).returncode == 0
    first = sh("dvc", "repro", *TARGETS)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    return work, env, first


def test_dvc_repro_twice_metrics_plots_and_champion(trained_copy, tmp_path):
    work, env, first = trained_copy
    env = dict(env)
    sh = lambda *a: subprocess.run(list(a), cwd=work, env=env, capture_output=True, text=True, timeout=900)  # noqa: E731
    targets = TARGETS
    for stage in targets:
        assert f"Running stage '{stage}'" in first.stdout
    second = sh("dvc", "repro", *targets)
    assert second.returncode == 0 and "Running stage" not in second.stdout, second.stdout
    status = sh("dvc", "status", *targets)
    assert "up to date" in status.stdout, status.stdout
    metrics = json.loads(sh("dvc", "metrics", "show", "--json").stdout)
    flat = json.dumps(metrics)
    assert "cold_mae_mean" in flat and "users_kept" in flat and "mean_length" in flat
    plots = sh("dvc", "plots", "show", "--json")
    assert plots.returncode == 0 and "learning_curve" in plots.stdout, plots.stderr
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    champ = client.get_model_version_by_alias("melu", "champion")
    card = json.loads((work / "outputs" / "melu" / "model" / "model.json").read_text())
    assert card["registered_model"] == "melu" and card["champion_alias"] == "champion"
    assert champ.tags["weights_sha256"] == card["weights_sha256"]
    run = client.get_run(champ.run_id)
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    assert run.data.tags["dvc.data.data/processed/melu"] == lock["preprocess_melu"]["outs"][0]["md5"]
    assert run.data.tags["dvc.data.data/raw/melu_movielens"] == lock["download@melu_movielens"]["outs"][0]["md5"]
    assert run.data.tags["git_commit"] not in ("", "unknown")
    assert run.data.tags["dvc.stage"] == TARGETS[0]
    fanc_v = client.get_model_version_by_alias("fanc", "champion_beauty")
    assert client.get_model_version_by_alias("dissan", "champion_sick")
    fanc = json.loads((work / "metrics" / "seqrec" / "fanc-Beauty.json").read_text())
    assert fanc["epochs"] == 1 and fanc["protocol"] == "full ranking over all items"
    assert "run_id" not in fanc and "train_seconds" not in fanc["training"]  # run-specific values live in MLflow
    assert client.get_run(fanc_v.run_id).data.tags["dvc.stage"] == TARGETS[1]
    egtr = json.loads((work / "metrics" / "egtr" / "synthetic.json").read_text())
    assert egtr["synthetic"] is True and egtr["detector"]["epochs_run"] == 2 and "run_id" not in egtr
    egtr_v = client.get_model_version_by_alias("egtr", "champion_synthetic")
    assert client.get_run(egtr_v.run_id).data.tags["dvc.stage"] == TARGETS[3]
    sgg_stats = json.loads((work / "metrics" / "sgg_data" / "synthetic.json").read_text())
    assert sgg_stats["train"]["images"] == 12 and sgg_stats["source"] == "synthetic"

    # the registry check of `make run` finds all four; registering again from the same weights adds no version
    check = sh(sys.executable, "-m", "flows.registry_check", *targets)
    assert check.returncode == 0, check.stdout + check.stderr
    versions = {m: len(client.search_model_versions(f"name='{m}'")) for m in ("melu", "fanc", "dissan", "egtr")}
    forced = sh("dvc", "repro", "--force", "--single-item", TARGETS[0])
    assert forced.returncode == 0 and '"reused": true' in forced.stdout, forced.stdout[-3000:]
    assert len(client.search_model_versions("name='melu'")) == versions["melu"]

    # the run leaves nothing for git that the same computation would not rewrite byte for byte: commit it, then
    # point at an empty registry (a fresh machine with these outputs): the check fails, --repair re-runs the
    # stages, registers every model, and git status stays clean
    assert sh("git", "add", "-A").returncode == 0
    assert sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "run").returncode == 0
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert sh(sys.executable, "-m", "flows.registry_check", *targets).returncode == 1
    repaired = sh(sys.executable, "-m", "flows.registry_check", "--repair", *targets)
    assert repaired.returncode == 0, repaired.stdout[-3000:] + repaired.stderr[-3000:]
    fresh = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    for name, alias in (("melu", "champion"), ("fanc", "champion_beauty"), ("dissan", "champion_sick"), ("egtr", "champion_synthetic")):
        assert fresh.get_model_version_by_alias(name, alias)
    status = sh("git", "status", "--porcelain")
    assert status.stdout.strip() == "", status.stdout


def test_readme_commands_run(trained_copy, tmp_path):
    """Walk the README (tests/readme_walk.py): each command marked ``run`` runs as written in the trained copy, in
    the activated environment the README asks for and with the embedded defaults (no MLFLOW_TRACKING_URI set);
    each ``serve`` command starts its server, answers the README's request, and stops."""
    import signal
    import time
    import urllib.request

    from tests.conftest import free_port
    from tests.readme_walk import classify, commands, words

    work, env, _ = trained_copy
    env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
    env["VENV"] = str(REPO / ".venv")  # the Makefile's environment: `make serve` must not build another one
    first_test_image = sorted((work / "data/processed/sgg/synthetic/images").glob("test_*.png"))[0]
    substitutions = {
        "python -m flows.registry_check": lambda c: f"{words(c)} {' '.join(TARGETS)}",  # words: the comment dropped
        "python -m models.egtr.infer": lambda c: c.replace("data/processed/sgg/synthetic/images/test_002201.png", str(first_test_image)),
    }
    bash = lambda c: subprocess.run(["bash", "-c", c], cwd=work, env=env, capture_output=True, text=True, timeout=900)  # noqa: E731
    server, ran = None, []
    try:
        for cmd in commands():
            prefix, action, _ = classify(cmd)
            if server is not None and not cmd.startswith("curl"):
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)
                server = None
            if action == "serve":
                port = free_port()
                line = re.sub(r"PORT=\d+", f"PORT={port}", cmd) if "PORT=" in cmd else f"{words(cmd)} --port {port}"
                server = subprocess.Popen(["bash", "-c", line], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True, start_new_session=True)
                deadline = time.time() + 180
                while True:
                    try:
                        urllib.request.urlopen(f"http://127.0.0.1:{port}/" + ("ping" if "make serve" in cmd else ""), timeout=2)
                        break
                    except OSError:
                        assert server.poll() is None and time.time() < deadline, f"{line}: {server.stdout.read()[-3000:] if server.poll() is not None else 'timeout'}"
                        time.sleep(1)
                served_port = port
                ran.append(prefix)
                continue
            if action != "run" or prefix == "source .venv/bin/activate":
                continue
            line = next((f for p, f in substitutions.items() if prefix.startswith(p)), lambda c: c)(cmd)
            if cmd.startswith("curl"):
                line = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{served_port}", line)
            proc = bash(line)
            assert proc.returncode == 0, f"{line}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            if cmd.startswith("curl"):
                answer = json.loads(proc.stdout)
                assert answer["predictions"], answer
                if "5001" in cmd:  # MeLU: the README's integer ratings are accepted, candidates ranked best first
                    rows = answer["predictions"]
                    assert sorted(r["movie_id"] for r in rows) == [260, 1196, 1210, 2628] and [r["rank"] for r in rows] == [1, 2, 3, 4]
            ran.append(prefix)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    assert {"dvc metrics show", "curl -s 127.0.0.1:5001/invocations", "python -m models.egtr.infer --model models:/egtr@champion_synthetic",
            "make serve MODEL=models:/dissan@champion_sick PORT=5003", "mlflow ui --backend-store-uri sqlite:///mlflow.db"} <= set(ran)
    assert (work / "sg" / f"{first_test_image.stem}.json").is_file()


def test_dvc_remote_push_then_a_fresh_clone_pulls_and_repro_runs_nothing(trained_copy, tmp_path):
    """The README's DVC remote on moto_server (S3 on 127.0.0.1): `make remote` + `make push` in the trained copy; a
    fresh clone (no cache) with `make remote` + `dvc pull` gets the results and `dvc repro` runs no stage; a
    corrupted cache object (which DVC itself checks out unnoticed) is found by `make verify-cache` and fetched again."""
    import hashlib
    import signal
    import time
    import urllib.request

    import boto3

    from tests.conftest import free_port

    work, env, _ = trained_copy
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": endpoint, "DVC_REMOTE_URL": "s3://paperflows-test/dvc", "VENV": str(REPO / ".venv")}
    log = open(tmp_path / "moto.log", "w")
    moto = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
                break
            except OSError:
                assert moto.poll() is None and time.time() < deadline, (tmp_path / "moto.log").read_text()[-2000:]
                time.sleep(0.5)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="paperflows-test")
        run = lambda cwd, *a: subprocess.run(list(a), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)  # noqa: E731
        if run(work, "git", "status", "--porcelain").stdout.strip():
            assert run(work, "git", "add", "-A").returncode == 0
            assert run(work, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "run").returncode == 0
        for target in ("remote", "push"):
            r = run(work, "make", target)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "pushed" in r.stdout, r.stdout[-2000:]
        assert "storage" in (work / ".dvc" / "config.local").read_text()
        assert "storage" not in (work / ".dvc" / "config").read_text()  # never committed: CI clones have no remote

        clone = tmp_path / "clone"
        assert run(tmp_path, "git", "clone", "-q", str(work), str(clone)).returncode == 0
        assert not (clone / ".dvc" / "cache").exists()
        t0 = time.monotonic()
        assert run(clone, "make", "remote").returncode == 0
        pulled = run(clone, "dvc", "pull", "--with-deps", *TARGETS)  # the copy trained (and pushed) these stages only
        assert pulled.returncode == 0, pulled.stdout[-3000:] + pulled.stderr[-3000:]
        again = run(clone, "dvc", "repro", *TARGETS)
        print(f"\nfresh clone: dvc pull + dvc repro in {time.monotonic() - t0:.1f} s")
        assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout[-3000:]
        weights = clone / "outputs" / "melu" / "model" / "model.pt"
        card = json.loads((clone / "outputs" / "melu" / "model" / "model.json").read_text())
        assert hashlib.sha256(weights.read_bytes()).hexdigest() == card["weights_sha256"]

        # corrupt the cached weights object (read-only, as DVC leaves it) and check it out: DVC does not notice
        md5 = hashlib.md5(weights.read_bytes()).hexdigest()
        obj = clone / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
        obj.chmod(0o644)
        obj.write_bytes(b"bit rot")
        obj.chmod(0o444)
        weights.unlink()
        assert run(clone, "dvc", "checkout", TARGETS[0]).returncode == 0
        assert weights.read_bytes() == b"bit rot"
        assert "up to date" in run(clone, "dvc", "status", TARGETS[0]).stdout  # ...and calls it up to date
        found = run(clone, sys.executable, "-m", "services.dvc_remote", "verify")
        assert found.returncode == 1 and md5 in found.stdout, found.stdout + found.stderr
        repaired = run(clone, "make", "verify-cache")
        assert repaired.returncode == 0, repaired.stdout[-3000:] + repaired.stderr[-3000:]
        assert hashlib.md5(weights.read_bytes()).hexdigest() == md5 and hashlib.md5(obj.read_bytes()).hexdigest() == md5
        assert "Running stage" not in run(clone, "dvc", "repro", *TARGETS).stdout
    finally:
        os.killpg(moto.pid, signal.SIGTERM)
        moto.wait(timeout=30)
        log.close()
