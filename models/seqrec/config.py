"""Typed configuration of the sequential recommenders (``params.yaml`` section ``seqrec``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from data.config import PositiveInts, StrictConfig
from models.common.config import OutputsConfig, RegistryConfig, TrainBase, check_gate_metric

DATASETS = ("Beauty", "Sports_and_Outdoors", "Toys_and_Games", "Yelp")


class SeqRecDataConfig(StrictConfig):
    processed_dir: str = "data/processed/seqrec"
    dataset: Literal["Beauty", "Sports_and_Outdoors", "Toys_and_Games", "Yelp"] = "Beauty"
    max_len: int = Field(50, ge=2)

    not_in_fingerprint: ClassVar[frozenset[str]] = frozenset({"processed_dir"})


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
    # the position table's initialisation: "xavier" = the official code's (tf.get_variable's default
    # glorot_uniform, the same scale as the items); "normal" = RecBole's N(0, 0.02); "torch" = nn.Embedding's
    # N(0, 1), which the runs before 2026-12-02 used (positions then dwarf the sqrt(d)-scaled items at the start)
    pos_init: Literal["xavier", "normal", "torch"] = "xavier"


class SeqRecModelConfig(StrictConfig):
    name: Literal["fanc", "gru4rec", "sasrec"] = "fanc"
    hidden: int = Field(64, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    fanc: FancConfig = FancConfig()
    sasrec: SasrecConfig = SasrecConfig()

    def unused_fields(self) -> frozenset[str]:
        """The sub-sections of the models this config does not select: not part of its fingerprint, so a new SASRec
        option does not invalidate FaNC's checkpoints."""
        return frozenset({"fanc", "sasrec"} - {self.name})


class SeqRecTrainConfig(TrainBase):
    lr: float = Field(1e-3, gt=0)
    adam_beta2: float = Field(0.999, gt=0, lt=1)  # Adam's second-moment decay (SASRec's official code: 0.98)
    batch_size: int = Field(256, ge=1)
    epochs: int = Field(200, ge=1)
    patience: int = Field(10, ge=1)  # early stopping on validation NDCG@10
    weight_decay: float = Field(0.0, ge=0)
    checkpoint_dir: str = "checkpoints/seqrec"
    # exploration only; part of the fingerprint (EGTR's stage budgets are not: see models/egtr/config.py)
    time_budget_s: float = Field(0.0, ge=0)  # exploration only (run tagged reproducible=false): train+validation s; 0 = none


class SeqRecEvalConfig(StrictConfig):
    ks: PositiveInts = [5, 10, 20]
    mask_history: bool = False  # S3-Rec convention: consumed items stay candidates
    protocol: Literal["full", "sampled"] = "full"
    n_negatives: int = Field(100, ge=1)
    batch_users: int = Field(512, ge=1)


class SeqRecConfig(StrictConfig):
    data: SeqRecDataConfig = SeqRecDataConfig()
    model: SeqRecModelConfig = SeqRecModelConfig()
    train: SeqRecTrainConfig = SeqRecTrainConfig()
    eval: SeqRecEvalConfig = SeqRecEvalConfig()
    # <metrics_dir>/<variant>-<dataset>.json; <plots_dir>/<variant>-<dataset>/ learning curve, gate histogram, trajectory
    outputs: OutputsConfig = OutputsConfig(metrics_dir="metrics/seqrec", plots_dir="plots/seqrec")
    # registered as the model's name (the variants set it; the ablations set null), gated per dataset
    registry: RegistryConfig = RegistryConfig(model_name="fanc", experiment="seqrec", gate_metric="valid_ndcg_at_10",
                                              gate_mode="max")

    def valid_ks(self) -> list[int]:
        """The cut-offs of the validation metrics: ``eval.ks`` plus 10 (early stopping is on NDCG@10)."""
        return sorted(set(self.eval.ks) | {10})

    @model_validator(mode="after")
    def _gate_metric_exists(self) -> "SeqRecConfig":
        check_gate_metric(self.registry, r"valid_(hr|ndcg)_at_(?P<k>\d+)", self.valid_ks(), "valid_hr_at_K or valid_ndcg_at_K")
        return self

    @model_validator(mode="after")
    def _registered_as_itself(self) -> "SeqRecConfig":
        name = self.registry.model_name
        if name is not None and name != self.model.name:
            raise ValueError(f"registry.model_name: {name!r} would register a {self.model.name} model under another "
                             f"model's name; set registry.model_name={self.model.name} (or null: not registered), or use "
                             f"--variant {self.model.name}")
        return self


# The variants of the results table: the three models and the two FaNC ablations (not registered). The shared loop
# and defaults are the spec's (batch 256 users, dropout 0.2); a baseline that has its own published recipe uses it:
# SASRec = Kang & McAuley 2018 for sparse data (128 users per batch, dropout 0.5, Adam beta2 0.98, glorot positions:
# model.sasrec.pos_init), which on Beauty gave test NDCG@10 0.0408 at convergence against 0.0381 with the shared
# defaults (docs/results.md, recipe check).
VARIANTS: dict[str, dict] = {
    "gru4rec": {"model.name": "gru4rec", "registry.model_name": "gru4rec"},
    "sasrec": {"model.name": "sasrec", "registry.model_name": "sasrec", "train.batch_size": 128, "model.dropout": 0.5,
               "train.adam_beta2": 0.98},
    "fanc": {"model.name": "fanc", "registry.model_name": "fanc"},
    "fanc_no_gravity": {"model.name": "fanc", "model.fanc.gravity": False, "registry.model_name": None},
    "fanc_no_gate": {"model.name": "fanc", "model.fanc.gate": False, "registry.model_name": None},
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
