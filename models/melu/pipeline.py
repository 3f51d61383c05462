"""MeLU's declaration for the generic flow: one training stage (meta-training), evaluation on every state with the
evidence candidates (paper §3.3), the pyfunc, and the registry gate (``melu.registry``: mean cold-state MAE, lower
is better; plain champion/challenger aliases)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.common import tracking
from models.common.checkpoint import atomic_torch_save
from models.common.contract import Evaluation, ModelSpec, RunIdentity, Stage, dvc_address
from models.common.seed import select_device
from models.melu import recipe, report
from models.melu.tiny import tiny
from models.melu.config import MeluConfig
from models.melu.modeling import MeLU


def _load_model(cfg: MeluConfig, weights: str, vocab_sizes: dict[str, int], device) -> MeLU:
    model = MeLU.from_config(cfg.model, vocab_sizes).to(device)
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    return model


def identity(cfg: MeluConfig) -> RunIdentity:
    r = cfg.registry
    return RunIdentity(experiment=r.experiment, run_name=f"melu-{cfg.train.local_steps}-{cfg.train.meta_order}",
                       dvc_stage=dvc_address("melu", "train_melu"), registered_model=r.model_name, gate_metric=r.gate_metric,
                       gate_mode=r.gate_mode, data_paths=(cfg.data.raw_dir, cfg.data.processed_dir),
                       tags={"meta_order": cfg.train.meta_order, "local_steps": str(cfg.train.local_steps)})


def train(cfg: MeluConfig, run_id: str, done: dict) -> dict:
    """Meta-train (resumable); per-epoch metrics to ``run_id``; the last epoch's weights (official: no selection)."""
    ckpt_dir = str(Path(cfg.train.checkpoint_dir) / recipe.fingerprint(cfg))
    log_epoch = tracking.EpochLogger(run_id)
    model, history = recipe.train(cfg, ckpt_dir=ckpt_dir, on_epoch_end=[log_epoch])
    log_epoch.backfill(history)  # epochs restored from a checkpoint of an earlier attempt
    out = Path("outputs") / "melu" / run_id
    weights = atomic_torch_save({k: v.cpu() for k, v in model.state_dict().items()}, out / "model.pt")
    return {"weights": str(weights), "history": history, "checkpoint_dir": ckpt_dir}


def evidence_candidates(cfg: MeluConfig, run_id: str, weights: str) -> str:
    """Paper §3.3: per-item scores and the top-k list, written as CSV and logged as an artifact."""
    import pandas as pd

    from models.melu.evidence import pair_gradient_norms, select_candidates

    device = select_device(cfg.train.device)
    data = recipe.load_data(cfg, states=["warm_state"], device=device)
    model = _load_model(cfg, weights, data.tables.vocab_sizes, device)
    e = cfg.evidence
    pairs = pair_gradient_norms(model, data.tables, data.episodes["warm_state"], cfg.train.local_steps,
                                cfg.train.local_lr, e.grad_params, e.norm, e.batch_pairs)
    titles = pd.read_parquet(Path(cfg.data.processed_dir) / "items.parquet").set_index("movie_id").title.to_dict()
    table = select_candidates(pairs, e.top_k, titles)
    path = Path(weights).with_name("evidence_candidates.csv")
    table.to_csv(path, index=False)
    tracking.log_file(run_id, path, "evidence")
    top = table[table.top_k][["rank", "movie_id", "title", "score"]]
    tracking.log_json(run_id, top.to_dict(orient="records"), "evidence/top_k.json")
    return str(path)


def evaluate(cfg: MeluConfig, run_id: str, done: dict) -> Evaluation:
    """Final metrics on every state (DVC metrics file + learning curves), then the evidence candidates."""
    trained = done["train"]
    device = select_device(cfg.train.device)
    data = recipe.load_data(cfg, device=device)
    model = _load_model(cfg, trained["weights"], data.tables.vocab_sizes, device)
    metrics = recipe.evaluate_states(model, data, cfg)
    tracking.log_metrics(run_id, metrics, step=cfg.train.epochs)
    report.write(cfg, run_id, metrics, trained["history"])
    if cfg.evidence.enabled:
        evidence_candidates(cfg, run_id, trained["weights"])
    return Evaluation({"run_id": run_id, "metrics": metrics}, metrics[cfg.registry.gate_metric])


def log_model(cfg: MeluConfig, run_id: str, done: dict) -> str:
    """The pyfunc (weights + item table + vocabularies) with signature and input example."""
    import pandas as pd

    from models.melu.pyfunc import MeluPyfunc

    weights = done["train"]["weights"]
    proc = Path(cfg.data.processed_dir)
    meta_path = Path(weights).with_name("pyfunc_meta.json")
    meta_path.write_text(json.dumps({"local_steps": cfg.train.local_steps, "local_lr": cfg.train.local_lr,
                                     "embedding_dim": cfg.model.embedding_dim, "hidden": list(cfg.model.hidden)}))
    items = pd.read_parquet(proc / "items.parquet")
    mids = items.movie_id.tolist()
    vocab = json.loads((proc / "vocab.json").read_text())
    example = pd.DataFrame([{"gender": vocab["gender"][-1], "age": vocab["age"][min(2, len(vocab["age"]) - 1)],
                             "occupation": vocab["occupation"][0], "zip": vocab["zip"][0],
                             "support_items": mids[:3], "support_ratings": [5.0, 3.0, 4.0], "candidate_items": mids[3:8]}])
    artifacts = {"weights": weights, "items": str(proc / "items.parquet"), "vocab": str(proc / "vocab.json"), "meta": str(meta_path)}
    return tracking.log_pyfunc(run_id, MeluPyfunc(), artifacts, example)


MODEL = ModelSpec.of(
    __name__,
    name="melu",
    description="MeLU (KDD 2019): MAML user preference estimator on MovieLens-1M; train -> evaluate -> register.",
    config=MeluConfig,
    stages=(Stage("train", train),),
    data_targets=("download@melu_movielens", "preprocess_melu"),
    example="train.epochs=3",
)
