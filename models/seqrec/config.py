"""Typed configuration of the sequential recommenders (``params.yaml`` section ``seqrec``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from data.config import Device, PositiveInts, StrictConfig

DATASETS = ("Beauty", "Sports_and_Outdoors", "Toys_and_Games", "Yelp")


class SeqRecDataConfig(StrictConfig):
    processed_dir: str = "data/processed/seqrec"
    dataset: Literal["Beauty", "Sports_and_Outdoors", "Toys_and_Games", "Yelp"] = "Beauty"
    max_len: int = Field(50, ge=2)


class FancConfig(StrictConfig):
    """Switches of the FaNC cell (reconstruction: every uncertain choice of the spec is one switch)."""

    score: Literal["dot", "neg_distance"] = "dot"
    gravity_k: int = Field(1, ge=1)  # the pull comes from the last K items
    damping: float = Field(0.9, ge=0.0, lt=1.0)  # gamma
    step: float = Field(1.0, gt=0.0)  # Delta
    mass: Literal["learned", "constant"] = "learned"
    learn_g: bool = True  # G = softplus(g) learned, else G = 1
    eps: float = Field(1e-3, gt=0.0)
    accel_clip: float = Field(1.0, gt=0.0)  # spec: "e.g. 10"; 1.0 keeps the cell trainable with std-0.02 embeddings (see tests)
    gravity: bool = True  # False: ablation "no gravity" (u_t = u_0, a static unconscious state)
    gate: bool = True  # False: ablation "no gate" (h_t = c_t, conscious state only)


class SasrecConfig(StrictConfig):
    layers: int = Field(2, ge=1)
    heads: int = Field(1, ge=1)


class SeqRecModelConfig(StrictConfig):
    name: Literal["fanc", "gru4rec", "sasrec"] = "fanc"
    hidden: int = Field(64, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    fanc: FancConfig = FancConfig()
    sasrec: SasrecConfig = SasrecConfig()


class SeqRecTrainConfig(StrictConfig):
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(256, ge=1)
    epochs: int = Field(200, ge=1)
    patience: int = Field(10, ge=1)  # early stopping on validation NDCG@10
    weight_decay: float = Field(0.0, ge=0)
    init_seed: int = 0
    order_seed: int = 0
    device: Device = "auto"
    checkpoint_dir: str = "checkpoints/seqrec"
    resume: bool = True
    time_budget_s: float = Field(0.0, ge=0)  # exploration only (run tagged reproducible=false): train+validation s; 0 = none


class SeqRecEvalConfig(StrictConfig):
    ks: PositiveInts = [5, 10, 20]
    mask_history: bool = False  # S3-Rec convention: consumed items stay candidates
    protocol: Literal["full", "sampled"] = "full"
    n_negatives: int = Field(100, ge=1)
    batch_users: int = Field(512, ge=1)


class SeqRecOutputConfig(StrictConfig):
    metrics_dir: str = "metrics/seqrec"  # <variant>-<dataset>.json per run (DVC metrics)
    plots_dir: str = "plots/seqrec"  # <variant>-<dataset>/ learning curve, gate histogram, trajectory (DVC plots)


class SeqRecConfig(StrictConfig):
    data: SeqRecDataConfig = SeqRecDataConfig()
    model: SeqRecModelConfig = SeqRecModelConfig()
    train: SeqRecTrainConfig = SeqRecTrainConfig()
    eval: SeqRecEvalConfig = SeqRecEvalConfig()
    outputs: SeqRecOutputConfig = SeqRecOutputConfig()


# The variants of the results table: the three models and the two FaNC ablations (not registered).
VARIANTS: dict[str, dict] = {
    "gru4rec": {"model.name": "gru4rec"},
    "sasrec": {"model.name": "sasrec"},
    "fanc": {"model.name": "fanc"},
    "fanc_no_gravity": {"model.name": "fanc", "model.fanc.gravity": False},
    "fanc_no_gate": {"model.name": "fanc", "model.fanc.gate": False},
}
ABLATIONS = ("fanc_no_gravity", "fanc_no_gate")


def variant_of(cfg: SeqRecConfig) -> str:
    """The table variant a config is: the model name, or ``fanc_no_gravity`` / ``fanc_no_gate``."""
    if cfg.model.name != "fanc":
        return cfg.model.name
    f = cfg.model.fanc
    if not f.gravity and not f.gate:
        return "fanc_no_gravity_no_gate"
    return "fanc_no_gravity" if not f.gravity else "fanc_no_gate" if not f.gate else "fanc"
