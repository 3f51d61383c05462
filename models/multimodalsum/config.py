"""Typed configuration of MultimodalSum (``params.yaml`` section ``multimodalsum``).

The code defaults are the paper's settings (spec ``multimodalsum.md`` §3.2, official nc-ai/MultimodalSum @ cff6211):
BART-large sizes (give ``model.pretrained: facebook/bart-large`` or a local copy of it on a GPU), ResNet-101, 224-px
photos, the four-step schedule with the official optimiser settings, 9-review leave-one-out batches of BPE-130
reviews stripped to 128, test inputs of 8 reviews <= 160 (Yelp) / <= 120 (Amazon) BPE. ``params.yaml`` holds the
CPU-scale configuration of this project (a small random BART on the synthetic set); the variants of
:data:`VARIANTS` override it. Sizes change, formulas never do.

Sections: ``data`` (which review-table folders and splits), ``modalities`` (``images`` / ``table`` on or off: both off
= the labelled text-only model, alpha = beta = 0), ``model`` (BART, encoders, loss switch), ``images`` (photo
preprocessing), one section per training step on :class:`~models.common.config.TrainBase` (``denoise`` = step 0,
``text`` = 1, ``image`` = 2a, ``table`` = 2b, ``multimodal`` = 3), ``eval`` (the beam-search grid searched on dev),
``outputs`` and ``registry``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from data.config import PositiveInts, StrictConfig
from models.common.config import OutputsConfig, RegistryConfig, TrainBase

Split = Literal["train", "val", "dev", "test"]
# the folders that a DVC stage of dvc.yaml builds (build_review_tables@<name>); others are built by hand
DVC_REVIEW_TABLES = ("yelp_gold", "amazon_gold", "synthetic")
GATE_METRIC = "dev_rouge_mean"


class DataConfig(StrictConfig):
    """Which review tables (``data/review_schema.py``) feed which use. Training is self-supervised: only the
    ``reviews.parquet`` texts of the ``train_splits`` entities are read for training (never ``references.parquet``,
    never a ``test_split`` entity); the BPE tokenizer is trained on the same reviews."""

    folders: list[str] = Field(["data/processed/reviews/yelp"], min_length=1)  # dataset folders (four parquet tables each)
    train_splits: list[Split] = Field(["train"], min_length=1)  # entities whose reviews are training units
    val_splits: list[Split] = ["val"]  # entities of the validation loss (early stopping); [] with val_fraction > 0
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # > 0: hold out this share of the training entities instead
    split_seed: int = 0  # the seeded draw of the val_fraction hold-out
    dev_split: Split = "dev"  # beam settings are chosen on it (ROUGE against its references)
    test_split: Split = "test"  # scored once, with the settings chosen on dev
    train_reviews: int = Field(9, ge=2)  # reviews sampled per entity per epoch: review i the target of the other 8
    val_seed: int = 7  # the official validation sample (groupby().sample(9, random_state=7))
    max_review_tokens: int = Field(130, ge=3)  # BPE with <s> </s>, then stripped [1:-1] to 128 (training)
    # test inputs (8 reviews), per entity source, with the same [1:-1] stripping (official src/test.py)
    test_review_tokens: dict[str, int] = {"yelp": 160, "amazon": 120, "synthetic": 160}
    pad_to_max: bool = True  # official: every review padded to max_review_tokens - 2; False: to the batch maximum
    chunk_tokens: int = Field(128, ge=2)  # step 0: review chunks of at most this many BPE tokens
    min_chunk_chars: int = Field(6, ge=1)  # step 0: reviews shorter than this are skipped (official len > 5)
    max_eval_entities: int = Field(0, ge=0)  # 0 = every dev/test entity (a smaller number: quick checks only)


class ModalitiesConfig(StrictConfig):
    """Which encoders exist. Both off = the text-only model (alpha = beta = 0; steps 2a, 2b and 3 do not run); the run
    is then tagged and labelled ``text_only``."""

    images: bool = True  # photos (step 2a + the image branch of step 3)
    table: bool = True  # the metadata table (step 2b + the table branch of step 3)

    @property
    def text_only(self) -> bool:
        return not (self.images or self.table)


class ModelConfig(StrictConfig):
    """BART (``pretrained`` or a random config of these sizes), the image and table encoders, the loss switch."""

    pretrained: str | None = None  # local path or hub id of a BART checkpoint + tokenizer (facebook/bart-large)
    # a random BartConfig when pretrained is null (defaults: BART-large); vocabulary = the trained BPE's
    d_model: int = Field(1024, ge=8)
    encoder_layers: int = Field(12, ge=1)
    decoder_layers: int = Field(12, ge=1)
    heads: int = Field(16, ge=1)
    ffn_dim: int = Field(4096, ge=1)
    max_positions: int = Field(1024, ge=16)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)  # official cfg/bart-large.json: dropout 0.1, attention/activation 0
    attention_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    activation_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    vocab_size: int = Field(50265, ge=16)  # the byte-level BPE trained on the training reviews (pretrained: its own)
    bpe_min_frequency: int = Field(2, ge=1)
    table_schema: Literal["yelp", "amazon"] = "yelp"  # the field layout of spec 2.3 (synthetic entities: yelp)
    hours_ks: PositiveInts = [3, 4]  # K-means K by silhouette (spec {3,4,5,7,10}; the encoder's one-hot has 4 bits)
    hours_coverage: float = Field(0.9, gt=0.0, le=1.0)  # official: cluster the strings covering 90% of occurrences
    image_backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] = "resnet101"
    image_weights: str | None = None  # local torchvision ImageNet state dict (random init otherwise)
    encode_padding_images: bool = True  # official: padding photos go through the CNN (train-mode BatchNorm sees them)
    pad_in_loss: Literal["faithful", "fixed"] = "faithful"  # spec 7.1: faithful = pads in the loss (official)
    param_rule: Literal["type", "official"] = "type"  # no-decay set: by module type, or the official name substrings

    not_in_fingerprint: ClassVar[frozenset[str]] = frozenset()

    def unused_fields(self) -> frozenset[str]:
        """With a pretrained BART its own sizes and vocabulary apply: the random-config sizes are not part of the key."""
        if self.pretrained:
            return frozenset({"d_model", "encoder_layers", "decoder_layers", "heads", "ffn_dim", "max_positions",
                              "vocab_size", "bpe_min_frequency"})
        return frozenset()

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if not self.pretrained and self.d_model % self.heads:
            raise ValueError(f"heads: d_model {self.d_model} is not divisible by {self.heads} heads")
        if any(k < 2 or k > 4 for k in self.hours_ks):
            raise ValueError(f"hours_ks: each K must be 2..4 (the table encoder's hours one-hot has 4 bits), got "
                             f"{self.hours_ks}")
        return self


class ImagesConfig(StrictConfig):
    """Photo preprocessing (spec 2.2): train augmentation; dev/test Resize + CenterCrop; ImageNet normalisation."""

    size: int = Field(224, ge=16)  # 224 -> 14 x 14 = 196 tokens per photo (stride 16)
    max_per_entity: dict[str, int] = {"yelp": 10, "amazon": 1, "synthetic": 10}  # per entity source; padded to it
    random_resized_crop: bool = True
    rotation: float = Field(5.0, ge=0.0)  # degrees
    hflip: bool = True
    color_jitter: list[float] = Field([0.3, 0.3, 0.3, 0.1], min_length=4, max_length=4)  # brightness contrast saturation hue


class StepConfig(TrainBase):
    """One training step: AdamW (weight decay except biases and LayerNorm / BatchNorm weights), linear warm-up over
    ``warmup`` of the ``epochs`` x batches steps, then linear decay to 0; early stopping on validation loss
    (``patience``) under the fixed maximum ``epochs``; the best-validation weights go to the next step."""

    epochs: int = Field(5, ge=1)  # the fixed maximum number of epochs
    patience: int = Field(3, ge=1)  # epochs without a better validation loss before stopping
    batch_size: int = Field(16, ge=1)  # examples per optimizer step (official: per-GPU batch x GPUs)
    grad_accum: int = Field(1, ge=1)  # micro-batches per step (batch_size must be divisible)
    lr: float = Field(5e-5, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    adam_eps: float = Field(1e-6, gt=0.0)  # transformers.AdamW default of the official scripts
    warmup: float = Field(0.1, ge=0.0, lt=1.0)  # share of the steps with a linear warm-up
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    clip: float = Field(0.0, ge=0.0)  # max gradient norm; 0 = no clipping
    checkpoint_dir: str = "checkpoints/multimodalsum"

    @model_validator(mode="after")
    def _accum_divides(self) -> "StepConfig":
        if self.batch_size % self.grad_accum:
            raise ValueError(f"grad_accum: batch_size {self.batch_size} is not divisible by {self.grad_accum}")
        return self


class DenoiseConfig(StepConfig):
    """Step 0 (official ``bart-review.py``, HF Trainer defaults: lr 5e-5, no warm-up, linear decay, clip 1.0,
    Adam eps 1e-8): BART denoising on review chunks, sentence permutation + text infilling."""

    enabled: bool = True  # false: start step 1 from the initial (pretrained or random) BART
    mask_ratio: float = Field(0.3, ge=0.0, lt=1.0)
    poisson_lambda: float = Field(3.0, gt=0.0)
    permute_ratio: float = Field(1.0, ge=0.0, le=1.0)


class PivotConfig(StepConfig):
    """Steps 2a / 2b: the encoder learns against the frozen decoder; every entity with photos (2a) / a table (2b)
    gives ``rows_per_entity`` rows per epoch, each with one sampled review as the target (delta = 0)."""

    rows_per_entity: int = Field(9, ge=1)


class EvalConfig(StrictConfig):
    """Beam search (official ``src/test.py``: no_repeat_ngram_size 3, early stopping, delta 0); every combination of
    the grid is decoded on dev, the best dev mean of ROUGE-1/2/L is chosen per dataset and used once on test."""

    num_beams: PositiveInts = [4]
    length_penalty: list[float] = Field([1.0, 2.0], min_length=1)
    max_length: PositiveInts = [128]
    min_length: list[int] = Field([0], min_length=1)
    no_repeat_ngram_size: int = Field(3, ge=0)
    early_stopping: bool = True
    decoder_start: Literal["official", "bos"] = "official"  # official = </s> <s> ..; bos = <s> .. as in training
    batch_size: int = Field(8, ge=1)  # entities per generate() call
    extractive: bool = True  # random / clustroid / LexRank / oracle review beside the model (same protocol)
    text_only_baselines: bool = True  # with modalities: the final model without photos/table, and the step-1 model
    random_seed: int = 0  # the random-review baseline


class MultimodalSumConfig(StrictConfig):
    run: str = Field("yelp", pattern=r"^[A-Za-z0-9_]+$")  # names the metrics file, plots folder, DVC stage and alias scope
    # CPU threads of torch (0 = torch's default); 1 on a shared, busy CPU, where OpenMP threads that wait for each other
    # made the steps ~10x slower. Not part of any checkpoint key
    torch_threads: int = Field(0, ge=0)
    data: DataConfig = DataConfig()
    modalities: ModalitiesConfig = ModalitiesConfig()
    model: ModelConfig = ModelConfig()
    images: ImagesConfig = ImagesConfig()
    denoise: DenoiseConfig = DenoiseConfig(epochs=3, batch_size=128, lr=5e-5, warmup=0.0, clip=1.0, adam_eps=1e-8)
    text: StepConfig = StepConfig(epochs=5, batch_size=16, lr=5e-5, warmup=0.1, label_smoothing=0.0, clip=0.0)
    image: PivotConfig = PivotConfig(epochs=20, batch_size=32, lr=1e-4, warmup=0.05, label_smoothing=0.1, clip=1.0)
    table: PivotConfig = PivotConfig(epochs=20, batch_size=32, lr=1e-4, warmup=0.05, label_smoothing=0.1, clip=1.0)
    multimodal: StepConfig = StepConfig(epochs=5, batch_size=8, lr=1e-5, warmup=0.05, label_smoothing=0.1, clip=1.0)
    eval: EvalConfig = EvalConfig()
    outputs: OutputsConfig = OutputsConfig(metrics_dir="metrics/multimodalsum", plots_dir="plots/multimodalsum")
    registry: RegistryConfig = RegistryConfig(model_name="multimodalsum", experiment="multimodalsum",
                                              gate_metric=GATE_METRIC, gate_mode="max")

    @model_validator(mode="after")
    def _checks(self) -> "MultimodalSumConfig":
        d = self.data
        if d.test_split in d.train_splits or d.test_split in d.val_splits:
            raise ValueError(f"data.train_splits: the test split {d.test_split!r} may never be trained or validated on")
        if not d.val_splits and d.val_fraction == 0.0:
            raise ValueError("data.val_splits: empty; give validation splits or a val_fraction > 0 (early stopping needs "
                             "a validation loss)")
        if d.val_fraction > 0.0 and d.val_splits:
            raise ValueError("data.val_fraction: give either data.val_splits or a val_fraction > 0, not both")
        if self.registry.gate_metric != GATE_METRIC:
            raise ValueError(f"registry.gate_metric: {self.registry.gate_metric!r} is not a metric of this run; "
                             f"expected {GATE_METRIC!r} (the dev mean of ROUGE-1/2/L)")
        if self.registry.gate_mode != "max":
            raise ValueError("registry.gate_mode: ROUGE is higher-is-better; expected 'max'")
        return self


def _paper(folder: str, run: str, schema: str) -> dict:
    """The paper's configuration (the code defaults) on a licence-gated dataset built by hand (GPU)."""
    d = MultimodalSumConfig()
    out = {"run": run, "torch_threads": 0, "data": {**d.data.model_dump(), "folders": [folder]},
           "model": {**d.model.model_dump(), "pretrained": "facebook/bart-large", "table_schema": schema},
           "images": d.images.model_dump(), "eval": d.eval.model_dump()}
    for step in ("denoise", "text", "image", "table", "multimodal"):
        out[step] = {k: v for k, v in getattr(d, step).model_dump().items() if k not in TrainBase.model_fields}
    return out


