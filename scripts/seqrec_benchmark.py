"""Sequential recommenders on CPU: the project's GRU4Rec / SASRec (optionally FaNC) vs RecBole's, same budget.

For every dataset and system, one training run under the same wall-clock budget (train + validation
seconds, summed over epochs; a run stops after the epoch in which the sum reaches ``--budget-s``), then the
test split scored with the best-validation weights. Every run is its own process and runs alone (never in
parallel); the project's runs use ``.venv`` (this interpreter), RecBole's ``.venv-recbole`` through
``scripts/seqrec_recbole_run.py``. Protocol (both systems): leave-one-out by time, full ranking over all
items, consumed items stay candidates, 50 most recent items, full-softmax CE, d = 64, Adam lr 1e-3,
batch 256, CPU, ``torch.set_num_threads(--threads)``.

Throughput is counted per epoch of each system's own training set:
- users/s: training users (= sequences) / train seconds per epoch. The project's loop feeds one sequence per
  user and takes the loss at every position; RecBole feeds one instance per prefix of a user's sequence.
- targets/s: next-item predictions per second (project: non-padding target positions, i.e. s_2..s_{n-2}
  within the 50 most recent; RecBole: one target per instance, every s_2..s_{n-2}).
- valid eval s: one full-ranking pass over the validation split (all users).

    .venv/bin/python scripts/seqrec_benchmark.py --budget-s 150 --out docs/seqrec_benchmark.json
    .venv/bin/python scripts/seqrec_benchmark.py --datasets Beauty --users 300 --budget-s 5 --max-epochs 1 \
        --out outputs/seqrec_benchmark/smoke.json      # smoke test (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("Beauty", "Sports_and_Outdoors", "Toys_and_Games", "Yelp")
SYSTEMS = {  # name -> (implementation, model)
    "ours-gru4rec": ("ours", "gru4rec"),
    "ours-sasrec": ("ours", "sasrec"),
    "ours-fanc": ("ours", "fanc"),
    "recbole-gru4rec": ("recbole", "GRU4Rec"),
    "recbole-sasrec": ("recbole", "SASRec"),
}
DEFAULT_SYSTEMS = ("ours-gru4rec", "ours-sasrec", "recbole-gru4rec", "recbole-sasrec")
RECBOLE_PY = REPO / ".venv-recbole" / "bin" / "python"
RECBOLE_RUN = REPO / "scripts" / "seqrec_recbole_run.py"
KS = (5, 10, 20)


# --------------------------------------------------------------------------------------------------
# worker: one training run of the project's recipe (runs in its own process)
# --------------------------------------------------------------------------------------------------

def run_ours(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from data.config import load_section
    from models.seqrec import recipe
    from models.seqrec.config import SeqRecConfig
    from models.seqrec.data import leave_one_out, load_sequences

    ckpt_dir = Path(args.work_dir).resolve() / "ckpt" / f"{args.dataset}-{args.model}-{os.getpid()}"
    overrides = {"data.dataset": args.dataset, "model.name": args.model, "registry.model_name": args.model,
                 "train.device": "cpu", "train.resume": False,
                 "train.epochs": args.max_epochs, "train.checkpoint_dir": str(ckpt_dir.parent)}
    overrides["train.time_budget_s"] = float(args.budget_s)
    cfg, config_source = load_section(SeqRecConfig, "seqrec", REPO / "params.yaml", overrides), "params.yaml seqrec + overrides"

    t0 = time.perf_counter()
    if args.users:
        seqs, n_items = load_sequences(cfg.data.processed_dir, cfg.data.dataset)
        data = leave_one_out(seqs[: args.users], n_items, cfg.data.max_len)  # ids stay 1..N of the full dataset
    else:
        data = recipe.load_data(cfg)
    data_prep_s = time.perf_counter() - t0
    n_users = len(data.train_inputs)
    n_targets = int((data.train_targets > 0).sum())

    spent = [0.0]

    def report(epoch: int, m: dict) -> None:
        spent[0] += m["train_seconds"] + m["valid_seconds"]
        print(f"[ours] epoch {epoch + 1}: train {m['train_seconds']:.1f}s, valid {m['valid_seconds']:.1f}s, "
              f"valid NDCG@10 {m[recipe.SELECT_METRIC]:.4f}, spent {spent[0]:.1f}s", file=sys.stderr, flush=True)

    print(f"[ours] {args.dataset} {args.model}: {n_users} users, {data.n_items} items, {n_targets} train targets; "
          f"data preparation {data_prep_s:.1f}s; budget via recipe train.time_budget_s",
          file=sys.stderr, flush=True)
    try:
        model, history = recipe.train(cfg, data=data, ckpt_dir=str(ckpt_dir), on_epoch_end=[report], progress=False)
        device = next(model.parameters()).device
        t_test = time.perf_counter()
        test = recipe.evaluate(model, data.test, cfg, device, ks=KS)
        test_s = time.perf_counter() - t_test
    finally:
        shutil.rmtree(ckpt_dir, ignore_errors=True)

    train_s = [h["train_seconds"] for h in history]
    valid_s = [h["valid_seconds"] for h in history]
    rule = recipe.stop_rule(cfg)
    best, stop_reason = rule.best_index(history), rule.reason(history)
    mean_train = sum(train_s) / len(train_s)
    epochs = [{"epoch": i + 1, **h, "users_per_s": n_users / h["train_seconds"], "targets_per_s": n_targets / h["train_seconds"]}
              for i, h in enumerate(history)]
    result = {
        "system": "ours", "model": args.model, "dataset": args.dataset, "users_subset": args.users,
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "torch_threads": torch.get_num_threads(), "device": str(device),
        "counts": {"users": n_users, "items": data.n_items, "train_targets": n_targets},
        "data_prep_seconds": data_prep_s, "budget_s": args.budget_s, "budget_mechanism": "recipe train.time_budget_s",
        "max_epochs": args.max_epochs, "epochs_run": len(history), "stop_reason": stop_reason,
        "train_seconds_total": sum(train_s), "valid_seconds_total": sum(valid_s), "train_seconds_per_epoch": mean_train,
        "users_per_s": n_users / mean_train, "targets_per_s": n_targets / mean_train,
        "valid_eval_seconds": sum(valid_s) / len(valid_s),
        "best_epoch": best + 1, "best_valid_ndcg_at_10": history[best][recipe.SELECT_METRIC],
        "best_valid": {k[len("valid_"):]: v for k, v in history[best].items() if k.startswith("valid_") and k != "valid_seconds"},
        "test": {k: v for k, v in test.items()}, "test_eval_seconds": test_s,
        "epochs": epochs,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "config": cfg.model_dump(), "config_source": config_source,
        "wall_seconds": time.perf_counter() - t_start,
        "command": [sys.executable, *sys.argv],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"[ours] best epoch {best + 1} valid NDCG@10 {result['best_valid_ndcg_at_10']:.4f}; test HR@10 "
          f"{test['hr_at_10']:.4f} NDCG@10 {test['ndcg_at_10']:.4f}; wrote {out}", file=sys.stderr, flush=True)
    return 0


# --------------------------------------------------------------------------------------------------
# orchestrator
# --------------------------------------------------------------------------------------------------

def machine_info() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((line.split(":", 1)[1].strip() for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), None)
    info = {"cpu": cpu, "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)), "memory": mem,
            "platform": platform.platform(), "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg()),
            "ours": {"python": sys.executable, "torch": torch.__version__}}
    probe = ("import json, numpy, pandas, torch, recbole; print(json.dumps({'torch': torch.__version__, "
             "'recbole': recbole.__version__, 'numpy': numpy.__version__, 'pandas': pandas.__version__}))")
    try:
        out = subprocess.run([str(RECBOLE_PY), "-c", probe], capture_output=True, text=True, timeout=300, check=True)
        info["recbole"] = {"python": str(RECBOLE_PY), **json.loads(out.stdout.strip().splitlines()[-1])}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as err:
        info["recbole"] = {"python": str(RECBOLE_PY), "error": str(err)}
    return info


def command_for(system: str, dataset: str, args: argparse.Namespace, out: Path) -> list[str]:
    impl, model = SYSTEMS[system]
    common = ["--dataset", dataset, "--model", model, "--budget-s", str(args.budget_s), "--max-epochs", str(args.max_epochs),
              "--threads", str(args.threads), "--out", str(out)]
    if args.users:
        common += ["--users", str(args.users)]
    if impl == "ours":
        return [sys.executable, str(Path(__file__).resolve()), "--worker", *common, "--work-dir", str(args.work_dir)]
    return [str(RECBOLE_PY), str(RECBOLE_RUN), *common, "--work-dir", str(Path(args.work_dir) / "recbole")]


def run_one(cmd: list[str], log_path: Path, timeout: float | None) -> tuple[int, float, str]:
    """Run ``cmd`` in the repository root, teeing its output to stderr and ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t = time.perf_counter()
    tail: list[str] = []
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            for line in proc.stdout:
                log.write(line)
                if line.startswith(("[ours]", "[recbole]", "Traceback")) or "Error" in line:
                    sys.stderr.write("    " + line)
                tail = (tail + [line])[-20:]
                if timeout and time.perf_counter() - t > timeout:
                    proc.kill()
                    tail.append(f"killed after {timeout:.0f}s\n")
                    break
        finally:
            rc = proc.wait()
    return rc, time.perf_counter() - t, "".join(tail)


