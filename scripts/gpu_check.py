"""The GPU path, checked: every model's tiny config trained on the CPU and on CUDA, outputs compared, a throughput table.

    .venv/bin/python scripts/gpu_check.py                       # every model of the catalog, CPU vs cuda
    .venv/bin/python scripts/gpu_check.py --models seqrec egtr --out docs/gpu_check.json
    .venv/bin/python scripts/gpu_check.py --bf16                # the CUDA run also with bf16 autocast (the LM's dtype)

For each model of the catalog (models/catalog.py) the script writes its ``tiny`` preset's data into a temporary
folder, sets every ``device`` of the config to the reference device (``cpu``), runs all its training stages through
the same functions the flow runs (a temporary SQLite MLflow store takes the per-epoch metrics), then does the same
with the device ``cuda`` (the process's first GPU; under torchrun each rank takes ``cuda:LOCAL_RANK``). What is
compared: every per-epoch metric whose name ends in ``loss`` that both runs logged, as the largest relative
difference. Tolerances: fp32 with TF32 off (set here), |CUDA - CPU| / |CPU| <= 1e-3 per logged loss (the kernels sum
in other orders and a few optimizer steps carry the rounding on); bf16 autocast <= 5e-2. Throughput: each stage's
wall seconds on both devices, and their ratio (CPU / CUDA; > 1 = CUDA faster), measured in the same run. Tiny configs
are dispatch-bound, so these ratios are not the speed-up at real sizes: they show the path runs, not how fast. The
first model is run once on each device before anything is timed (imports, the CUDA context, first kernels).

Without a CUDA device the script says so and runs the reference twice (CPU vs CPU: the machinery, and that the
tiny runs are deterministic: every difference must be 0); the exit status is 0 unless a comparison fails.
Writes ``--out`` (JSON) and prints the table. Meant to finish in under 5 minutes on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOL = {"fp32": 1e-3, "bf16": 5e-2}


def set_device(section, device: str):
    """Every ``device`` key of a params section (nested), set to ``device``."""
    if isinstance(section, dict):
        return {k: (device if k == "device" else set_device(v, device)) for k, v in section.items()}
    if isinstance(section, list):
        return [set_device(v, device) for v in section]
    return section


def set_bf16(section: dict) -> dict:
    """bf16 autocast where a model has the switch (the bilingual LM's ``dtype``)."""
    out = json.loads(json.dumps(section))
    for stage in ("pretrain", "sft"):
        if isinstance(out.get(stage), dict) and "dtype" in out[stage]:
            out[stage]["dtype"] = "bfloat16"
    return out


def run_model(name: str, device: str, root: Path, bf16: bool = False) -> dict:
    """All training stages of ``name``'s tiny config on ``device``; per stage: seconds and the logged losses."""
    from mlflow import MlflowClient

    from models import catalog
    from models.common import tracking

    spec = catalog.get(name)
    section = set_device(spec.tiny(root), device)
    if bf16:
        section = set_bf16(section)
    cfg = spec.config.model_validate(section)
    run_id = tracking.start_run(f"gpu-check-{name}", f"{name}-{device}{'-bf16' if bf16 else ''}", {})
    done, stages = {}, {}
    for stage in spec.stages:
        t0 = time.perf_counter()
        done[stage.name] = stage.train(cfg, run_id, done)
        stages[stage.name] = {"seconds": time.perf_counter() - t0}
    c = MlflowClient()
    losses = {}
    for key in c.get_run(run_id).data.metrics:
        if key.endswith("loss"):
            losses[key] = [m.value for m in sorted(c.get_metric_history(run_id, key), key=lambda m: m.step)]
    c.set_terminated(run_id)
    return {"stages": stages, "losses": losses}


def compare(ref: dict, other: dict) -> tuple[float, int]:
    """The largest relative difference over the losses both runs logged, and how many values were compared."""
    worst, n = 0.0, 0
    for key, a in ref["losses"].items():
        b = other["losses"].get(key)
        if not b:
            continue
        for x, y in zip(a, b):
            if x == x and y == y:  # NaN (no positives in a batch) on both sides is not a difference
                worst = max(worst, abs(x - y) / max(abs(x), 1e-12))
                n += 1
    return worst, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=None, help="catalog names (default: all)")
    ap.add_argument("--device", default="cuda", help="the device checked against --reference (default cuda)")
    ap.add_argument("--reference", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="also run the device with bf16 autocast where a model has it")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from models import catalog

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    names = args.models or catalog.names()
    device = args.device
    note = None
    if device.startswith("cuda") and not torch.cuda.is_available():
        note = f"no CUDA device here (torch {torch.__version__}): {args.reference} vs {args.reference}, the machinery only"
        print(note, file=sys.stderr)
        device = args.reference
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        cwd = os.getcwd()
        os.chdir(tmp)  # the stages write outputs/ and checkpoints relative to the working directory
        try:
            # warm-up, untimed: imports, the CUDA context and the first kernels would otherwise be charged to the
            # first model's stages
            run_model(names[0], args.reference, tmp / "warmup" / "ref")
            if device != args.reference:
                run_model(names[0], device, tmp / "warmup" / "dev")
            for name in names:
                ref = run_model(name, args.reference, tmp / name / "ref")
                runs = [("fp32", run_model(name, device, tmp / name / "dev"))]
                if args.bf16 and device.startswith("cuda"):
                    runs.append(("bf16", run_model(name, device, tmp / name / "bf16", bf16=True)))
                for precision, other in runs:
                    worst, n = compare(ref, other)
                    tol = TOL[precision] if device != args.reference else 0.0
                    ok = n > 0 and worst <= tol
                    if not ok:
                        failed.append(f"{name} {precision}")
                    for stage, r in ref["stages"].items():
                        s_dev = other["stages"][stage]["seconds"]
                        rows.append({"model": name, "stage": stage, "precision": precision,
                                     "reference_s": r["seconds"], "device_s": s_dev,
                                     "ratio": r["seconds"] / s_dev if s_dev else None,
                                     "max_rel_loss_diff": worst, "losses_compared": n, "tolerance": tol, "ok": ok})
        finally:
            os.chdir(cwd)
    head = f"{'model':14s} {'stage':11s} {'prec':5s} {args.reference + ' s':>8s} {device + ' s':>8s} {'ratio':>6s} " \
           f"{'max rel diff':>12s} {'n':>4s} {'tol':>6s} ok"
    print(head)
    for r in rows:
        print(f"{r['model']:14s} {r['stage']:11s} {r['precision']:5s} {r['reference_s']:8.2f} {r['device_s']:8.2f} "
              f"{r['ratio']:6.2f} {r['max_rel_loss_diff']:12.2e} {r['losses_compared']:4d} {r['tolerance']:6.0e} "
              f"{'yes' if r['ok'] else 'NO'}")
    result = {"reference": args.reference, "device": device, "gpu": gpu, "torch": torch.__version__, "note": note,
              "tolerances": TOL, "ratio": "reference seconds / device seconds, same run", "rows": rows,
              "failed": failed}
    if args.out:
        from data.atomic import atomic_write_json

        atomic_write_json(args.out, result)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
