"""MeLU training speed and memory: the batched implementation against the official code's computation.

Three implementations, each in its own subprocess (its peak resident memory, ru_maxrss, is its own), run in
``--rounds`` interleaved rounds on the same users; the table gives medians over the rounds:

- ``batched``: the project's meta-batch as one batched computation (``models/melu/meta.py``), whole epochs of the
  warm state (82 meta-batches of 32 users);
- ``reference``: ``scripts/melu_reference.py``, what the official hoyeoplee/MeLU code computes per meta-batch
  (dense rows built before timing as its pickles are, every autograd call with ``create_graph=True``, the
  ``.data`` copies of every ``state_dict`` entry, the ``deepcopy`` per meta-batch, Adam on everything), timed on
  the first ``--loop-batches`` meta-batches; its epoch time is the mean per meta-batch x 82;
- ``official`` (only with ``--official-repo DIR``, a checkout of hoyeoplee/MeLU @ f70c8ff, which this repository
  does not copy): the official ``MeLU`` class itself on the same dense episodes and the same initial weights, its
  ``load_state_dict`` made to copy through ``.data`` as torch <= 1.1 did (the minimal change that lets it run on
  this torch); it calibrates the reference: the two must agree in time (within 20%) and in the weights after one
  update (same computation).

The ratios are against ``reference`` (and ``official`` when it ran). Before timing, ``check`` verifies that the
reference's exact first- and second-order MAML meta-gradient (``exact_query_loss``) equals the batched one on one
meta-batch. ``batched`` also reports its matmul FLOPs per epoch (``torch.utils.flop_counter``) against this
machine's measured fp32 matmul peak at the same thread count.

    python scripts/melu_benchmark.py --out docs/melu_benchmark.json
    python scripts/melu_benchmark.py --local-steps 1 5 --threads 1 2 --official-repo /path/to/MeLU --out docs/melu_benchmark.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from data.config import load_section  # noqa: E402
from models.melu import recipe  # noqa: E402
from models.melu.config import MeluConfig  # noqa: E402
from models.melu.meta import query_losses  # noqa: E402
from models.melu.modeling import MeLU  # noqa: E402
from scripts.melu_reference import OFFICIAL_WIDTH, OfficialLayoutMeLU, exact_query_loss, official_update  # noqa: E402

# the official module's parameter names for the reference's (same tensors, same shapes)
OFFICIAL_NAMES = {"rate.weight": "item_emb.embedding_rate.weight", "bag.genre.weight": "item_emb.embedding_genre.weight",
                  "bag.director.weight": "item_emb.embedding_director.weight", "bag.actor.weight": "item_emb.embedding_actor.weight",
                  "user.gender.weight": "user_emb.embedding_gender.weight", "user.age.weight": "user_emb.embedding_age.weight",
                  "user.occupation.weight": "user_emb.embedding_occupation.weight", "user.zip.weight": "user_emb.embedding_area.weight"}


def _setup(args):
    over = {"train.meta_order": args.meta_order, "train.local_steps": args.local_steps}
    if args.length_buckets is not None:
        over["train.length_buckets"] = args.length_buckets
    cfg = load_section(MeluConfig, "melu", args.params, over)
    data = recipe.load_data(cfg, states=["warm_state"])
    warm = data.episodes["warm_state"]
    torch.manual_seed(0)
    model = MeLU.from_config(cfg.model, data.tables.vocab_sizes)
    t = cfg.train
    batches = recipe.meta_batches(len(warm), t.meta_batch_size, t.order_seed, 0, t.drop_last)
    return cfg, data, warm, model, batches


def _official_melu(args, cfg, ref: OfficialLayoutMeLU):
    """The official ``MeLU`` (imported from ``--official-repo``) with the reference's weights and ``.data`` copies."""
    sys.path.insert(0, str(Path(args.official_repo).resolve()))
    from MeLU import MeLU as OfficialMeLU  # noqa: N811  (the official class, from the official checkout)

    v = ref.tables.vocab_sizes
    config = {"num_rate": v["rate"], "num_genre": OFFICIAL_WIDTH["genre"], "num_director": OFFICIAL_WIDTH["director"],
              "num_actor": OFFICIAL_WIDTH["actor"], "embedding_dim": cfg.model.embedding_dim,
              "first_fc_hidden_dim": cfg.model.hidden[0], "second_fc_hidden_dim": cfg.model.hidden[1],
              "num_gender": v["gender"], "num_age": v["age"], "num_occupation": v["occupation"], "num_zipcode": v["zip"],
              "use_cuda": False, "inner": args.local_steps, "lr": cfg.train.global_lr, "local_lr": cfg.train.local_lr,
              "batch_size": cfg.train.meta_batch_size}
    melu = OfficialMeLU(config)
    inner = melu.model

    def load_state_dict_as_torch_1_1(state, strict=True):  # torch <= 1.1: param.data.copy_(value), no version bump
        for name, p in inner.state_dict(keep_vars=True).items():
            p.data.copy_(state[name])

    inner.load_state_dict = load_state_dict_as_torch_1_1
    with torch.no_grad():
        theirs = inner.state_dict(keep_vars=True)
        for name, p in ref.state_dict().items():
            theirs[OFFICIAL_NAMES.get(name, name)].copy_(p)
    melu.store_parameters()
    melu.meta_optim = torch.optim.Adam(inner.parameters(), lr=cfg.train.global_lr)
    return melu


