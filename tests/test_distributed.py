"""Data-parallel training under torchrun (gloo on CPU, c10d rendezvous on 127.0.0.1), for every data-parallel stage.

For each model whose stage is declared ``distributed``: the stage run by the flow's launcher (``flows.torchrun``) on
2 processes, each with half of every batch, gives the per-epoch losses and final weights of 1 process with the whole
batch (dropout off: its masks are drawn per process); rank 0 alone logs (one MLflow value per epoch). Then two
launchers with ``--nnodes=2`` rendezvous on 127.0.0.1, are stopped mid-training and started again: they resume from
the rank-0 checkpoint and end where the uninterrupted single process ended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow

# per model: overrides of its tiny preset (no dropout or photo jitter: those draw per process; global batches that
# split into two halves), where its checkpoints go, the stages run and the per-epoch loss each logs to MLflow
CASES = {
    "seqrec": ({"train.epochs": 3, "train.patience": 3, "train.batch_size": 16}, ("train.checkpoint_dir",),
               {"train": "train_loss"}),
    # EGTR: no random crop, so every image of a batch has one size (each process pads its images to the largest of
    # its own part, as multi-GPU DETR does: with mixed sizes the padded borders differ from one process's)
    "egtr": ({"pretrain.epochs": 2, "pretrain.patience": 2, "sgg.epochs": 2, "sgg.patience": 2,
              "augment.random_crop": False}, ("out_dir",),
             {"pretrain": "pretrain_train_loss", "sgg": "train_loss"}),
    "multimodalsum": ({"model.dropout": 0.0, "images.color_jitter": [0.0, 0.0, 0.0, 0.0], "denoise.epochs": 2,
                       "denoise.grad_accum": 2, "text.epochs": 2, "text.grad_accum": 2},
                      tuple(f"{s}.checkpoint_dir" for s in ("denoise", "text", "image", "table", "multimodal")),
                      {"denoise": "denoise_train_loss", "text": "text_train_loss"}),
}


def _config(model: str, root: Path, ckpt: str, extra: dict | None = None):
    from data.config import deep_update
    from models import catalog

    spec = catalog.get(model)
    overrides, ckpt_keys, _ = CASES[model]
    section = deep_update(spec.tiny(root), {**overrides, **(extra or {}), **{k: str(root / ckpt) for k in ckpt_keys}})
    return spec, spec.config.model_validate(section)


def _history(run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    # one value per step (a resumed stage logs the epochs it restored again, with the same values)
    by_step = {m.step: m.value for m in MlflowClient().get_metric_history(run_id, key)}
    return sorted(by_step.items())


def _run(model: str, cfg, spec, stages, tag: str, monkeypatch, nproc: int | None) -> tuple[str, dict]:
    from flows.torchrun import run_stage
    from models.common import tracking

    if nproc:
        monkeypatch.setenv("PAPERFLOWS_NPROC_PER_NODE", str(nproc))
    else:
        monkeypatch.delenv("PAPERFLOWS_NPROC_PER_NODE", raising=False)
    run_id = tracking.start_run(f"ddp-{model}", tag, {})
    done: dict = {}
    for stage in spec.stages:
        if stage.name in stages:
            done[stage.name] = run_stage(model, stage, cfg, run_id, done)
    assert set(done) == set(stages)
    tracking.client().set_terminated(run_id)
    return run_id, done


@pytest.mark.parametrize("model", sorted(CASES))
def test_two_processes_with_half_batches_equal_one(model, mlflow_store, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    spec, cfg1 = _config(model, tmp_path, "ckpt1")
    _, cfg2 = _config(model, tmp_path, "ckpt2")
    stages = CASES[model][2]
    assert all(s.distributed for s in spec.stages if s.name in stages)
    t0 = time.perf_counter()
    one, done1 = _run(model, cfg1, spec, stages, "one", monkeypatch, None)
    t1 = time.perf_counter()
    two, done2 = _run(model, cfg2, spec, stages, "two", monkeypatch, 2)
    t2 = time.perf_counter()
    print(f"\n{model}: 1 process {t1 - t0:.1f} s, 2 processes (torchrun, gloo) {t2 - t1:.1f} s")
    for stage, key in stages.items():
        h1, h2 = _history(one, key), _history(two, key)
        print(f"{model}.{stage}: {key} 1 process {[round(v, 6) for _, v in h1]}, 2 processes {[round(v, 6) for _, v in h2]}")
        assert len(h1) >= 2 and [s for s, _ in h1] == [s for s, _ in h2]
        assert len(MlflowClient().get_metric_history(two, key)) == len(h2)  # rank 0 alone logs
        for (_, a), (_, b) in zip(h1, h2):
            assert b == pytest.approx(a, rel=1e-5, abs=1e-7)
        w1 = torch.load(done1[stage]["weights"], weights_only=True)
        w2 = torch.load(done2[stage]["weights"], weights_only=True)
        w1, w2 = w1.get("model", w1), w2.get("model", w2)
        assert w1.keys() == w2.keys()
        worst = max(float((w1[k].float() - w2[k].float()).abs().max()) for k in w1 if w1[k].is_floating_point())
        print(f"{model}.{stage}: largest weight difference 1 vs 2 processes {worst:.2e}")
        # the gradients differ in float rounding only (the sums run in another order); Adam's normalised step can
        # carry that into a few updates of near-zero gradients, so the weights are compared at 2e-4, the losses tighter
        assert worst < 2e-4


EPOCHS = 6


def test_two_node_rendezvous_trains_and_resumes(mlflow_store, tmp_path, monkeypatch):
    """Two launchers (--nnodes=2, one process each, c10d on 127.0.0.1) training GRU4Rec, stopped after the first
    checkpoint and started again: they resume from rank 0's checkpoint and end with the single process's losses."""
    import json

    from flows.torchrun import Launch
    from models.common import tracking

    model = "seqrec"
    monkeypatch.chdir(tmp_path)
    # GRU4Rec: FaNC's gravity clipping is a threshold, where a rounding-level difference can flip a step's clip and
    # the curves then part (seen at epoch 5 here, the same in every run); a smooth model shows the resume itself
    extra = {"train.epochs": EPOCHS, "train.patience": EPOCHS, "model.name": "gru4rec", "registry.model_name": "gru4rec"}
    spec, cfg1 = _config(model, tmp_path, "ckpt1", extra)
    _, cfg2 = _config(model, tmp_path, "ckpt2", extra)
    one, done1 = _run(model, cfg1, spec, {"train": "train_loss"}, "one", monkeypatch, None)

    run_id = tracking.start_run(f"ddp-{model}", "two-node", {})
    job = tmp_path / "job"
    job.mkdir()
    (job / "config.json").write_text(cfg2.model_dump_json())
    (job / "done.json").write_text("{}")
    (job / "run_id").write_text(run_id)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ckpt = Path(cfg2.train.checkpoint_dir)

    def launch_both() -> list[subprocess.Popen]:
        cmd = Launch(nproc_per_node=1, nnodes=2, rdzv_endpoint=f"127.0.0.1:{free_port()}").command(
            model, "train", job, "two-node-test")
        return [subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for _ in range(2)]

    t0 = time.perf_counter()
    first = launch_both()
    deadline = time.monotonic() + 240
    while not list(ckpt.glob("*/epoch-*.pt")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in first), \
            [p.communicate()[0][-3000:] for p in first if p.poll() is not None]
        time.sleep(0.02)
    for p in first:
        os.killpg(p.pid, signal.SIGTERM)
    for p in first:
        p.communicate(timeout=60)
    stopped_at = max(int(f.stem.split("-")[1]) for f in ckpt.glob("*/epoch-*.pt"))
    assert stopped_at < EPOCHS, "the first launch finished before it was stopped"
    second = launch_both()
    logs = [p.communicate(timeout=300)[0] for p in second]
    assert [p.returncode for p in second] == [0, 0], [log[-3000:] for log in logs]
    wall = time.perf_counter() - t0
    resumed = [line for log in logs for line in log.splitlines() if "resuming from" in line]
    print(f"\ntwo nodes x 1 process: stopped after epoch {stopped_at}, resumed ({resumed[0].strip()}), {EPOCHS} epochs in "
          f"{wall:.1f} s in all")
    assert len(resumed) == 1 and f"{stopped_at} of {EPOCHS} epochs done" in resumed[0]  # printed by rank 0 only
    result = json.loads((job / "result.json").read_text())
    h1 = [v for _, v in _history(one, "train_loss")]
    h2 = [v for _, v in _history(run_id, "train_loss")]
    worst = max(abs(a - b) / abs(a) for a, b in zip(h1, h2))
    print(f"two nodes vs one process: train_loss per epoch {[round(v, 5) for v in h1]} vs {[round(v, 5) for v in h2]} "
          f"(largest relative difference {worst:.1e}); best epoch {done1['train']['stopping']['best_epoch']} vs "
          f"{result['stopping']['best_epoch']}")
    # a resume that lost optimizer or generator state differs by orders of magnitude more from the resumed epoch on
    assert len(h2) == len(h1) == EPOCHS and worst < 1e-4  # the stopped epochs are logged once, the resumed after them
    assert result["stopping"]["best_epoch"] == done1["train"]["stopping"]["best_epoch"]


def test_launch_settings_come_from_the_environment_and_bad_values_are_named(monkeypatch):
    from flows.torchrun import Launch, LaunchError, launch_settings

    for key in ("PAPERFLOWS_NPROC_PER_NODE", "PAPERFLOWS_NNODES", "PAPERFLOWS_RDZV_ENDPOINT", "PAPERFLOWS_RDZV_ID"):
        monkeypatch.delenv(key, raising=False)
    assert launch_settings() == Launch()
    monkeypatch.setenv("PAPERFLOWS_NPROC_PER_NODE", "4")
    monkeypatch.setenv("PAPERFLOWS_NNODES", "2")
    monkeypatch.setenv("PAPERFLOWS_RDZV_ENDPOINT", "10.0.0.1:29500")
    got = launch_settings()
    assert (got.nproc_per_node, got.nnodes, got.world, got.rdzv_endpoint) == (4, 2, 8, "10.0.0.1:29500")
    cmd = got.command("seqrec", "train", Path("/tmp/job"), "run-1")
    assert "--nproc_per_node=4" in cmd and "--nnodes=2" in cmd and "--rdzv-endpoint=10.0.0.1:29500" in cmd
    assert "--rdzv-id=run-1" in cmd and cmd[-5:] == ["flows.torchrun", "seqrec", "train", "--job", "/tmp/job"]
    one_node = Launch(nproc_per_node=2).command("seqrec", "train", Path("/tmp/job"), "r")
    assert any(a.startswith("--rdzv-endpoint=127.0.0.1:") and not a.endswith(":29400") for a in one_node)
    monkeypatch.setenv("PAPERFLOWS_NPROC_PER_NODE", "zero")
    with pytest.raises(LaunchError, match="nproc_per_node: expected a whole number >= 1, got 'zero'"):
        launch_settings()
    monkeypatch.setenv("PAPERFLOWS_NPROC_PER_NODE", "2")
    monkeypatch.setenv("PAPERFLOWS_RDZV_ENDPOINT", "nohost")
    with pytest.raises(LaunchError, match="rdzv_endpoint: expected HOST:PORT"):
        launch_settings()


def test_the_gpu_pool_template_is_prefects_process_template_plus_the_launch_variables():
    import copy
    import json

    from prefect.workers.process import ProcessWorker

    from flows.torchrun import JOB_VARIABLES

    expected = copy.deepcopy(ProcessWorker.get_default_base_job_template())
    expected["variables"]["properties"].update(JOB_VARIABLES)
    assert json.loads((REPO / "services" / "gpu_pool_template.json").read_text()) == expected


def test_gpu_check_without_cuda_compares_cpu_with_cpu_exactly(tmp_path):
    import json

    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--models", "seqrec", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no CUDA device here" in proc.stderr
    result = json.loads(out.read_text())
    assert result["device"] == result["reference"] == "cpu" and not result["failed"]
    (row,) = result["rows"]
    assert row["model"] == "seqrec" and row["losses_compared"] >= 1 and row["max_rel_loss_diff"] == 0.0
    assert "seqrec" in proc.stdout and "yes" in proc.stdout
