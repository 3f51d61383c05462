"""MeLU training speed and memory: the batched implementation vs the official code's approach.

The reference ("per-user loop") is a straightforward re-implementation of how hoyeoplee/MeLU trains:
one user at a time, items as the official dense 10,246-wide rows (rate id | genre, director, actor
multi-hot | 4 user ids), multi-valued fields embedded by ``Linear(n, 32, bias=False)`` divided by the
number of active entries, and the whole network (embeddings included) re-run at every local step. Its
dense rows are built per user inside the loop (the official code instead pre-builds ~23 GB of pickles).
Two variants: ``loop_official`` takes the inner gradient with respect to every parameter, as the official
``torch.autograd.grad(loss, self.model.parameters(), create_graph=True)`` does, and applies only the
decision layers' part; ``loop_lean`` differentiates with respect to the decision layers only.
Both run the same model with the same weights, second-order MeLU-5 by default; before timing, the script
checks that both give the same meta-gradient on one meta-batch.

Each implementation runs in its own subprocess, so its peak resident memory (ru_maxrss) is its own.
The batched implementation runs whole epochs; the loop runs ``--loop-batches`` meta-batches, and its epoch
time is extrapolated from the mean per-batch time (stated in the table).

    python scripts/melu_benchmark.py --out docs/melu_benchmark.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from data.config import load_section
from models.melu import recipe
from models.melu.config import MeluConfig
from models.melu.data import ITEM_BAGS
from models.melu.meta import query_losses
from models.melu.modeling import MeLU


class DenseMeLU(torch.nn.Module):
    """The official layout: dense rows, Linear embeddings on multi-hot blocks, per-user functional MLP."""

    def __init__(self, model: MeLU, tables):
        super().__init__()
        v = tables.vocab_sizes
        d = model.item_encoder.rate.embedding_dim
        self.sizes = {"genre": v["genre"], "director": v["director"], "actor": v["actor"]}
        self.rate = torch.nn.Embedding(v["rate"], d)
        self.lin = torch.nn.ModuleDict({k: torch.nn.Linear(n, d, bias=False) for k, n in self.sizes.items()})
        self.user = torch.nn.ModuleList(torch.nn.Embedding(v[k], d) for k in ("gender", "age", "occupation", "zip"))
        self.fc = torch.nn.ModuleList(torch.nn.Linear(l.in_features, l.out_features) for l in model.fc)
        self.out = torch.nn.Linear(model.out.in_features, 1)
        with torch.no_grad():  # same weights as the batched model
            self.rate.weight.copy_(model.item_encoder.rate.weight)
            for k in self.sizes:
                self.lin[k].weight.copy_(getattr(model.item_encoder, k).weight.T)
            for mine, theirs in zip(self.user, (model.user_encoder.gender, model.user_encoder.age, model.user_encoder.occupation, model.user_encoder.zip)):
                mine.weight.copy_(theirs.weight)
            for a, b in zip(self.fc, model.fc):
                a.load_state_dict(b.state_dict())
            self.out.load_state_dict(model.out.state_dict())
        # official row layout: [rate | genre | director | actor | gender age occupation zip]
        bounds = np.cumsum([1, v["genre"], v["director"], v["actor"]])
        self.slices = {"genre": (1, bounds[1]), "director": (bounds[1], bounds[2]), "actor": (bounds[2], bounds[3])}
        self.width = int(bounds[3]) + 4
        self.tables = tables
        self.bags = {}
        for name in ITEM_BAGS:
            b = tables.item_bags[name]
            ends = torch.cat([b.offsets[1:], torch.tensor([len(b.ids)])])
            self.bags[name] = [b.ids[s:e].tolist() for s, e in zip(b.offsets.tolist(), ends.tolist())]

    def dense_rows(self, user_row: int, item_rows) -> torch.Tensor:
        rows = torch.zeros(len(item_rows), self.width, dtype=torch.long)
        for r, i in enumerate(item_rows):
            rows[r, 0] = self.tables.item_rate[i]
            for name in ITEM_BAGS:
                lo, _ = self.slices[name]
                rows[r, [lo + j for j in self.bags[name][i]]] = 1
        rows[:, -4:] = self.tables.user_fields[user_row]
        return rows

    def forward(self, x: torch.Tensor, fast: dict) -> torch.Tensor:
        parts = [self.rate(x[:, 0])]
        for name in ITEM_BAGS:
            lo, hi = self.slices[name]
            hot = x[:, lo:hi].float()
            parts.append(self.lin[name](hot) / hot.sum(1, keepdim=True))
        parts += [emb(x[:, -4 + k]) for k, emb in enumerate(self.user)]
        h = torch.cat(parts, 1)
        for i in range(len(self.fc)):
            h = torch.relu(torch.nn.functional.linear(h, fast[f"fc.{i}.weight"], fast[f"fc.{i}.bias"]))
        return torch.nn.functional.linear(h, fast["out.weight"], fast["out.bias"]).squeeze(-1)

    def decision(self) -> dict:
        out = {}
        for i, l in enumerate(self.fc):
            out[f"fc.{i}.weight"], out[f"fc.{i}.bias"] = l.weight, l.bias
        out["out.weight"], out["out.bias"] = self.out.weight, self.out.bias
        return out

    def batch_loss(self, ep, steps: int, lr: float, second: bool, all_grads: bool = True) -> torch.Tensor:
        """Mean query loss of a meta-batch, one user at a time.

        ``all_grads``: like the official code, take the inner gradient with respect to *every* parameter
        (``torch.autograd.grad(loss, model.parameters(), create_graph=True)``) and apply only the decision
        layers' part; otherwise differentiate with respect to the decision layers only (a leaner loop).
        """
        embeddings = [p for n, p in self.named_parameters() if not n.startswith(("fc.", "out."))]
        losses = []
        for u in range(len(ep)):
            n = int(ep.support_mask[u].sum())
            xs = self.dense_rows(int(ep.user_rows[u]), ep.support_items[u, :n].tolist())
            xq = self.dense_rows(int(ep.user_rows[u]), ep.query_items[u].tolist())
            fast = self.decision()
            for _ in range(steps):
                loss = ((self(xs, fast) - ep.support_y[u, :n]) ** 2).mean()
                wrt = list(fast.values()) + (embeddings if all_grads else [])
                grads = torch.autograd.grad(loss, wrt, create_graph=second)[: len(fast)]
                fast = {k: w - lr * (g if second else g.detach()) for (k, w), g in zip(fast.items(), grads)}
            losses.append(((self(xq, fast) - ep.query_y[u]) ** 2).mean())
        return torch.stack(losses).mean()


def worker(impl: str, args) -> dict:
    torch.set_num_threads(args.threads)
    cfg = load_section(MeluConfig, "melu", args.params, {"train.meta_order": args.meta_order, "train.local_steps": args.local_steps})
    data = recipe.load_data(cfg, states=["warm_state"])
    warm = data.episodes["warm_state"]
    t = cfg.train
    torch.manual_seed(0)
    model = MeLU.from_config(cfg.model, data.tables.vocab_sizes)
    second = t.meta_order == "second"
    batches = recipe.meta_batches(len(warm), t.meta_batch_size, t.order_seed, 0, t.drop_last)
    if impl == "check":
        dense = DenseMeLU(model, data.tables)
        ep = warm.subset(batches[0][:8])
        g_b = torch.autograd.grad(query_losses(model, data.tables, ep, t.local_steps, t.local_lr, t.meta_order).mean(), list(model.decision_params().values()))
        diffs = {}
        for all_grads in (True, False):
            g_d = torch.autograd.grad(dense.batch_loss(ep, t.local_steps, t.local_lr, second, all_grads), list(dense.decision().values()))
            diffs["official" if all_grads else "lean"] = max(float((a - b).abs().max()) for a, b in zip(g_b, g_d))
        return {"max_abs_diff_meta_grad": max(diffs.values()), "per_reference": diffs}
    if impl == "batched":
        opt = torch.optim.Adam(model.parameters(), lr=t.global_lr)
        times = []
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            for idx in recipe.meta_batches(len(warm), t.meta_batch_size, t.order_seed, epoch, t.drop_last):
                loss = query_losses(model, data.tables, warm.subset(idx), t.local_steps, t.local_lr, t.meta_order).mean()
                opt.zero_grad(); loss.backward(); opt.step()
            times.append(time.perf_counter() - t0)
        epoch_s = float(np.median(times))
        note = f"median of {args.epochs} full epochs"
    else:
        dense = DenseMeLU(model, data.tables)
        opt = torch.optim.Adam(dense.parameters(), lr=t.global_lr)
        per_batch = []
        for idx in batches[: args.loop_batches]:
            t0 = time.perf_counter()
            loss = dense.batch_loss(warm.subset(idx), t.local_steps, t.local_lr, second, all_grads=impl == "loop_official")
            opt.zero_grad(); loss.backward(); opt.step()
            per_batch.append(time.perf_counter() - t0)
        epoch_s = float(np.mean(per_batch)) * len(batches)
        note = f"mean of {len(per_batch)} meta-batches x {len(batches)} batches per epoch"
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": impl, "epoch_seconds": epoch_s, "peak_rss_mb": peak_mb, "note": note, "users": len(warm),
            "meta_batches": len(batches), "meta_order": t.meta_order, "local_steps": t.local_steps, "threads": args.threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--meta-order", default="second", choices=["first", "second"])
    ap.add_argument("--local-steps", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3, help="full epochs timed for the batched implementation")
    ap.add_argument("--loop-batches", type=int, default=8, help="meta-batches timed for the per-user loop")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="docs/melu_benchmark.json")
    ap.add_argument("--worker", choices=["batched", "loop_official", "loop_lean", "check"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    results = {}
    for impl in ("check", "batched", "loop_official", "loop_lean"):
        cmd = [sys.executable, __file__, "--worker", impl] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("worker", "out")]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
    b = results["batched"]
    speedup = {k: results[k]["epoch_seconds"] / b["epoch_seconds"] for k in ("loop_official", "loop_lean")}
    print(f"MeLU-{args.local_steps}, {args.meta_order}-order, warm state ({b['users']} users, {b['meta_batches']} meta-batches of 32), {args.threads} threads")
    print(f"meta-gradient max |batched - loop| on one meta-batch: {results['check']['max_abs_diff_meta_grad']:.2e}")
    print("| implementation | s / epoch | peak RSS (MB) | how measured |\n|---|---|---|---|")
    for r in (b, results["loop_official"], results["loop_lean"]):
        print(f"| {r['impl']} | {r['epoch_seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['note']} |")
    print("speed-up of batched: " + ", ".join(f"{v:.1f}x vs {k}" for k, v in speedup.items()))
    from models.common.tracking import atomic_write_json

    atomic_write_json(args.out, {"results": results, "speedup": speedup, "args": {k: v for k, v in vars(args).items() if k != "worker"}})


if __name__ == "__main__":
    main()
