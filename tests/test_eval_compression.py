"""The harness's tokenizer-compression task: the spec's text sets, content tokens only, the tokenizer stage's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import mirror_dir

pytestmark = pytest.mark.mirror
REPO = Path(__file__).resolve().parents[1]


def test_compression_counts_content_tokens(tmp_path):
    from transformers import AutoTokenizer

    from eval_harness.evaluate import evaluate
    from eval_harness.tiny import build_tiny_lm

    root = mirror_dir("korean_text").parent
    mirror_dir("code_corpus"), mirror_dir("gsm8k"), mirror_dir("english_corpus")
    model_dir = build_tiny_lm(tmp_path / "m", ["대한민국 헌법 def f(x): return x", "The cat sat."] * 50, vocab_size=300)
    from eval_harness.data import compression_texts

    sets = compression_texts("t", root)
    assert list(sets) == ["korean_text", "english_wikitext2_test", "english_gsm8k_test_questions",
                          "code_cpython_stdlib"]
    assert len(sets["code_cpython_stdlib"]) == 523 and len(sets["english_wikitext2_test"]) == 2891
    # limit 3: the first three sets (the 10 MB of code is slow to encode with a 300-token vocabulary)
    out = evaluate(model_dir, ["tokenizer_compression"], data_root=root, limit=3, out_dir=tmp_path / "out")
    res = out["results"]["tokenizer_compression"]
    assert list(res)[1:] == ["korean_text", "english_wikitext2_test", "english_gsm8k_test_questions"]
    assert res["korean_text"]["texts"] == 11
    assert res["english_gsm8k_test_questions"]["texts"] == 1319
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    from eval_harness.data import gsm8k_docs

    qs = [d["question"] for d in gsm8k_docs("t", root, "test")]
    n = sum(len(tok.encode(q, add_special_tokens=False)) for q in qs)
    assert res["english_gsm8k_test_questions"]["tokens"] == n  # no BOS counted (the tokenizer adds one)
    assert res["english_gsm8k_test_questions"]["chars_per_token"] == pytest.approx(sum(map(len, qs)) / n)
    assert all(r["roundtrip_failures"] == 0 for k, r in res.items() if k != "n")
    assert "| tokenizer_compression / korean_text | 11 |" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.parametrize("variant", ["plain"])
def test_compression_equals_the_tokenizer_stage(variant):
    """Where the LM's tokenizer stage has run here: the harness's numbers are the stage's committed metrics (for the
    plain variant exactly; the morpheme-aware one pre-splits in Python, which tokenizer.json alone cannot)."""
    tok_dir = REPO / "outputs" / "bilingual_lm" / "tokenizer" / variant
    if not (tok_dir / "tokenizer.json").is_file():
        pytest.skip(f"{tok_dir} not built here (dvc repro models/bilingual_lm/dvc.yaml:train_tokenizer@{variant})")
    from transformers import AutoTokenizer

    from eval_harness.data import compression_texts
    from eval_harness.metrics import compression_metrics

    root = mirror_dir("korean_text").parent
    ours = compression_metrics(AutoTokenizer.from_pretrained(str(tok_dir)), compression_texts("t", root))
    stage = json.loads((REPO / "metrics" / "bilingual_lm" / f"tokenizer-{variant}.json").read_text())["sets"]
    for name in ("korean_text", "english_wikitext2_test", "english_gsm8k_test_questions", "code_cpython_stdlib"):
        assert ours[name]["tokens"] == stage[name]["tokens"], name
