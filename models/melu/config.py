"""Typed configuration of MeLU (``params.yaml`` section ``melu``); see params.yaml for every key's meaning."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from data.config import PositiveInts, StrictConfig
from models.common.config import OutputsConfig, RegistryConfig, TrainBase

# the states of the official MeLU data (models.melu.data.STATES; repeated here so the config needs no torch)
STATES = ("warm_state", "user_cold_state", "item_cold_state", "user_and_item_cold_state")
COLD_STATES = ("user_cold_state", "item_cold_state", "user_and_item_cold_state")


class MeluDataConfig(StrictConfig):
    raw_dir: str = "data/raw/melu_movielens"
    processed_dir: str = "data/processed/melu"
    min_ratings: int = Field(13, ge=1)
    max_ratings: int = Field(100, ge=1)
    query_size: int = Field(10, ge=1)
    episode_seed: int = 0

    not_in_fingerprint: ClassVar[frozenset[str]] = frozenset({"raw_dir", "processed_dir"})


class MeluModelConfig(StrictConfig):
    embedding_dim: int = Field(32, ge=1)
    hidden: PositiveInts = [64, 64]


class MeluTrainConfig(TrainBase):
    local_lr: float = Field(5e-6, gt=0)
    global_lr: float = Field(5e-5, gt=0)
    local_steps: int = Field(5, ge=1)
    meta_order: Literal["first", "second"] = "second"
    meta_batch_size: int = Field(32, ge=1)
    # adapt a meta-batch's users in this many groups of similar support length, each padded to its own longest
    # support set (same losses and meta-gradient up to float rounding, less padded work; 1 = one padded batch)
    length_buckets: int = Field(1, ge=1)
    epochs: int = Field(30, ge=1)
    global_optimizer: Literal["adam", "sgd_sum"] = "adam"
    drop_last: bool = True
    checkpoint_dir: str = "checkpoints/melu"


class MeluEvalConfig(StrictConfig):
    states: list[Literal[STATES]] = Field(list(STATES), min_length=1)
    ndcg_k: PositiveInts = [1, 3]
    batch_users: int = Field(256, ge=1)


class MeluEvidenceConfig(StrictConfig):
    enabled: bool = True
    top_k: int = Field(20, ge=1)
    grad_params: Literal["decision", "all"] = "decision"
    norm: Literal["sum_per_tensor", "global"] = "sum_per_tensor"
    batch_pairs: int = Field(4096, ge=1)


class BaselineConfig(StrictConfig):
    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(256, ge=1)
    l2: float = Field(0.0, ge=0)
    use_test_support: bool = False


class MeluBaselinesConfig(StrictConfig):
    wide_deep: BaselineConfig = BaselineConfig()
    ppr: BaselineConfig = BaselineConfig(lr=5e-3, l2=1e-4)


class MeluConfig(StrictConfig):
    data: MeluDataConfig = MeluDataConfig()
    model: MeluModelConfig = MeluModelConfig()
    train: MeluTrainConfig = MeluTrainConfig()
    eval: MeluEvalConfig = MeluEvalConfig()
    evidence: MeluEvidenceConfig = MeluEvidenceConfig()
    baselines: MeluBaselinesConfig = MeluBaselinesConfig()
    outputs: OutputsConfig = OutputsConfig(metrics_dir="metrics", plots_dir="plots")  # metrics/melu.json, plots/melu/
    registry: RegistryConfig = RegistryConfig(model_name="melu", experiment="melu", gate_metric="cold_mae_mean", gate_mode="min")

    def metric_names(self) -> list[str]:
        """The final metrics this configuration produces (models.melu.recipe.evaluate_states)."""
        names = []
        for state in self.eval.states:
            short = state.removesuffix("_state")
            names += [f"{short}_mae", *[f"{short}_ndcg_at_{k}" for k in self.eval.ndcg_k]]
        if any(s in COLD_STATES for s in self.eval.states):
            names.append("cold_mae_mean")
        return names

    @model_validator(mode="after")
    def _gate_metric_exists(self) -> "MeluConfig":
        if self.registry.gate_metric not in self.metric_names():
            raise ValueError(f"registry.gate_metric: {self.registry.gate_metric!r} is not a metric of this run; "
                             f"expected one of {self.metric_names()}")
        return self

    @classmethod
    def tiny(cls, **overrides) -> "MeluConfig":
        """A small config for tests: 8-d embeddings, 16-wide MLP, 2 epochs, larger learning rates."""
        from data.config import deep_update, validate

        base = {
            "model": {"embedding_dim": 8, "hidden": [16, 16]},
            "train": {"epochs": 2, "local_steps": 2, "meta_batch_size": 8, "global_lr": 1e-2, "local_lr": 1e-2},
            "evidence": {"top_k": 5},
            "baselines": {"wide_deep": {"epochs": 1}, "ppr": {"epochs": 1}},
        }
        return validate(cls, deep_update(base, overrides))
