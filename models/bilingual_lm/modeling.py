"""The bilingual LM: transformers' own ``HyperCLOVAXForCausalLM`` in the spec's size presets (spec §2).

No decoder is written here: the block (RMSNorm, GQA attention with RoPE, SwiGLU, the muP multipliers and Peri-LN's
extra output norms via ``use_post_norm``) is transformers 5's ``transformers.models.hyperclovax``. This module only
chooses the configuration and the initialisation:

* ``norm``: ``pre_ln`` (the HyperCLOVA X report: pre-normalisation; ``use_post_norm=False``, the project default,
  spec §7) or ``peri_ln`` (the released SEED models: an RMSNorm on every sub-layer output as well,
  ``use_post_norm=True``).
* Presets (spec §2.3): ``tiny`` (tests, ~0.13M with a 512 vocabulary), ``10m`` (the CPU preset [reconstruction]:
  d 256, 8 layers, 8 / 4 heads, FFN 688, context 512; ~10M parameters with a 16,384 vocabulary, tied), ``125m``
  (d 768, 12 layers, 12 / 4 heads, d_h 64, FFN 2048, context 2048, 64,000 tied: ~124.7M, 75.5M non-embedding).
* Embeddings tied in every preset; multipliers neutral (embedding 1, residual 1, attention d_h^-1/2, logits 1:
  ``logits_scaling`` MULTIPLIES the logits in transformers' implementation, unlike Granite's divisor) unless set.
* Initialisation (spec §2.3): normal std 0.02 everywhere, the residual output projections (``o_proj``,
  ``down_proj``) scaled by 1/sqrt(2L) (GPT-2), norms at 1.

Special token ids come from the tokenizer (``models/bilingual_lm/tokenizer.py``: ``<|bos|>`` 0, ``<|eos|>`` 1,
``<|pad|>`` 2); :func:`build_model` checks the vocabulary size against the tokenizer when one is given.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 intermediate_size=176, max_position_embeddings=128, vocab_size=512),
    "10m": dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, head_dim=32,
                intermediate_size=688, max_position_embeddings=512, vocab_size=16384),
    "125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4, head_dim=64,
                 intermediate_size=2048, max_position_embeddings=2048, vocab_size=64000),
}
NORMS = ("pre_ln", "peri_ln")
DEFAULT_SPECIAL_IDS = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}


def model_config(preset: str = "tiny", *, norm: str = "pre_ln", vocab_size: int | None = None,
                 rope_theta: float = 10000.0, special_ids: dict[str, int] | None = None, **overrides):
    """A ``HyperCLOVAXConfig`` for ``preset``; ``overrides`` are config fields (e.g. ``max_position_embeddings``,
    ``embedding_multiplier``); ``norm`` = ``pre_ln`` | ``peri_ln``."""
    from transformers import HyperCLOVAXConfig

    if preset not in PRESETS:
        raise ValueError(f"preset: unknown {preset!r}; known: {sorted(PRESETS)}")
    if norm not in NORMS:
        raise ValueError(f"norm: expected one of {list(NORMS)}, got {norm!r}")
    kw = {**PRESETS[preset], **overrides}
    if vocab_size is not None:
        kw["vocab_size"] = int(vocab_size)
    ids = {**DEFAULT_SPECIAL_IDS, **(special_ids or {})}
    bad = {k: v for k, v in ids.items() if not 0 <= v < kw["vocab_size"]}
    if bad:
        raise ValueError(f"special token ids {bad} are outside the vocabulary of {kw['vocab_size']}")
    return HyperCLOVAXConfig(**kw, **ids, tie_word_embeddings=True, use_post_norm=norm == "peri_ln",
                             rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)},
                             initializer_range=0.02, attn_implementation="sdpa")


def init_weights(model: nn.Module, std: float = 0.02) -> nn.Module:
    """Normal(0, std) for every linear / embedding weight, zero biases, norms at 1, and the residual output
    projections (``o_proj``, ``down_proj``) at std / sqrt(2 L)."""
    layers = model.config.num_hidden_layers
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                scale = 1.0 / math.sqrt(2 * layers) if name.endswith(("o_proj", "down_proj")) else 1.0
                module.weight.normal_(0.0, std * scale)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif hasattr(module, "weight") and module.__class__.__name__.endswith("RMSNorm"):
                module.weight.fill_(1.0)
    return model


def build_model(preset: str = "tiny", *, norm: str = "pre_ln", vocab_size: int | None = None, seed: int = 0,
                tokenizer=None, **overrides):
    """A randomly initialised ``HyperCLOVAXForCausalLM`` (seeded). With ``tokenizer`` (anything with ``len()`` and
    ``bos/eos/pad_token_id``), the vocabulary and special ids come from it, and a mismatch with an explicit
    ``vocab_size`` is an error naming both."""
    from transformers import HyperCLOVAXForCausalLM

    special = None
    if tokenizer is not None:
        n = len(tokenizer)
        if vocab_size is not None and vocab_size != n:
            raise ValueError(f"vocab_size {vocab_size} does not match the tokenizer's vocabulary of {n} tokens")
        vocab_size = n
        special = {k: getattr(tokenizer, k) for k in DEFAULT_SPECIAL_IDS if getattr(tokenizer, k, None) is not None}
    cfg = model_config(preset, norm=norm, vocab_size=vocab_size, special_ids=special, **overrides)
    torch.manual_seed(seed)
    model = HyperCLOVAXForCausalLM(cfg)
    init_weights(model, cfg.initializer_range)
    model.tie_weights()
    return model


def check_vocabulary(model, tokenizer, where: str = "tokenizer") -> None:
    """Stop when the tokenizer's ids do not fit the model (an id >= the embedding rows would index garbage)."""
    n, rows = len(tokenizer), model.get_input_embeddings().weight.shape[0]
    if n != rows:
        raise ValueError(f"{where}: the tokenizer has {n} tokens but the model's embedding has {rows} rows "
                         f"(vocab_size {model.config.vocab_size}); train the model with this tokenizer")


def count_parameters(model) -> dict[str, int]:
    """Total (tied embeddings counted once) and non-embedding parameters."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    emb = model.get_input_embeddings().weight.numel()
    return {"total": total, "non_embedding": total - emb, "embedding": emb}
