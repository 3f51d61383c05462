"""Typed configuration of EGTR (``params.yaml`` section ``egtr``).

Defaults follow naver-ai/egtr @ 7f87450 (``train_egtr.py``, ``pretrain_detr.py``) and the spec
``../shared/specs/egtr.md``; the paper's sizes are the defaults of :class:`DetectorConfig`. The CPU runs of
this project override the sizes (see ``params.yaml``), never the formulas.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from data.config import Device, PositiveInts, StrictConfig
from models.common.config import OutputsConfig, RegistryConfig, check_gate_metric


class DetectorConfig(StrictConfig):
    """Deformable DETR (Hugging Face ``SenseTime/deformable-detr`` config): no box refinement, no two-stage."""

    backbone: str = "resnet50"  # a timm model name
    backbone_weights: str | None = None  # local path to a timm/torchvision state dict; None = random init
    d_model: int = Field(256, ge=1)
    encoder_layers: int = Field(6, ge=1)
    decoder_layers: int = Field(6, ge=1)
    heads: int = Field(8, ge=1)
    ffn_dim: int = Field(1024, ge=1)
    n_points: int = Field(4, ge=1)
    num_feature_levels: int = Field(4, ge=1, le=4)  # the backbone stages used (a timm ResNet has 4)
    num_queries: int = Field(200, ge=2)  # a relation needs two objects
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class RelationConfig(StrictConfig):
    # log_counts = the official formula log(fg + eps / (fg.sum(2) + eps)), i.e. the log of raw counts
    # (operator precedence; spec section 2.3); log_softmax = the --use_log_softmax fix; off = no bias.
    freq_bias: Literal["log_counts", "log_softmax", "log_probs", "off"] = "log_counts"
    # official = N(0, 0.02) weights and zero biases (transformers' _init_weights via the official post_init(), for keys
    # missing from the detector checkpoint); pytorch = nn.Linear's default (a CPU-scale option: at small d the
    # official init leaves the head's logits far below the frequency bias for many epochs)
    init: Literal["official", "pytorch"] = "official"
    logit_adjustment: bool = False  # post-hoc G -= tau * log p(predicate), official --logit_adjustment
    logit_adjustment_tau: float = Field(0.3, ge=0.0)


class LossConfig(StrictConfig):
    cls: float = Field(2.0, ge=0.0)  # also the matcher's class weight
    bbox: float = Field(5.0, ge=0.0)
    giou: float = Field(2.0, ge=0.0)
    rel: float = Field(15.0, ge=0.0)
    conn: float = Field(30.0, ge=0.0)  # 90 for Open Images (--connectivity_loss_coefficient)
    focal_alpha: float = Field(0.25, ge=0.0, le=1.0)
    focal_gamma: float = Field(2.0, ge=0.0)
    smoothing: float = Field(1e-14, gt=0.0, lt=1.0)  # --smoothing; adaptive relation smoothing, spec 3.2
    rel_sample_negatives: int = Field(80, ge=0)
    rel_sample_nonmatching: int = Field(80, ge=0)
    nonmatching_sampling: Literal["topk", "random"] = "topk"  # VG: top-k; OI: random (argparse comment)


class StageConfig(StrictConfig):
    """One training stage: ``epochs`` at ``lr`` then ``finetune_epochs`` at 0.1 x every lr."""

    epochs: int = Field(50, ge=1)
    finetune_epochs: int = Field(25, ge=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0.0)  # pretrain: detector; sgg: new modules (relation head)
    lr_detector: float = Field(2e-6, ge=0.0)  # sgg only: the rest of the detector
    lr_backbone: float = Field(1e-5, ge=0.0)  # backbone, reference points, sampling offsets
    weight_decay: float = Field(1e-4, ge=0.0)
    grad_clip: float = Field(0.1, ge=0.0)
    patience: int = Field(15, ge=1)  # early stopping on validation loss
    aux_loss: bool = True
    time_budget_s: float = Field(0.0, ge=0.0)  # exploration only (run tagged reproducible=false); 0 = none
    num_workers: int = Field(0, ge=0)

    # neither changes what an epoch computes (the budget only decides when to stop; the run is then tagged
    # reproducible=false). seqrec keeps its time_budget_s in its fingerprint: both are kept as they were so that
    # the existing checkpoints stay valid
    not_in_fingerprint: ClassVar[frozenset[str]] = frozenset({"time_budget_s", "num_workers"})


class AugmentConfig(StrictConfig):
    """The DETR COCO recipe: flip, then multi-scale resize (or resize -> random crop -> multi-scale resize)."""

    hflip: bool = True
    # predicates swapped by a horizontal flip (e.g. "left of" <-> "right of"); names from rel.json
    flip_swap: list[list[str]] = []
    random_crop: bool = True  # stage 0 only, p = 0.5 (the SGG stage never crops)
    # training only: keep one predicate, drawn at random each time, per (subject, object) pair (official OI loader)
    filter_multiple_rels: bool = False
    scales: PositiveInts = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]
    max_size: int = Field(1333, ge=1)
    crop_scales: PositiveInts = [400, 500, 600]
    crop_min: int = Field(384, ge=1)
    crop_max: int = Field(600, ge=1)
    eval_size: int = Field(800, ge=1)
    eval_max_size: int = Field(1333, ge=1)


class EvalConfig(StrictConfig):
    ks: PositiveInts = [20, 50, 100]
    obj_score: Literal["softmax", "sigmoid"] = "softmax"  # official: softmax at test time
    protocol: Literal["vg", "oi"] = "vg"
    max_images: int = Field(0, ge=0)  # 0 = the whole split


class EgtrConfig(StrictConfig):
    seed: int = 42
    dataset: str = Field("synthetic", pattern=r"^[A-Za-z0-9_]+$")  # also the registry alias scope
    data_dir: str = "data/processed/sgg/synthetic"
    out_dir: str = "outputs/egtr/synthetic"
    device: Device = "auto"
    detector: DetectorConfig = DetectorConfig()
    relation: RelationConfig = RelationConfig()
    loss: LossConfig = LossConfig()
    pretrain: StageConfig = StageConfig(epochs=150, finetune_epochs=50, lr=1e-4, lr_backbone=1e-5, aux_loss=True)
    sgg: StageConfig = StageConfig(epochs=50, finetune_epochs=25, lr=2e-4, lr_detector=2e-6, lr_backbone=2e-7,
                                   aux_loss=False, grad_accum=2)
    augment: AugmentConfig = AugmentConfig()
    eval: EvalConfig = EvalConfig()
    pretrained: str = ""  # a stage-0 detector checkpoint to start stage 1 from ("" = run / reuse stage 0)
    # <metrics_dir>/<dataset>.json and <dataset>-pretrain.json; <plots_dir>/<dataset>/ curves, per-predicate recall
    outputs: OutputsConfig = OutputsConfig(metrics_dir="metrics/egtr", plots_dir="plots/egtr")
    # aliases champion_<dataset>; the gate is validation R@50 (val_R_at_K, K in eval.ks)
    registry: RegistryConfig = RegistryConfig(model_name="egtr", experiment="egtr", gate_metric="val_R_at_50",
                                              gate_mode="max")

    @model_validator(mode="after")
    def _gate_metric_exists(self) -> "EgtrConfig":
        check_gate_metric(self.registry, r"val_R_at_(?P<k>\d+)", self.eval.ks, "val_R_at_K")
        return self


# Named variants (override presets of the egtr section; the DVC matrix stage train_egtr runs synthetic and vrd_sample).
VARIANTS = {
    "synthetic": {},
    # 61 real VRD photos, train = val = test: a fit check, not a benchmark (100 classes, 70 predicates). Train and
    # evaluation see the same picture (one size, no flip, no crop), so the question is only whether the model can
    # memorise them; small images and batch 2 buy many updates in ~40 minutes of the 2-core CPU. No early stopping
    # (patience above the epochs): a fixed number of epochs, so the result does not depend on the machine.
    "vrd_sample": {"dataset": "vrd_sample", "data_dir": "data/processed/sgg/vrd_sample", "out_dir": "outputs/egtr/vrd_sample",
                   "detector.num_queries": 40, "augment.hflip": False, "augment.flip_swap": [],
                   "augment.random_crop": False, "augment.scales": [192], "augment.max_size": 320,
                   "augment.eval_size": 192, "augment.eval_max_size": 320,
                   "pretrain.batch_size": 2, "pretrain.epochs": 110, "pretrain.finetune_epochs": 20,
                   "pretrain.patience": 1000,
                   "sgg.batch_size": 2, "sgg.epochs": 40, "sgg.finetune_epochs": 10,
                   "sgg.patience": 1000},
    # Open Images V6 (PySGG files via preprocess_sgg --source openimages; not in the mirror): the official OI
    # settings, connectivity weight 90, random non-matching sampling, one predicate per pair per sample, OI metrics
    "openimages": {"dataset": "openimages", "data_dir": "data/processed/sgg/openimages", "out_dir": "outputs/egtr/openimages",
                   "loss.conn": 90.0, "loss.nonmatching_sampling": "random", "augment.filter_multiple_rels": True,
                   "augment.flip_swap": [], "eval.protocol": "oi"},
}
