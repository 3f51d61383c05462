"""`dvc repro` on the real mirror (tiny model settings) of one train stage per system: data stages -> MeLU
flow, one seqrec matrix stage, one DisSAN matrix stage, the synthetic EGTR stage -> MLflow champions; a second `dvc repro` does
nothing; `dvc metrics show` and `dvc plots show` work. (The full pipeline trains 20 seqrec runs of 240 s:
too long for CI, and the same stages are exercised here with tiny settings.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, mirror_dir

pytestmark = [pytest.mark.slow, pytest.mark.mirror]


def test_dvc_repro_twice_metrics_plots_and_champion(tmp_path):
    mirror_dir("melu_movielens")
    work = tmp_path / "repo"
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
    params["sgg_data"]["synthetic"].update({"train": 12, "val": 4, "test": 4, "size": 64, "max_objects": 3, "max_size": 24})
    from tests.test_flow_egtr import TINY_EGTR

    for key in ("detector", "pretrain", "sgg", "augment"):
        params["egtr"][key] = TINY_EGTR[key]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    sh = lambda *a: subprocess.run(list(a), cwd=work, env=env, capture_output=True, text=True, timeout=900)  # noqa: E731
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        assert sh(*cmd).returncode == 0
    targets = ["train_melu", "train_seqrec@fanc-Beauty", "train_dissan@dissan-sick", "train_egtr@synthetic"]
    first = sh("dvc", "repro", *targets)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
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
    record = json.loads((work / "outputs" / "melu" / "last_run.json").read_text())
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    champ = client.get_model_version_by_alias("melu", "champion")
    assert champ.run_id == record["run_id"]
    run = client.get_run(record["run_id"])
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    assert run.data.tags["dvc.data.data/processed/melu"] == lock["preprocess_melu"]["outs"][0]["md5"]
    assert run.data.tags["dvc.data.data/raw/melu_movielens"] == lock["download@melu_movielens"]["outs"][0]["md5"]
    assert run.data.tags["git_commit"] not in ("", "unknown")
    assert client.get_model_version_by_alias("fanc", "champion_beauty") and client.get_model_version_by_alias("dissan", "champion_sick")
    fanc = json.loads((work / "metrics" / "seqrec" / "fanc-Beauty.json").read_text())
    assert fanc["epochs"] == 1 and fanc["protocol"] == "full ranking over all items"
    assert run.data.tags["dvc.stage"] == "train_melu"
    assert client.get_run(fanc["run_id"]).data.tags["dvc.stage"] == "train_seqrec@fanc-Beauty"
    egtr = json.loads((work / "metrics" / "egtr" / "synthetic.json").read_text())
    assert egtr["synthetic"] is True and egtr["detector"]["epochs_run"] == 2
    assert client.get_model_version_by_alias("egtr", "champion_synthetic").run_id == egtr["run_id"]
    assert client.get_run(egtr["run_id"]).data.tags["dvc.stage"] == "train_egtr@synthetic"
    sgg_stats = json.loads((work / "metrics" / "sgg_data" / "synthetic.json").read_text())
    assert sgg_stats["train"]["images"] == 12 and sgg_stats["source"] == "synthetic"
