"""EGTR efficiency benchmark: parameters and images per second, detector alone vs the full model (spec 5.3).

Protocol (as the official ``--min_size 600 --max_size 1000 --infer_only True``): batch 1, forward only, images
resized to shorter side 600 / longer side <= 1000 (here: random tensors of 600 x 1000, the worst case of that
resize, and the same input for both models), after ``--warmup`` untimed passes, the two models' passes
interleaved. The detector is the paper's
Deformable DETR (ResNet-50, d = 256, 6 + 6 layers, 8 heads, FFN 1024, 4 levels, 200 queries), with random
weights (speed does not depend on them). The full model adds the relation head (C_p = 50, VG). The relative
overhead of the head is the target (<= 15 %); its parameter count should be ~1.33 M.

    python scripts/egtr_benchmark.py --out docs/egtr_benchmark.json [--device cuda] [--iters 10]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.common.tracking import atomic_write_json  # noqa: E402
from models.egtr.config import DetectorConfig  # noqa: E402
from models.egtr.modeling import EGTR, count_parameters  # noqa: E402


def _summary(times: list[float]) -> dict:
    times = sorted(times)
    median = times[len(times) // 2]
    return {"median_s": median, "images_per_s": 1.0 / median, "min_s": times[0], "max_s": times[-1]}


def time_pair(model, x: torch.Tensor, mask: torch.Tensor, iters: int, warmup: int, device: str) -> tuple[dict, dict]:
    """Median forward time of ``model`` without and with its relation head, the two interleaved pass by pass
    (so drift of the machine's speed hits both alike)."""
    head = model.relation
    model.eval()
    times = {False: [], True: []}
    with torch.no_grad():
        for i in range(warmup + iters):
            for with_head in (False, True):
                model.relation = head if with_head else None
                t = time.perf_counter()
                model(x, mask)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                if i >= warmup:
                    times[with_head].append(time.perf_counter() - t)
    model.relation = head
    return _summary(times[False]), _summary(times[True])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/egtr_benchmark.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--height", type=int, default=600)
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = DetectorConfig()  # the paper's sizes
    full = EGTR(cfg, num_classes=150, num_predicates=50).to(args.device)
    x = torch.randn(1, 3, args.height, args.width, device=args.device)
    mask = torch.ones(1, args.height, args.width, dtype=torch.long, device=args.device)
    # the detector alone = the same module without the relation head (identical weights and input)
    rel = full.relation
    full.relation = None
    det_params = count_parameters(full)
    full.relation = rel
    det, egtr = time_pair(full, x, mask, args.iters, args.warmup, args.device)
    rows = [
        {"model": "Deformable DETR (detector alone)", "params": det_params, **det},
        {"model": "EGTR (detector + relation head)", "params": count_parameters(full), **egtr},
    ]
    overhead = egtr["median_s"] / det["median_s"] - 1
    result = {
        "device": args.device if args.device != "cpu" else f"cpu ({platform.processor() or platform.machine()}, "
                                                             f"{torch.get_num_threads()} threads)",
        "input": f"1 x 3 x {args.height} x {args.width}", "iters": args.iters, "warmup": args.warmup, "rows": rows,
        "relation_head_params": count_parameters(rel), "relation_head_time_overhead": overhead,
        "target_overhead_max": 0.15, "meets_target": overhead <= 0.15,
        "torch": torch.__version__,
    }
    print(f"{'model':36s} {'params':>12s} {'median s':>10s} {'img/s':>8s}")
    for r in rows:
        print(f"{r['model']:36s} {r['params']:12,d} {r['median_s']:10.3f} {r['images_per_s']:8.3f}")
    print(f"relation head: {result['relation_head_params']:,} parameters, +{overhead * 100:.1f}% time "
          f"(target <= 15%: {'met' if result['meets_target'] else 'NOT met'})")
    atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
