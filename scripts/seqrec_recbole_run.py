"""RecBole's GRU4Rec / SASRec on the S3-Rec sequences, under the project's protocol and a wall-clock budget.

Run with the RecBole environment (not the project's):

    .venv-recbole/bin/python scripts/seqrec_recbole_run.py --dataset Beauty --model SASRec --budget-s 150 \
        --out outputs/recbole/Beauty-SASRec.json

What it does:
- converts ``data/raw/s3rec_sequences/<Dataset>.txt`` (``user item1 item2 ...``, time order) to RecBole's
  atomic format ``<work>/data/<name>/<name>.inter`` (``user_id:token  item_id:token  timestamp:float``,
  timestamp = position in the user's sequence);
- configures RecBole like the project's loop: leave-one-out by time (valid = second-to-last item, test =
  last item), full ranking over all items, consumed items stay candidates (RecBole never masks history for
  sequential models), max 50 most recent items, full-softmax CE, no negative sampling, d = 64,
  Adam lr 1e-3, batch 256, HR/NDCG@{5,10,20}, NDCG@10 as the validation metric, CPU, no filtering;
  checks that RecBole kept every user and item;
- trains with :class:`BudgetTrainer` (RecBole's ``Trainer`` with its own ``_train_epoch`` / ``_valid_epoch``)
  until the epoch in which the summed train + validation seconds reach ``--budget-s``, RecBole's early
  stopping (``stopping_step`` = 10) fires or ``--max-epochs`` is reached; the best-validation weights are kept
  in memory (no ``torch.load`` of a pickled checkpoint, see below) and evaluated on the test split;
- writes one JSON: per-epoch train / validation seconds, training instances (RecBole turns every prefix of a
  user's training sequence into one instance, i.e. one next-item target), instances/s and users/s,
  best validation NDCG@10, test HR/NDCG@K of the best-validation model.

Compatibility notes (RecBole 1.2.1, released for numpy 1.x / pandas 2.x / torch < 2.6):
- ``Config.compatibility_settings`` assigns ``np.float = np.float_`` etc.; ``np.float_``/``np.complex_``/
  ``np.unicode_`` are gone in numpy 2, so the environment pins numpy < 2 (and pandas < 3); if a numpy 2 is
  found anyway, the three aliases are restored at runtime before RecBole is imported;
- ``Trainer.evaluate(load_best_model=True)`` calls ``torch.load`` on a pickled dict (it holds the Config), which
  torch >= 2.6 refuses by default (``weights_only=True``); this script never takes that path.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAW = REPO / "data" / "raw" / "s3rec_sequences"
DATASETS = ("Beauty", "Sports_and_Outdoors", "Toys_and_Games", "Yelp")
# (users, items) of the 5-core S3-Rec files; RecBole must keep all of them
EXPECTED = {"Beauty": (22363, 12101), "Sports_and_Outdoors": (35598, 18357), "Toys_and_Games": (19412, 11924), "Yelp": (30431, 20033)}
KS = (5, 10, 20)


def convert(dataset: str, users: int | None, data_root: Path) -> tuple[str, dict]:
    """Write ``<data_root>/<name>/<name>.inter``; returns the RecBole dataset name and the source counts."""
    name = dataset if not users else f"{dataset}_u{users}"
    out_dir = data_root / name
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.inter"
    n_users, items, n_inter = 0, set(), 0
    tmp = path.with_suffix(".inter.tmp")
    with open(RAW / f"{dataset}.txt") as src, open(tmp, "w") as dst:
        dst.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for line in src:
            parts = line.split()
            if not parts:
                continue
            if users and n_users >= users:
                break
            uid, seq = parts[0], parts[1:]
            for pos, item in enumerate(seq):
                dst.write(f"{uid}\t{item}\t{pos}\n")
            n_users += 1
            items.update(seq)
            n_inter += len(seq)
    os.replace(tmp, path)
    return name, {"users": n_users, "items": len(items), "interactions": n_inter, "inter_file": str(path)}


def _metrics(result: dict) -> dict[str, float]:
    """RecBole's {'hit@10': .., 'ndcg@10': ..} -> the project's {'hr_at_10': .., 'ndcg_at_10': ..}."""
    out = {}
    for key, value in result.items():
        metric, k = key.split("@")
        out[f"{'hr' if metric == 'hit' else metric}_at_{k}"] = float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--model", required=True, choices=("GRU4Rec", "SASRec"))
    ap.add_argument("--budget-s", type=float, default=150.0, help="train + validation seconds (0 = no budget)")
    ap.add_argument("--max-epochs", type=int, default=200)
    ap.add_argument("--stopping-step", type=int, default=10, help="RecBole early stopping (epochs without improvement)")
    ap.add_argument("--users", type=int, default=None, help="only the first N users (smoke tests)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--eval-batch-size", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", default=str(REPO / "outputs" / "recbole"), help="converted data, tensorboard dirs")
    ap.add_argument("--out", help="JSON result (required unless --check-data)")
    ap.add_argument("--check-data", action="store_true", help="only convert, load and check the counts; no training")
    args = ap.parse_args(argv)
    if not (args.out or args.check_data):
        ap.error("--out is required")

    work = Path(args.work_dir).resolve()
    if Path("/work/shared") in (work, *work.parents):
        ap.error("--work-dir must not be under /work/shared")
    out_path = Path(args.out).resolve() if args.out else None
    t_start = time.perf_counter()

    import numpy as np

    for alias, target in (("float_", "float64"), ("complex_", "complex128"), ("unicode_", "str_")):
        if not hasattr(np, alias):  # numpy 2: RecBole's Config.compatibility_settings reads these
            setattr(np, alias, getattr(np, target))

    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import early_stopping, get_model, init_seed

    name, source = convert(args.dataset, args.users, work / "data")
    # RecBole writes ./log_tensorboard (Trainer) relative to the working directory
    run_dir = work / "runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(run_dir)

    config_dict = {
        "data_path": str(work / "data"),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 50,
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "rm_dup_inter": None, "filter_inter_by_user_or_item": False,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "loss_type": "CE", "train_neg_sample_args": None,
        "hidden_size": 64, "embedding_size": 64,
        "train_batch_size": 256, "eval_batch_size": args.eval_batch_size,
        "learner": "adam", "learning_rate": 1e-3, "weight_decay": 0.0,
        "metrics": ["Hit", "NDCG"], "topk": list(KS), "valid_metric": "NDCG@10", "metric_decimal_place": 6,
        "epochs": args.max_epochs, "eval_step": 1, "stopping_step": args.stopping_step,
        "use_gpu": False, "gpu_id": "", "device": "cpu", "worker": 0,
        "seed": args.seed, "reproducibility": True, "shuffle": True,
        "show_progress": False, "save_dataset": False, "save_dataloaders": False,
        "checkpoint_dir": str(work / "saved"), "log_wandb": False, "state": "WARNING",
    }
    if args.model == "SASRec":
        config_dict.update({"n_layers": 2, "n_heads": 1, "inner_size": 64,
                            "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2})
    else:
        config_dict.update({"num_layers": 1, "dropout_prob": 0.2})

    command = [sys.executable, *sys.argv]
    sys.argv = sys.argv[:1]  # RecBole's Config parses --key=value arguments of the command line itself
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")  # pandas chained fillna (no NaN here)
    t0 = time.perf_counter()
    config = Config(model=args.model, dataset=name, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    data_prep_s = time.perf_counter() - t0

    n_users, n_items = dataset.user_num - 1, dataset.item_num - 1  # RecBole adds a [PAD] user and item
    counts = {"users": n_users, "items": n_items, "instances": int(dataset.inter_num),
              "train_instances": len(train_data.dataset), "valid_rows": len(valid_data.dataset),
              "test_rows": len(test_data.dataset)}
    problems = []
    # after ``build`` the dataset holds the augmented instances: one per interaction except each user's first
    if (n_users, n_items, counts["instances"]) != (source["users"], source["items"], source["interactions"] - source["users"]):
        problems.append(f"RecBole kept {n_users} users / {n_items} items / {counts['instances']} instances, "
                        f"the file has {source['users']} / {source['items']} / {source['interactions']} - {source['users']}")
    if not args.users and (n_users, n_items) != EXPECTED[args.dataset]:
        problems.append(f"expected {EXPECTED[args.dataset]} users/items for {args.dataset}, got {(n_users, n_items)}")
    if counts["valid_rows"] != n_users or counts["test_rows"] != n_users:
        problems.append(f"valid/test rows {counts['valid_rows']}/{counts['test_rows']} != users {n_users}")
    expected_instances = source["interactions"] - 3 * source["users"]  # targets s_2..s_{n-2} of every user
    if counts["train_instances"] != expected_instances:
        problems.append(f"train instances {counts['train_instances']} != interactions - 3 * users = {expected_instances}")
    if problems:
        raise SystemExit("data check failed: " + "; ".join(problems))
    print(f"[recbole] {args.dataset} {args.model}: {n_users} users, {n_items} items, "
          f"{counts['train_instances']} train instances; data preparation {data_prep_s:.1f}s", file=sys.stderr, flush=True)
    if args.check_data:
        print(json.dumps({"dataset": args.dataset, "counts": counts, "source": source, "data_prep_seconds": data_prep_s, "check": "ok"}))
        return 0

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])

    class BudgetTrainer(Trainer):
        """RecBole's Trainer; ``fit_budget`` is ``Trainer.fit`` with a wall-clock budget and in-memory best weights."""

        def fit_budget(self, train_data, valid_data, budget_s: float):
            self.eval_collector.data_collect(train_data)
            epochs, spent, best_state, best_epoch, stop_reason = [], 0.0, None, -1, "max_epochs"
            for epoch in range(self.epochs):
                t_a = time.perf_counter()
                loss = self._train_epoch(train_data, epoch, show_progress=False)
                t_b = time.perf_counter()
                score, result = self._valid_epoch(valid_data, show_progress=False)
                t_c = time.perf_counter()
                self.best_valid_score, self.cur_step, stop, improved = early_stopping(
                    score, self.best_valid_score, self.cur_step, max_step=self.stopping_step, bigger=self.valid_metric_bigger)
                if improved:
                    best_state, best_epoch, self.best_valid_result = copy.deepcopy(self.model.state_dict()), epoch, result
                train_s, valid_s = t_b - t_a, t_c - t_b
                spent += train_s + valid_s
                epochs.append({"epoch": epoch + 1, "train_seconds": train_s, "valid_seconds": valid_s,
                               "train_loss": float(sum(loss) if isinstance(loss, tuple) else loss) / len(train_data),
                               "instances_per_s": counts["train_instances"] / train_s, "users_per_s": n_users / train_s,
                               **{f"valid_{k}": v for k, v in _metrics(result).items()}})
                print(f"[recbole] epoch {epoch + 1}: train {train_s:.1f}s, valid {valid_s:.1f}s, "
                      f"valid NDCG@10 {score:.4f}, spent {spent:.1f}s", file=sys.stderr, flush=True)
                if stop:
                    stop_reason = "early_stopping"
                    break
                if budget_s > 0 and spent >= budget_s:
                    stop_reason = "time_budget"
                    break
            self.model.load_state_dict(best_state)
            return epochs, best_epoch, stop_reason

    trainer = BudgetTrainer(config, model)
    epochs, best_epoch, stop_reason = trainer.fit_budget(train_data, valid_data, args.budget_s)
    t_test = time.perf_counter()
    test = _metrics(trainer.evaluate(test_data, load_best_model=False, show_progress=False))
    test_s = time.perf_counter() - t_test

    train_s = [e["train_seconds"] for e in epochs]
    valid_s = [e["valid_seconds"] for e in epochs]
    mean_train = sum(train_s) / len(train_s)
    result = {
        "system": "recbole", "model": args.model, "dataset": args.dataset, "users_subset": args.users,
        "versions": {"recbole": recbole.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "pandas": pd.__version__, "python": platform.python_version()},
        "torch_threads": torch.get_num_threads(), "device": str(config["device"]),
        "counts": counts, "source": source, "data_prep_seconds": data_prep_s,
        "budget_s": args.budget_s, "max_epochs": args.max_epochs, "epochs_run": len(epochs), "stop_reason": stop_reason,
        "train_seconds_total": sum(train_s), "valid_seconds_total": sum(valid_s),
        "train_seconds_per_epoch": mean_train,
        "users_per_s": n_users / mean_train,
        "targets_per_s": counts["train_instances"] / mean_train,  # one target per RecBole instance
        "instances_per_s": counts["train_instances"] / mean_train,
        "valid_eval_seconds": sum(valid_s) / len(valid_s),
        "best_epoch": best_epoch + 1,
        "best_valid_ndcg_at_10": epochs[best_epoch]["valid_ndcg_at_10"],
        "best_valid": {k[len("valid_"):]: v for k, v in epochs[best_epoch].items() if k.startswith("valid_") and k != "valid_seconds"},
        "test": test, "test_eval_seconds": test_s,
        "epochs": epochs,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "config": {k: (v if isinstance(v, (int, float, str, bool, list, dict, type(None))) else str(v)) for k, v in config_dict.items()},
        "wall_seconds": time.perf_counter() - t_start,
        "command": command,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    print(f"[recbole] best epoch {best_epoch + 1} valid NDCG@10 {result['best_valid_ndcg_at_10']:.4f}; "
          f"test HR@10 {test['hr_at_10']:.4f} NDCG@10 {test['ndcg_at_10']:.4f}; wrote {out_path}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