def fmt_table(rows: list[dict]) -> str:
    cols = [("dataset", "dataset", "{}"), ("system", "system", "{}"), ("epochs", "epochs_run", "{}"),
            ("train s/ep", "train_seconds_per_epoch", "{:.1f}"), ("users/s", "users_per_s", "{:.0f}"),
            ("targets/s", "targets_per_s", "{:.0f}"), ("valid eval s", "valid_eval_seconds", "{:.2f}"),
            ("best valid NDCG@10", "best_valid_ndcg_at_10", "{:.4f}"), ("test HR@10", "test_hr_at_10", "{:.4f}"),
            ("test NDCG@10", "test_ndcg_at_10", "{:.4f}"), ("stop", "stop_reason", "{}")]
    lines = [[h for h, _, _ in cols]]
    for r in rows:
        if "error" in r:
            lines.append([r["dataset"], r["system"], "FAILED: " + r["error"].strip().splitlines()[-1][:80]] + [""] * (len(cols) - 3))
            continue
        lines.append([f.format(r[k]) if r.get(k) is not None else "-" for _, k, f in cols])
    widths = [max(len(l[i]) for l in lines if len(l) > i and not l[i].startswith("FAILED")) for i in range(len(cols))]
    out = []
    for i, l in enumerate(lines):
        out.append("  ".join(c.ljust(w) if j < 2 else c.rjust(w) if not c.startswith("FAILED") else c for j, (c, w) in enumerate(zip(l, widths))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def summarise(system: str, res: dict) -> dict:
    keys = ("model", "dataset", "epochs_run", "stop_reason", "train_seconds_per_epoch", "users_per_s", "targets_per_s",
            "valid_eval_seconds", "best_epoch", "best_valid_ndcg_at_10", "test_eval_seconds", "data_prep_seconds",
            "train_seconds_total", "valid_seconds_total", "torch_threads", "counts", "wall_seconds")
    row = {"system": system, **{k: res.get(k) for k in keys}}
    row.update({f"test_{k}": v for k, v in res["test"].items()})
    return row


def orchestrate(args: argparse.Namespace) -> int:
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
    out_path = Path(args.out)
    runs_dir = Path(args.work_dir) / "runs"
    report = {"description": __doc__.split("\n")[0], "budget_s": args.budget_s, "max_epochs": args.max_epochs,
              "users_subset": args.users, "threads": args.threads, "datasets": args.datasets, "systems": args.systems,
              "machine": machine_info(), "benchmark_command": [sys.executable, *sys.argv], "rows": [], "runs": []}
    print(f"machine: {report['machine']['cpu']} ({report['machine']['usable_cpus']} usable CPUs), load average "
          f"{report['machine']['load_average_at_start']}; ours torch {report['machine']['ours']['torch']}, "
          f"recbole {report['machine']['recbole']}", file=sys.stderr)
    for dataset in args.datasets:
        for system in args.systems:
            tag = f"{dataset}-{system}" + (f"-u{args.users}" if args.users else "")
            res_path = runs_dir / f"{tag}.json"
            res_path.unlink(missing_ok=True)
            cmd = command_for(system, dataset, args, res_path)
            print(f"\n== {dataset} / {system}\n$ {' '.join(cmd)}", file=sys.stderr, flush=True)
            load_before = list(os.getloadavg())
            rc, wall, tail = run_one(cmd, runs_dir / f"{tag}.log", args.timeout_s)
            run = {"dataset": dataset, "system": system, "command": cmd, "returncode": rc, "wall_seconds": wall,
                   "load_average_before": load_before, "load_average_after": list(os.getloadavg()),
                   "log": str(runs_dir / f"{tag}.log")}
            if rc == 0 and res_path.exists():
                res = json.loads(res_path.read_text())
                run["result"] = res
                row = summarise(system, res)
            else:
                row = {"dataset": dataset, "system": system, "error": tail or f"exit code {rc}"}
                run["error"] = tail
            row["wall_seconds"] = wall
            report["runs"].append(run)
            report["rows"].append(row)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(report, indent=2))  # partial results survive an interruption
    table = fmt_table(report["rows"])
    report["table"] = table
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    out_path.write_text(json.dumps(report, indent=2))
    print("\n" + table)
    print(f"\nwrote {out_path}")
    return 0 if all("error" not in r for r in report["rows"]) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--systems", nargs="+", default=list(DEFAULT_SYSTEMS), help=f"from {list(SYSTEMS)}")
    ap.add_argument("--budget-s", type=float, default=150.0, help="train + validation seconds per run (0 = none)")
    ap.add_argument("--max-epochs", type=int, default=200)
    ap.add_argument("--users", type=int, default=None, help="only the first N users of each dataset (smoke tests)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every run")
    ap.add_argument("--timeout-s", type=float, default=None, help="kill a run after this many seconds")
    ap.add_argument("--work-dir", default=str(REPO / "outputs" / "seqrec_benchmark"))
    ap.add_argument("--out", default=str(REPO / "docs" / "seqrec_benchmark.json"))
    # worker mode (one run of the project's recipe; used by the orchestrator)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", choices=DATASETS, help=argparse.SUPPRESS)
    ap.add_argument("--model", choices=("gru4rec", "sasrec", "fanc"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if Path("/work/shared") in (Path(args.work_dir).resolve(), *Path(args.work_dir).resolve().parents):
        ap.error("--work-dir must not be under /work/shared")
    if args.worker:
        if not (args.dataset and args.model):
            ap.error("--worker needs --dataset and --model")
        return run_ours(args)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
