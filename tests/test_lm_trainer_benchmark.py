"""Smoke test of scripts/lm_trainer_benchmark.py: the --quick run (tiny preset, 6 steps, ours then HF Trainer in
subprocesses) gives the same per-step losses within tolerance and positive tokens/s for both."""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "lm_trainer_benchmark.py"


def _accelerate_available(path: str | None) -> bool:
    code = "import sys\nif sys.argv[1]: sys.path.insert(0, sys.argv[1])\nimport accelerate"
    return subprocess.run([sys.executable, "-c", code, path or ""], capture_output=True).returncode == 0


@pytest.mark.timeout(120)
def test_quick_benchmark_losses_match_and_both_run(tmp_path):
    accel = os.environ.get("LM_BENCH_ACCELERATE_PATH")
    if not _accelerate_available(accel):
        pytest.skip("Hugging Face Trainer needs accelerate, which is not importable (set LM_BENCH_ACCELERATE_PATH "
                    "to a directory or wheel holding it, or install it)")
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=110)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["losses_equal"] and res["loss_max_rel_diff"] <= res["rtol"]
    assert len(res["loss_ours"]) == len(res["loss_hf"]) == res["config"]["steps"] == 6
    assert res["init_weights_equal"] and res["order_equal"] and res["param_groups_equal"]
    assert res["lr_max_abs_diff"] == 0 and not res["problems"]
    for impl in ("ours", "hf"):
        assert res["summary"][impl]["tokens_per_s"] > 0
        assert res["summary"][impl]["rss_peak_mib"] > 0
    assert res["ratio_ours_over_hf"] > 0
    assert "| implementation |" in r.stdout
