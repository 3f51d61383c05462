"""EGTR's tiny preset: a few 64-px synthetic scenes and a 32-wide detector, one epoch per fit (tests, the contract
test)."""

from __future__ import annotations

from pathlib import Path

TINY_EGTR = {
    "dataset": "synthetic",
    "detector": {"backbone": "resnet18", "d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "heads": 4, "ffn_dim": 64,
                 "n_points": 2, "num_feature_levels": 3, "num_queries": 8, "dropout": 0.0},
    "pretrain": {"epochs": 1, "finetune_epochs": 1, "batch_size": 4, "time_budget_s": 0.0},
    "sgg": {"epochs": 1, "finetune_epochs": 0, "batch_size": 4, "lr": 2.0e-4, "lr_detector": 2.0e-6, "lr_backbone": 2.0e-7,
            "aux_loss": False},
    "augment": {"scales": [64], "max_size": 64, "crop_scales": [64], "crop_min": 48, "crop_max": 64, "eval_size": 64,
                "eval_max_size": 64, "flip_swap": [["left of", "right of"]]},
    "device": "cpu",
}


def tiny(root: Path) -> dict:
    """Write 8 / 4 / 4 synthetic scenes under ``root``; the ``egtr`` params section that trains on them."""
    from data.synthetic_scenes import generate
    from models.egtr.config import EgtrConfig

    root = Path(root)
    data = generate(root / "sgg", train=8, val=4, test=4, size=64, max_objects=3, min_size=12, max_size=24, seed=1)
    raw = {**TINY_EGTR, "pretrain": {**TINY_EGTR["pretrain"], "finetune_epochs": 0}, "data_dir": str(data),
           "out_dir": str(root / "out"), "outputs": {"metrics_dir": str(root / "metrics"), "plots_dir": str(root / "plots")}}
    return EgtrConfig.model_validate(raw).model_dump(mode="json")
