"""MultimodalSum's tiny preset: a few synthetic restaurants (``data/synthetic_reviews.py``) and a 16-wide BART, one
epoch per step, one beam setting (tests and the contract test; every stage runs in seconds on one CPU core)."""

from __future__ import annotations

from pathlib import Path

TINY_MMS = {
    "run": "tiny",
    "data": {"train_splits": ["train"], "val_splits": [], "val_fraction": 0.34, "train_reviews": 9,
             "max_review_tokens": 40, "test_review_tokens": {"synthetic": 40}, "pad_to_max": False, "chunk_tokens": 38},
    "model": {"d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "heads": 2, "ffn_dim": 32, "max_positions": 64,
              "vocab_size": 300, "image_backbone": "resnet18", "encode_padding_images": False, "pad_in_loss": "fixed"},
    "images": {"size": 32, "max_per_entity": {"synthetic": 1}, "color_jitter": [0.3, 0.3, 0.3, 0.0]},
    "denoise": {"epochs": 1, "batch_size": 8, "lr": 1.0e-3, "device": "cpu"},
    "text": {"epochs": 1, "batch_size": 2, "lr": 1.0e-3, "device": "cpu"},
    "image": {"epochs": 1, "batch_size": 8, "lr": 1.0e-3, "rows_per_entity": 3, "device": "cpu"},
    "table": {"epochs": 1, "batch_size": 8, "lr": 1.0e-3, "rows_per_entity": 3, "device": "cpu"},
    "multimodal": {"epochs": 1, "batch_size": 2, "lr": 1.0e-3, "device": "cpu"},
    "eval": {"num_beams": [2], "length_penalty": [1.0], "max_length": [12], "min_length": [0], "batch_size": 4},
}


def tiny_data(root: Path) -> Path:
    """6 train / 2 dev / 2 test synthetic entities (one 32-px photo each) under ``root/reviews``."""
    from data.synthetic_reviews import generate

    return generate(Path(root) / "reviews", train=6, dev=2, test=2, train_reviews=9, input_reviews=8, references=1,
                    images_per_entity=1, image_size=32, mention_prob=0.3, seed=1)


def tiny(root: Path) -> dict:
    """Write the tiny synthetic set under ``root``; the ``multimodalsum`` params section that trains on it."""
    from models.multimodalsum.config import MultimodalSumConfig

    root = Path(root)
    folder = root / "reviews" if (root / "reviews" / "entities.parquet").is_file() else tiny_data(root)
    raw = {**TINY_MMS, "data": {**TINY_MMS["data"], "folders": [str(folder)]},
           "outputs": {"metrics_dir": str(root / "metrics"), "plots_dir": str(root / "plots")}}
    for step in ("denoise", "text", "image", "table", "multimodal"):
        raw[step] = {**raw[step], "checkpoint_dir": str(root / "ckpt")}
    return MultimodalSumConfig.model_validate(raw).model_dump(mode="json")
