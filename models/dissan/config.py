"""Typed configuration of DisSAN and its BiLSTM-max baseline (``params.yaml`` section ``dissan``).

Defaults follow the project spec (``dissan.md``): baaesh/SAN4NLI-pytorch hyperparameters (5 heads,
alpha 1.5, FFN 4d, Adam 1e-3, batch 64, dropout 0.1, 20 epochs, classifier 300 ReLU units), DisSAN's
projected fusion gate, multi-dimensional + max pooling. With the mirror's GloVe 6B-50d vectors the model
size is d = 50 (5 heads of 10), not the paper's 300 (spec §7.1).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from data.config import PositiveInts, StrictConfig
from models.common.config import OutputsConfig, RegistryConfig, TrainBase


class DissanDataConfig(StrictConfig):
    dataset: Literal["sick", "snli"] = "sick"
    raw_dir: str = "data/raw"  # holds sick/, snli/, snli_official/, glove_6b_50d/ (download stages)
    vectors: str = "data/raw/glove_6b_50d"  # a glove_6b_50d folder, or a GloVe .txt / .zip (e.g. glove.840B.300d.zip)
    lowercase: bool = True  # lower-case before lookup: true for the uncased 6B vectors, false for cased 840B
    max_len: int = Field(83, ge=1)  # tokens kept per sentence (an unofficial port's 83); longer ones are cut
    oov_init: Literal["uniform", "shared_unk"] = "uniform"  # frozen U(-0.05, 0.05) per word, or one <unk>
    min_count: int = Field(1, ge=1)  # training-split words seen fewer times map to <unk>

    not_in_fingerprint: ClassVar[frozenset[str]] = frozenset({"raw_dir"})


class DissanModelConfig(StrictConfig):
    encoder: Literal["dissan", "bilstm_max"] = "dissan"
    d_model: int | None = None  # None = the word-vector size (no projection); else a trainable projection
    heads: int = Field(5, ge=1)
    alpha: float = Field(1.5, ge=0.0)  # scale of the distance mask
    distance_mask: bool = True  # false = the ablation without M_dis
    gate: Literal["dissan", "disan"] = "dissan"  # projected (DisSAN) or un-projected (DiSAN) fusion gate
    ffn_mult: int = Field(4, ge=1)
    pooling: Literal["md_max", "md", "max"] = "md_max"
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    classifier_hidden: int = Field(300, ge=1)
    lstm_hidden: int = Field(300, ge=1)  # BiLSTM-max baseline, per direction


class DissanTrainConfig(TrainBase):
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    epochs: int = Field(20, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(0.0, ge=0)  # 0 = none
    checkpoint_dir: str = "checkpoints/dissan"


class DissanEvalConfig(StrictConfig):
    # upper bounds of the sentence-length buckets (length = the longer sentence of a pair); the last bucket
    # is open. SICK default ~ quintiles; for SNLI use [10, 14, 19, 24].
    length_buckets: PositiveInts = [8, 10, 13, 16]

    @field_validator("length_buckets")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"expected strictly increasing bucket bounds, got {v}")
        return v


class DissanConfig(StrictConfig):
    data: DissanDataConfig = DissanDataConfig()
    model: DissanModelConfig = DissanModelConfig()
    train: DissanTrainConfig = DissanTrainConfig()
    eval: DissanEvalConfig = DissanEvalConfig()
    # <metrics_dir>/<variant>-<dataset>.json; <plots_dir>/<variant>-<dataset>/ learning curve, confusion matrix, buckets
    outputs: OutputsConfig = OutputsConfig(metrics_dir="metrics/dissan", plots_dir="plots/dissan")
    # the variants set model_name (the ablation and the baseline: null, tracked only); aliases champion_<dataset>
    registry: RegistryConfig = RegistryConfig(model_name="dissan", experiment="dissan", gate_metric="dev_accuracy",
                                              gate_mode="max")

    @model_validator(mode="after")
    def _gate_on_dev(self) -> "DissanConfig":
        if self.registry.gate_metric != "dev_accuracy":
            raise ValueError(f"registry.gate_metric: {self.registry.gate_metric!r}: the gate compares dev_accuracy "
                             f"(the paper selects on dev; test accuracy never decides)")
        return self


# The variants of the results table: the model, its ablation without the distance mask, the baseline.
VARIANTS: dict[str, dict] = {
    "dissan": {"model.encoder": "dissan", "registry.model_name": "dissan"},
    "dissan_no_distance": {"model.encoder": "dissan", "model.distance_mask": False, "registry.model_name": None},
    "bilstm_max": {"model.encoder": "bilstm_max", "registry.model_name": None},
}


def variant_of(cfg: DissanConfig) -> str:
    if cfg.model.encoder == "bilstm_max":
        return "bilstm_max"
    return "dissan" if cfg.model.distance_mask else "dissan_no_distance"