def matmul_peak_flops(threads: int, n: int = 2048, reps: int = 5) -> float:
    """Best fp32 matmul FLOP/s of this machine at ``threads`` threads (2 n^3 per product)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def worker(impl: str, args) -> dict:
    torch.set_num_threads(args.threads)
    cfg, data, warm, model, batches = _setup(args)
    t = cfg.train
    out = {"impl": impl, "users": len(warm), "meta_batches": len(batches), "meta_order": t.meta_order,
           "local_steps": t.local_steps, "threads": args.threads, "length_buckets": t.length_buckets}
    if impl == "check":
        ref = OfficialLayoutMeLU(model, data.tables)
        ep = warm.subset(batches[0][:8])
        diffs = {}
        for order in ("first", "second"):
            g_b = torch.autograd.grad(query_losses(model, data.tables, ep, t.local_steps, t.local_lr, order).mean(),
                                      list(model.decision_params().values()))
            dec = [ref.fc1.weight, ref.fc1.bias, ref.fc2.weight, ref.fc2.bias, ref.linear_out.weight, ref.linear_out.bias]
            g_r = torch.autograd.grad(exact_query_loss(ref, ref.episodes(ep), t.local_steps, t.local_lr, order), dec)
            diffs[order] = max(float((a - b.reshape(a.shape)).abs().max()) for a, b in zip(g_b, g_r))
        return out | {"max_abs_diff_meta_grad": diffs}
    if impl == "scaling":
        # time per meta-batch against the number of users in it (the first b users of the same meta-batches): the
        # intercept is the per-meta-batch cost that does not shrink with less work (operator dispatch, autograd
        # bookkeeping), the slope the per-user work
        sizes, per = [1, 2, 4, 8, 16, 32], {}
        eps = [warm.subset(idx) for idx in batches[: args.loop_batches]]
        for rep in range(3):
            for b in sizes:
                subs = [ep.subset(range(b)) for ep in eps]
                t0 = time.perf_counter()
                for ep in subs:
                    query_losses(model, data.tables, ep, t.local_steps, t.local_lr, t.meta_order, t.length_buckets).mean().backward()
                per.setdefault(b, []).append((time.perf_counter() - t0) / len(subs))
        med = {b: float(np.median(v)) for b, v in per.items()}
        slope, intercept = np.polyfit(sizes, [med[b] for b in sizes], 1)
        return out | {"seconds_per_meta_batch_by_users": med, "fit_intercept_s": float(intercept), "fit_slope_s_per_user": float(slope),
                      "intercept_share_at_32": float(intercept / med[32])}
    if impl == "batched":
        opt = torch.optim.Adam(model.parameters(), lr=t.global_lr)
        times = []
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            for idx in recipe.meta_batches(len(warm), t.meta_batch_size, t.order_seed, epoch, t.drop_last):
                loss = query_losses(model, data.tables, warm.subset(idx), t.local_steps, t.local_lr, t.meta_order,
                                    t.length_buckets).mean()
                opt.zero_grad(); loss.backward(); opt.step()
            times.append(time.perf_counter() - t0)
        from torch.utils.flop_counter import FlopCounterMode

        flops = 0
        for idx in batches:  # matmul FLOPs of one epoch (forward + backward), counted, not timed
            with FlopCounterMode(display=False) as fc:
                query_losses(model, data.tables, warm.subset(idx), t.local_steps, t.local_lr, t.meta_order,
                             t.length_buckets).mean().backward()
            flops += fc.get_total_flops()
        model.zero_grad()
        epoch_s = float(np.median(times))
        return out | {"epoch_seconds": epoch_s, "note": f"median of {args.epochs} full epochs", "epoch_matmul_flops": flops,
                      "achieved_flops_per_s": flops / epoch_s, "matmul_peak_flops_per_s": matmul_peak_flops(args.threads),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    # reference / official: the same first --loop-batches meta-batches, dense episodes built before timing
    ref = OfficialLayoutMeLU(model, data.tables)
    episodes = [ref.episodes(warm.subset(idx)) for idx in batches[: args.loop_batches]]
    per_batch = []
    if impl == "reference":
        opt = torch.optim.Adam(ref.parameters(), lr=t.global_lr)
        keep = {k: v.clone() for k, v in ref.state_dict().items()}
        for batch in episodes:
            t0 = time.perf_counter()
            keep = official_update(ref, opt, batch, t.local_steps, t.local_lr, keep)
            per_batch.append(time.perf_counter() - t0)
        final = {k: v.clone() for k, v in ref.state_dict().items()}
    else:
        melu = _official_melu(args, cfg, ref)
        for batch in episodes:
            xs, ys, xq, yq = (list(c) for c in zip(*batch))
            t0 = time.perf_counter()
            melu.global_update(xs, ys, xq, yq, t.local_steps)
            per_batch.append(time.perf_counter() - t0)
        theirs = melu.model.state_dict()
        final = {k: theirs[OFFICIAL_NAMES.get(k, k)].clone() for k in ref.state_dict()}
    torch.save(final, Path(args.work_dir) / f"{impl}-l{t.local_steps}-t{args.threads}.pt")
    mean = float(np.mean(per_batch))
    return out | {"seconds_per_meta_batch": mean, "epoch_seconds": mean * len(batches),
                  "note": f"mean of {len(per_batch)} meta-batches x {len(batches)} per epoch",
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run(impl: str, args, steps: int, threads: int) -> dict:
    skip = ("worker", "out", "local_steps", "threads", "rounds")
    cmd = [sys.executable, __file__, "--worker", impl, "--local-steps", str(steps), "--threads", str(threads)]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in skip and v is not None]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"melu_benchmark: worker {impl} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--meta-order", default="second", choices=["first", "second"])
    ap.add_argument("--local-steps", type=int, nargs="+", default=[5])
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--epochs", type=int, default=1, help="full epochs timed per round for the batched implementation")
    ap.add_argument("--loop-batches", type=int, default=8, help="meta-batches timed per round for reference / official")
    ap.add_argument("--length-buckets", type=int, help="batched: train.length_buckets (default: params.yaml's)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    ap.add_argument("--official-repo", help="a checkout of hoyeoplee/MeLU @ f70c8ff: also time the official code")
    ap.add_argument("--work-dir", default="outputs/melu_benchmark", help="final weights of reference / official")
    ap.add_argument("--out", default="docs/melu_benchmark.json")
    ap.add_argument("--worker", choices=["batched", "reference", "official", "check", "scaling"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.local_steps, args.threads = args.local_steps[0], args.threads[0]
        print(json.dumps(worker(args.worker, args)))
        return
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    impls = ["batched", "reference"] + (["official"] if args.official_repo else [])
    rows = []
    for steps in args.local_steps:
        for threads in args.threads:
            check = _run("check", args, steps, threads)
            scaling = _run("scaling", args, steps, threads)
            rounds = [{impl: _run(impl, args, steps, threads) for impl in impls} for _ in range(args.rounds)]
            med = {impl: float(np.median([r[impl]["epoch_seconds"] for r in rounds])) for impl in impls}
            row = {"local_steps": steps, "threads": threads, "check": check, "scaling": scaling, "rounds": rounds,
                   "epoch_seconds": med, "speedup_vs_reference": med["reference"] / med["batched"]}
            b = rounds[-1]["batched"]
            row["batched_flops_share_of_peak"] = float(np.median([r["batched"]["achieved_flops_per_s"] for r in rounds])) / b["matmul_peak_flops_per_s"]
            if "official" in med:
                row["speedup_vs_official"] = med["official"] / med["batched"]
                row["reference_over_official_time"] = med["reference"] / med["official"]
                ref_w = torch.load(Path(args.work_dir) / f"reference-l{steps}-t{threads}.pt", weights_only=True)
                off_w = torch.load(Path(args.work_dir) / f"official-l{steps}-t{threads}.pt", weights_only=True)
                row["reference_vs_official_max_abs_weight_diff"] = max(float((ref_w[k] - off_w[k]).abs().max()) for k in ref_w)
            rows.append(row)
    print(f"MeLU, {args.meta_order}-order, warm state ({b['users']} users, {b['meta_batches']} meta-batches of 32); "
          f"medians of {args.rounds} interleaved rounds; reference/official: {args.loop_batches} meta-batches x {b['meta_batches']}")
    head = "| l | threads | batched s/epoch | reference s/epoch | official s/epoch | reference / official | batched speed-up vs reference | vs official | batched matmul GFLOP/s (% of peak) | meta-grad max diff (1st, 2nd) |"
    print(head + "\n" + "|---" * (head.count("|") - 1) + "|")
    for r in rows:
        m, b, d = r["epoch_seconds"], r["rounds"][-1]["batched"], r["check"]["max_abs_diff_meta_grad"]
        off = m.get("official")
        cells = [str(r["local_steps"]), str(r["threads"]), f"{m['batched']:.2f}", f"{m['reference']:.1f}",
                 f"{off:.1f}" if off else "-", f"{m['reference'] / off:.2f}" if off else "-",
                 f"{r['speedup_vs_reference']:.1f}x", f"{r['speedup_vs_official']:.1f}x" if off else "-",
                 f"{b['achieved_flops_per_s'] / 1e9:.1f} ({100 * r['batched_flops_share_of_peak']:.0f}% of "
                 f"{b['matmul_peak_flops_per_s'] / 1e9:.0f})", f"{d['first']:.1e}, {d['second']:.1e}"]
        print("| " + " | ".join(cells) + " |")
    print("\nWhat does not shrink with the work: batched seconds per meta-batch against its users (first b users of the "
          f"same {args.loop_batches} meta-batches, medians of 3), a linear fit; the bound is the official time per "
          "meta-batch over the fit's intercept (the speed-up if the per-user work cost nothing).")
    head = "| l | threads | s / meta-batch at b = 1, 8, 32 | intercept s (share at 32) | slope s / user | bound vs official |"
    print(head + "\n" + "|---" * (head.count("|") - 1) + "|")
    for r in rows:
        sc, m = r["scaling"], r["epoch_seconds"]
        by = {int(k): v for k, v in sc["seconds_per_meta_batch_by_users"].items()}
        off_mb = m["official"] / r["rounds"][-1]["batched"]["meta_batches"] if "official" in m else None
        r["bound_vs_official"] = off_mb / sc["fit_intercept_s"] if off_mb and sc["fit_intercept_s"] > 0 else None
        cells = [str(r["local_steps"]), str(r["threads"]), ", ".join(f"{by[b]:.4f}" for b in (1, 8, 32)),
                 f"{sc['fit_intercept_s']:.4f} ({100 * sc['intercept_share_at_32']:.0f}%)", f"{sc['fit_slope_s_per_user']:.5f}",
                 f"{r['bound_vs_official']:.1f}x" if r["bound_vs_official"] else "-"]
        print("| " + " | ".join(cells) + " |")
    from models.common.tracking import atomic_write_json

    atomic_write_json(args.out, {"rows": rows, "args": {k: v for k, v in vars(args).items() if k != "worker"}})


if __name__ == "__main__":
    main()
