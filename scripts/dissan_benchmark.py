"""DisSAN on CPU: the project's batched encoder vs a straightforward reference implementation.

The reference (inside this script) shares the weights but computes attention the obvious way: a loop
over the examples of the batch, the directional + distance + padding mask built for each example, a
loop over heads with per-head slices of W_Q / W_K / W_V, and a masked softmax per head. Both run the
whole classifier (embeddings -> two directional blocks -> pooling -> [u; v; |u-v|; u*v] -> MLP) at the
paper's sizes (d = 300, 5 heads, FFN 1200) on batch 64, length 83 (the unofficial ports' maximum).

Measured, each in its own process (so peak memory is per implementation): training pairs/s
(forward + backward + Adam step), inference pairs/s (no_grad forward), peak RSS growth during the
timed loop, and the largest absolute difference of the outputs (logits, eval mode) and gradients.

    .venv/bin/python scripts/dissan_benchmark.py --out docs/dissan_benchmark.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from models.dissan.config import DissanModelConfig  # noqa: E402
from models.dissan.modeling import NEG_INF, NLIClassifier, pair_features  # noqa: E402


def reference_attention(attn, x: torch.Tensor, lengths: torch.Tensor, direction: str, alpha: float, distance: bool) -> torch.Tensor:
    """Per example, per head; the mask is built for each example."""
    B, n, d = x.shape
    h, dk = attn.h, attn.dk
    outs = []
    for b in range(B):
        L = int(lengths[b])
        mask = torch.full((n, n), NEG_INF)
        for i in range(n):
            keys = torch.arange(0, min(i, L)) if direction == "fw" else torch.arange(i + 1, max(L, i + 1))
            if len(keys):
                mask[i, keys] = (-alpha * (i - keys).abs().float()) if distance else 0.0
        heads = []
        for hd in range(h):
            cols = slice(hd * dk, (hd + 1) * dk)
            q = x[b] @ attn.q.weight[cols].T + attn.q.bias[cols]
            k = x[b] @ attn.k.weight[cols].T + attn.k.bias[cols]
            v = x[b] @ attn.v.weight[cols].T + attn.v.bias[cols]
            logits = q @ k.T / math.sqrt(dk) + mask
            rows = []
            for i in range(n):  # masked softmax, a row without keys gives zeros
                if torch.isinf(logits[i]).all():
                    rows.append(torch.zeros(n))
                else:
                    rows.append(torch.softmax(logits[i], -1))
            heads.append(torch.stack(rows) @ v)
        outs.append(attn.o(torch.cat(heads, -1)))
    return attn.drop(torch.stack(outs))


def reference_encode(model: NLIClassifier, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    enc, cfg = model.encoder, model.cfg
    x = enc.proj(model.embed(tokens))
    dirs = []
    for block in (enc.fw, enc.bw):
        hidden = reference_attention(block.attn, x, lengths, block.direction, cfg.alpha, cfg.distance_mask)
        g = block.gate(x, hidden)
        dirs.append(block.norm(g + block.ffn(g)))
    u = torch.cat(dirs, -1)
    pad = torch.arange(u.shape[1])[None, :] >= lengths[:, None]
    a = enc.s2t(u).masked_fill(pad[..., None], NEG_INF)
    return torch.cat([(torch.softmax(a, 1) * u).sum(1), u.masked_fill(pad[..., None], NEG_INF).amax(1)], -1)


def reference_forward(model: NLIClassifier, p, pl, h, hl) -> torch.Tensor:
    return model.mlp(model.drop(pair_features(reference_encode(model, p, pl), reference_encode(model, h, hl))))


def make(args, seed: int = 0):
    torch.manual_seed(seed)
    model = NLIClassifier(DissanModelConfig(d_model=None, heads=args.heads), torch.randn(args.vocab, args.d) * 0.3)
    g = torch.Generator().manual_seed(seed + 1)
    p = torch.randint(2, args.vocab, (args.batch, args.length), generator=g)
    h = torch.randint(2, args.vocab, (args.batch, args.length), generator=g)
    pl = torch.full((args.batch,), args.length)
    hl = torch.randint(args.length // 4, args.length + 1, (args.batch,), generator=g)  # some padding in the hypotheses
    y = torch.randint(0, 3, (args.batch,), generator=g)
    return model, (p, pl, h, hl), y


def worker(args) -> dict:
    torch.set_num_threads(args.threads)
    model, batch, y = make(args)
    fwd = (lambda *b: model(*b)) if args.impl == "batched" else (lambda *b: reference_forward(model, *b))  # noqa: E731
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-3)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.train()
    times = []
    for it in range(args.warmup + args.iters):
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(fwd(*batch), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it >= args.warmup:
            times.append(time.perf_counter() - t)
    train_s = sorted(times)[len(times) // 2]
    model.eval()
    times = []
    with torch.no_grad():
        for it in range(args.warmup + args.iters):
            t = time.perf_counter()
            fwd(*batch)
            if it >= args.warmup:
                times.append(time.perf_counter() - t)
    infer_s = sorted(times)[len(times) // 2]
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024  # KiB -> MiB (Linux)
    return {"impl": args.impl, "train_pairs_per_s": args.batch / train_s, "infer_pairs_per_s": args.batch / infer_s,
            "train_step_s": train_s, "infer_step_s": infer_s, "peak_rss_growth_mb": peak}


def equivalence(args) -> dict:
    """Max |difference| of logits and of the parameter gradients between the two implementations."""
    torch.set_num_threads(args.threads)
    model, batch, y = make(args)
    model.eval()  # dropout off: both must compute the same function
    out_a = model(*batch)
    torch.nn.functional.cross_entropy(out_a, y).backward()
    grads_a = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
    model.zero_grad()
    out_b = reference_forward(model, *batch)
    torch.nn.functional.cross_entropy(out_b, y).backward()
    grad_diff = max(float((q.grad - grads_a[n]).abs().max()) for n, q in model.named_parameters() if q.grad is not None)
    return {"max_abs_logit_diff": float((out_a - out_b).detach().abs().max()), "max_abs_grad_diff": grad_diff,
            "finite": bool(torch.isfinite(out_a).all() and torch.isfinite(out_b).all())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--length", type=int, default=83)
    ap.add_argument("--d", type=int, default=300)
    ap.add_argument("--heads", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "docs" / "dissan_benchmark.json"))
    ap.add_argument("--impl", choices=("batched", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.impl:
        print(json.dumps(worker(args)))
        return 0
    if args.check:
        print(json.dumps(equivalence(args)))
        return 0
    base = [sys.executable, __file__, *[x for k in ("batch", "length", "d", "heads", "vocab", "iters", "warmup", "threads")
                                        for x in (f"--{k}", str(getattr(args, k)))]]
    rows = []
    for impl in ("batched", "reference"):
        res = subprocess.run([*base, "--impl", impl], capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    check = json.loads(subprocess.run([*base, "--check"], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    a, b = rows
    speed = {"train": a["train_pairs_per_s"] / b["train_pairs_per_s"], "infer": a["infer_pairs_per_s"] / b["infer_pairs_per_s"]}
    report = {"setting": {k: getattr(args, k) for k in ("batch", "length", "d", "heads", "iters", "warmup", "threads")},
              "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "python": platform.python_version()},
              "rows": rows, "speedup": speed, "equivalence": check, "command": " ".join(sys.argv)}
    print(f"DisSAN classifier, batch {args.batch}, length {args.length}, d {args.d}, {args.heads} heads, {args.threads} threads (CPU)")
    print(f"{'implementation':<12} {'train pairs/s':>14} {'infer pairs/s':>14} {'peak RSS growth MB':>19}")
    for r in rows:
        print(f"{r['impl']:<12} {r['train_pairs_per_s']:>14.1f} {r['infer_pairs_per_s']:>14.1f} {r['peak_rss_growth_mb']:>19.0f}")
    print(f"speed-up: train {speed['train']:.1f}x, inference {speed['infer']:.1f}x; max |logit diff| {check['max_abs_logit_diff']:.2e}, "
          f"max |grad diff| {check['max_abs_grad_diff']:.2e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
