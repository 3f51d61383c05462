"""The bilingual LM's model presets (transformers' HyperCLOVAX, Pre-LN / Peri-LN) and its pretraining data: FIM in
PSM / SPM format, packing with EOS, the token mixture."""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from models.bilingual_lm.data import FimIds, apply_fim, fim_restore, fim_split, mixture_plan, pack
from models.bilingual_lm.modeling import build_model, check_vocabulary, count_parameters, model_config


# ------------------------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("preset, total, non_embedding", [
    ("tiny", 125_248, 92_480),  # spec: ~0.13M
    ("10m", 9_998_592, 5_804_288),  # ~10M (the CPU preset)
    ("125m", 124_668_672, 75_516_672),  # spec: ~124.7M, 75.5M non-embedding
])
def test_preset_sizes_match_the_spec(preset, total, non_embedding):
    cfg = model_config(preset)
    from transformers import HyperCLOVAXForCausalLM

    with torch.device("meta"):
        model = HyperCLOVAXForCausalLM(cfg)
    counts = count_parameters(model)
    assert (counts["total"], counts["non_embedding"]) == (total, non_embedding)
    assert cfg.tie_word_embeddings and cfg.num_key_value_heads < cfg.num_attention_heads  # GQA


def test_peri_ln_switch_adds_output_norms_and_changes_the_function():
    pre, peri = build_model("tiny", norm="pre_ln", seed=0), build_model("tiny", norm="peri_ln", seed=0)
    assert not pre.config.use_post_norm and peri.config.use_post_norm
    names_pre = {n for n, _ in pre.named_parameters()}
    extra = {n for n, _ in peri.named_parameters()} - names_pre
    assert extra == {f"model.layers.{i}.post_norm{j}.weight" for i in range(2) for j in (1, 2)}
    x = torch.randint(3, 512, (2, 12))
    with torch.no_grad():
        a, b = pre(input_ids=x).logits, peri(input_ids=x).logits
        # the same seed gives the same shared weights (the extra norms at 1), yet the functions differ: Peri-LN
        # normalises every sub-layer output before the residual add
        assert not torch.allclose(a, b, atol=1e-4)
    shared = {k: v for k, v in peri.state_dict().items() if k in pre.state_dict()}
    assert all(torch.equal(v, pre.state_dict()[k]) for k, v in shared.items())
    with pytest.raises(ValueError, match="norm: expected one of"):
        model_config("tiny", norm="post_ln")


def test_initialisation_and_tied_embeddings():
    m = build_model("10m", seed=1)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    std_q = m.model.layers[0].self_attn.q_proj.weight.std().item()
    std_o = m.model.layers[0].self_attn.o_proj.weight.std().item()
    assert abs(std_q - 0.02) < 1e-3 and abs(std_o - 0.02 / 4.0) < 3e-4  # 1/sqrt(2 * 8 layers) = 1/4
    x = torch.randint(3, m.config.vocab_size, (2, 32))
    with torch.no_grad():
        loss = m(input_ids=x, labels=x).loss.item()
    assert abs(loss - np.log(m.config.vocab_size)) < 0.1  # near-uniform at initialisation


def test_vocabulary_mismatch_is_named():
    class Tok:
        bos_token_id, eos_token_id, pad_token_id = 0, 1, 2

        def __len__(self):
            return 600

    with pytest.raises(ValueError, match="vocab_size 512 does not match the tokenizer's vocabulary of 600"):
        build_model("tiny", vocab_size=512, tokenizer=Tok())
    m = build_model("tiny", tokenizer=Tok())
    assert m.config.vocab_size == 600
    m2 = build_model("tiny")
    with pytest.raises(ValueError, match="the tokenizer has 600 tokens but the model's embedding has 512 rows"):
        check_vocabulary(m2, Tok())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model_config("tiny", vocab_size=2)


# ------------------------------------------------------------------------------------------------------ FIM
IDS = FimIds(prefix=3, suffix=4, middle=5)


def enc(text: str) -> list[int]:  # a character-level stand-in tokenizer (ids >= 10)
    return [10 + ord(c) for c in text]


def dec(ids) -> str:
    return "".join(chr(i - 10) for i in ids)


