"""Typed configuration of the bilingual LM (``params.yaml`` section ``bilingual_lm``).

Sections: ``data`` (the corpus stage's output and the raw mirror copies), ``tokenizer`` (the tokenizer stage: which
variant, vocabulary, how much text it is trained on), ``model`` (the preset and the Pre-LN / Peri-LN switch),
``pretrain`` and ``sft`` (the training loop's settings, :class:`models.bilingual_lm.trainer.TrainSettings`, on
:class:`~models.common.config.TrainBase`), ``eval`` (held-out bits per byte, generations), ``outputs``,
``registry``. The code defaults are the spec's (§3.2-3.3: AdamW 0.9 / 0.95, weight decay 0.1, clip 1.0, warm-up 1-2%,
FIM rate 0.5 with PSM:SPM 50:50 on code, unlikelihood lambda 1.0); ``params.yaml`` holds the CPU-scale run.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from data.config import StrictConfig
from models.common.config import OutputsConfig, RegistryConfig, TrainBase

GATE_METRIC = "heldout_bpb_mean"


class DataConfig(StrictConfig):
    corpus_dir: str = "data/processed/lm_corpus"  # build_lm_corpus output: train/ + heldout/ shards, mixture.json
    raw_dir: str = "data/raw"  # the download stages' copies (WikiText-2 test, SFT sources)
    packed_dir: str = "data/processed/lm_packed"  # the pack stage's output, one folder per tokenizer variant


class TokenizerConfig(StrictConfig):
    variant: Literal["morpheme", "plain"] = "morpheme"  # morpheme = kiwipiepy cuts (spec §3.1); plain = baseline
    vocab_size: int = Field(16384, ge=267)  # the 10m preset's vocabulary (a multiple of 128)
    min_frequency: int = Field(2, ge=1)
    train_chars_per_lang: int = Field(4_000_000, ge=1000)  # training text per language, drawn from the corpus
    seed: int = 0  # which documents are drawn
    dir: str = "outputs/bilingual_lm/tokenizer"  # <dir>/<variant>/ (the tokenizer stage's output)


class ModelConfig(StrictConfig):
    preset: Literal["tiny", "10m", "125m"] = "10m"
    norm: Literal["pre_ln", "peri_ln"] = "pre_ln"  # pre_ln = the report (default, spec §7); peri_ln = SEED
    rope_theta: float = Field(10000.0, gt=0)


class LoopConfig(TrainBase):
    """The loop's settings (:class:`~models.bilingual_lm.trainer.TrainSettings`) + checkpoints and processes."""

    seq_len: int = Field(256, ge=8)
    global_batch: int = Field(32, ge=1)  # rows per optimiser step over all processes
    micro_batch: int = Field(8, ge=1)  # rows per forward on one process (accumulation = the rest)
    max_steps: int = Field(1000, ge=1)  # the fixed maximum (a token budget: max_steps * global_batch * seq_len)
    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    clip: float = Field(1.0, gt=0)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    checkpoint_every: int = Field(50, ge=1)
    eval_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    nproc: int = Field(1, ge=1)  # processes (torchrun) on this machine; the work pool's nproc_per_node
    torch_threads: int = Field(0, ge=0)  # per process (0 = torch default)
    peak_flops: float = Field(0.0, ge=0)  # for MFU on CUDA

    not_in_fingerprint: ClassVar[frozenset[str]] = TrainBase.not_in_fingerprint | frozenset(
        {"checkpoint_every", "eval_every", "log_every", "nproc", "torch_threads", "peak_flops"})

    @model_validator(mode="after")
    def _check(self) -> "LoopConfig":
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps: {self.warmup_steps} exceeds max_steps {self.max_steps}")
        if self.global_batch % (self.nproc * self.micro_batch):
            raise ValueError(f"global_batch: {self.global_batch} must split into nproc {self.nproc} x whole "
                             f"micro-batches of {self.micro_batch}")
        return self


class PretrainConfig(LoopConfig):
    fim_rate: float = Field(0.5, ge=0, le=1)  # share of (code) documents in FIM format (spec default)
    spm_rate: float = Field(0.5, ge=0, le=1)  # share of FIM documents in SPM (the rest PSM)
    fim_text: bool = False  # FIM on Korean / English documents too
    max_repeat: float = Field(1.0, ge=1.0)  # how often a language's documents may repeat to reach its token share


class SFTConfig(LoopConfig):
    enabled: bool = True  # false = the base model (pretraining only) is evaluated and registered (kind=base)
    unlikelihood: float = Field(1.0, ge=0)  # lambda of the token-level unlikelihood term (spec §3.3)
    max_per_source: int = Field(0, ge=0)  # 0 = every training example of each source
    include_refusals: bool = True  # the labelled PII-refusal part of the mix
    decontaminate: bool = True  # drop SFT items overlapping an evaluation set (data.lm_sources.EVAL_SETS)
    system_rate: float = Field(0.0, ge=0, le=1)  # share of examples given a system message


class EvalConfig(StrictConfig):
    heldout_max_tokens: int = Field(200_000, ge=1)  # per language (Korean held-out documents, WikiText-2 test)
    batch: int = Field(8, ge=1)
    prompts: list[str] = ["대한민국의 수도는", "The capital of France is", "def fibonacci(n):"]
    chats: list[str] = ["한국어로 자기소개를 해 주세요.", "What is 12 times 7?"]
    max_new_tokens: int = Field(48, ge=1)


class BilingualLMConfig(StrictConfig):
    run: str = "cpu10m"  # names metrics/bilingual_lm/<run>-base-<tokenizer>.json and <run>-sft.json (+ plots folders)
    outputs_root: str = "outputs/bilingual_lm"  # <root>/<run>/pretrain-<tokenizer>: the finished pretraining
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig
    sft: SFTConfig
    eval: EvalConfig = EvalConfig()
    outputs: OutputsConfig
    registry: RegistryConfig

    @model_validator(mode="after")
    def _gate(self) -> "BilingualLMConfig":
        if self.registry.gate_metric != GATE_METRIC or self.registry.gate_mode != "min":
            raise ValueError(f"registry.gate_metric: the bilingual LM is gated on {GATE_METRIC} (min), got "
                             f"{self.registry.gate_metric} ({self.registry.gate_mode})")
        return self

    def tokenizer_dir(self, variant: str | None = None) -> str:
        return f"{self.tokenizer.dir}/{variant or self.tokenizer.variant}"

    def pretrain_dir(self) -> str:
        """The finished pretraining with this tokenizer (the output of DVC stage pretrain_bilingual_lm@<variant>)."""
        return f"{self.outputs_root}/{self.run}/pretrain-{self.tokenizer.variant}"

    def packed_dir(self, variant: str | None = None) -> str:
        return f"{self.data.packed_dir}/{variant or self.tokenizer.variant}"