# Named variants (override presets of the params.yaml section; the DVC stage train_multimodalsum runs the first two).
VARIANTS: dict[str, dict] = {
    # all four steps on the SYNTHETIC multimodal set (params.yaml is this configuration): a CPU learning check
    "synthetic": {},
    # steps 0-1, TEXT-ONLY (alpha = beta = 0), self-supervised on the INPUT reviews of the DEV entities of the two gold
    # sets (never a reference, never a test entity; 10% of the dev entities held out for the validation loss), beam
    # settings chosen on dev, scored on both test sets: a CPU-scale fit check with a small random-init BART
    "text_only_gold": {
        "run": "text_only_gold",
        "data.folders": ["data/processed/reviews/yelp_gold", "data/processed/reviews/amazon_gold"],
        "data.train_splits": ["dev"], "data.val_splits": [], "data.val_fraction": 0.1, "data.train_reviews": 8,
        "data.max_review_tokens": 130, "data.chunk_tokens": 128,
        "modalities.images": False, "modalities.table": False,
        "model.d_model": 128, "model.encoder_layers": 2, "model.decoder_layers": 2, "model.heads": 4,
        "model.ffn_dim": 256, "model.max_positions": 256, "model.vocab_size": 4000,
        "denoise.epochs": 10, "denoise.batch_size": 32, "denoise.patience": 3,
        "text.epochs": 12, "text.batch_size": 8, "text.patience": 3,
        "eval.num_beams": [4], "eval.length_penalty": [1.0, 2.0], "eval.max_length": [100], "eval.min_length": [0, 40],
        "eval.batch_size": 16,
    },
    # the paper's configuration (GPU; bart-large from model.pretrained) on the licence-gated datasets, once
    # `python -m data.stages.build_review_tables --source yelp|amazon` has built them (not DVC stages)
    "yelp_paper": _paper("data/processed/reviews/yelp", "yelp", "yelp"),
    "amazon_paper": _paper("data/processed/reviews/amazon", "amazon", "amazon"),
}