def test_fim_formats_exactly():
    rng = random.Random(0)
    text = "def add(a, b):\n    return a + b\n"
    seen = set()
    for _ in range(200):
        r = random.Random(rng.random())
        state = r.getstate()
        ids, fmt = apply_fim(text, enc, IDS, r, fim_rate=0.5, spm_rate=0.5)
        seen.add(fmt)
        r2 = random.Random()
        r2.setstate(state)
        r2.random()  # the FIM draw
        p, m, s = fim_split(text, r2)
        assert p + m + s == text
        if fmt == "plain":
            assert ids == enc(text)
        elif fmt == "psm":
            assert ids == [3, *enc(p), 4, *enc(s), 5, *enc(m)]
        else:
            assert ids == [3, 4, *enc(s), 5, *enc(p), *enc(m)]
        assert fim_restore(ids, IDS, dec) == text  # no character lost or added
    assert seen == {"plain", "psm", "spm"}


def test_fim_rates():
    rng = random.Random(1)
    fmts = [apply_fim("abcdefgh" * 10, enc, IDS, rng, fim_rate=0.5, spm_rate=0.5)[1] for _ in range(4000)]
    share_fim = sum(f != "plain" for f in fmts) / len(fmts)
    share_spm = sum(f == "spm" for f in fmts) / max(1, sum(f != "plain" for f in fmts))
    assert abs(share_fim - 0.5) < 0.03 and abs(share_spm - 0.5) < 0.04
    assert all(apply_fim("xyz", enc, IDS, rng, fim_rate=0.0)[1] == "plain" for _ in range(50))
    assert all(apply_fim("xyz", enc, IDS, rng, fim_rate=1.0, spm_rate=0.0)[1] == "psm" for _ in range(50))
    with pytest.raises(ValueError, match="fim_rate"):
        apply_fim("x", enc, IDS, rng, fim_rate=1.5)


# ------------------------------------------------------------------------------------------------------ packing
def test_packing_with_eos():
    docs = [[10, 11, 12], [20], [30, 31, 32, 33, 34, 35]]
    rows, info = pack(docs, eos_id=1, seq_len=4)
    stream = [10, 11, 12, 1, 20, 1, 30, 31, 32, 33, 34, 35, 1]  # 13 tokens -> 2 rows of 5, 3 dropped
    assert rows.tolist() == [stream[0:5], stream[5:10]]
    assert info == {"tokens": 13, "rows": 2, "dropped_tail_tokens": 3}
    assert rows.dtype == np.int32
    with pytest.raises(ValueError, match="seq_len"):
        pack(docs, 1, 0)


# ------------------------------------------------------------------------------------------------------ mixture
def test_mixture_plan_follows_token_shares():
    counts = {"ko": [10] * 100, "en": [50] * 10, "code": [100] * 30}  # 1000 / 500 / 3000 tokens
    plan, rep = mixture_plan(counts, {"ko": 1 / 3, "en": 1 / 3, "code": 1 / 3}, seed=0)
    assert rep["tokens"] == {"ko": 500, "en": 500, "code": 500}  # English binds: all of it, no repeats
    assert sorted(plan["en"]) == list(range(10)) and rep["repeated_documents"]["en"] == 0
    assert len(set(plan["ko"])) == 50 and rep["total_tokens"] == 1500
    plan2, _ = mixture_plan(counts, {"ko": 1 / 3, "en": 1 / 3, "code": 1 / 3}, seed=0)
    assert plan2 == plan  # seeded
    up, rep_up = mixture_plan(counts, {"ko": 0.5, "en": 0.25, "code": 0.25}, max_repeat=2.0)
    assert rep_up["tokens"] == {"ko": 2000, "en": 1000, "code": 1000} and rep_up["repeated_documents"]["ko"] == 100
    with pytest.raises(ValueError, match="summing to 1"):
        mixture_plan(counts, {"ko": 0.5, "en": 0.5, "code": 0.5})
    with pytest.raises(ValueError, match="no tokens"):
        mixture_plan({"ko": [], "en": [1], "code": [1]}, {"ko": 0.5, "en": 0.25, "code": 0.25})
