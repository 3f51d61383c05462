"""Unit tests of the harness: the engine against lm-eval's own HFLM encoding/scoring, batching and prefix sharing,
and bad input (unknown task, missing column, few-shot too large, model without tokenizer) failing before a model
loads. The mirror-free tests use a tokenizer trained on the strings below."""

from __future__ import annotations

import json

import pytest

from eval_harness.data import TaskDataError
from eval_harness.engine import LMScorer, ModelLoadError, rolling_windows
from eval_harness.evaluate import evaluate
from eval_harness.tasks import TASKS, UnknownTaskError, build_examples

TEXTS = ["The quick brown fox jumps over the lazy dog.  Then it sleeps.\n", "질문: 콜라독립 815는 코카콜라에서 만들었나요? 답변: 예",
         "문장: 택배사 정말 마음에 듬 긍부정: 긍정 부정 아니오", "새로 산 바지의 허리가 컸다.  그래서 벨트를 바지에 끼워 사이즈를 조절했다."] * 30
PAIRS = [("질문: 콜라독립 815는 코카콜라에서 만들었나요? 답변: ", " 아니오"), ("질문: 콜라독립 815는 코카콜라에서 만들었나요? 답변: ", " 예"),
         ("문장: 택배사 정말 마음에 듬 긍부정:", " 부정"), ("문장: 택배사 정말 마음에 듬 긍부정:", " 긍정"),
         ("새로 산 바지의 허리가 컸다.  그래서", " 벨트를 바지에 끼워 사이즈를 조절했다."), ("새로 산 바지의 허리가 컸다.  그래서", " 바지의 밑단을 잘랐다."),
         ("The quick brown fox\n\n", "jumps over"), ("", "The quick brown fox"), ("The lazy dog " * 20, " sleeps.")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    from eval_harness.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "model", TEXTS, vocab_size=300, max_position_embeddings=48)


@pytest.fixture(scope="module")
def hflm(tiny):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(tiny), dtype="float32", device="cpu", batch_size=1)


def test_continuation_split_by_hand(tiny):
    s = LMScorer.from_pretrained(tiny)
    tok = s.tokenizer
    (ctx, cont), = s.encode_pairs([("질문: 답변: ", " 예")])
    # the trailing space moves into the continuation and the *whole* string is split at the context's length
    assert ctx == tok.encode("질문: 답변:")
    whole = tok.encode("질문: 답변:  예")
    assert ctx + cont == whole and cont == whole[len(ctx):]
    assert tok.decode(cont) == "  예" and ctx[0] == tok.bos_token_id
    # empty context: the BOS prefix, and the continuation encoded without special tokens
    (ctx, cont), = s.encode_pairs([("", "The fox")])
    assert ctx == [tok.bos_token_id] and cont == tok.encode("The fox", add_special_tokens=False)


def test_encoding_equals_lm_eval(tiny, hflm):
    s = LMScorer.from_pretrained(tiny)
    assert s.max_length == hflm.max_length == 48 and s.prefix_token_id == hflm.prefix_token_id
    for ctx, cont in PAIRS:
        ours = s.encode_pairs([(ctx, cont)])[0]
        if ctx:
            assert ours == tuple(hflm._encode_pair(ctx, cont)), (ctx, cont)
        else:
            assert ours == ([hflm.prefix_token_id], hflm.tok_encode(cont, add_special_tokens=False))
    from lm_eval import utils

    toks = s.tok_encode([TEXTS[0] * 5])[0]
    assert toks == hflm.tok_encode(TEXTS[0] * 5) and len(toks) > 2 * 48
    theirs = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(toks, 0, 48, 1)]
    assert rolling_windows(toks, 0, 48) == [tuple(w) for w in theirs]


def test_loglikelihood_equals_hflm(tiny, hflm):
    from lm_eval.api.instance import Instance

    s = LMScorer.from_pretrained(tiny, batch_size=4)
    ours = s.loglikelihood(PAIRS)
    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(PAIRS)]
    theirs = hflm.loglikelihood(reqs, disable_tqdm=True)
    for (a, ga), (b, gb) in zip(ours, theirs):
        assert abs(a - b) <= 1e-5 and ga == gb
    text = TEXTS[0] * 5
    r_ours = s.loglikelihood_rolling([text, TEXTS[1]])
    r_theirs = hflm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i)
                                           for i, t in enumerate([text, TEXTS[1]])], disable_tqdm=True)
    assert r_ours == pytest.approx(r_theirs, abs=1e-5)


def test_batched_equals_one_by_one_and_sharing(tiny):
    one = LMScorer.from_pretrained(tiny, batch_size=1, share_prefixes=False)
    singles = [one.loglikelihood([p])[0] for p in PAIRS]
    assert one.stats["forward_rows"] == len(PAIRS)
    for bs in (2, 5, 64):
        batched = LMScorer.from_pretrained(tiny, batch_size=bs, share_prefixes=False).loglikelihood(PAIRS)
        for (a, ga), (b, gb) in zip(singles, batched):
            assert abs(a - b) <= 1e-5 and ga == gb
    shared = LMScorer.from_pretrained(tiny, batch_size=8, share_prefixes=True)
    got = shared.loglikelihood(PAIRS)
    for (a, ga), (b, gb) in zip(singles, got):
        assert abs(a - b) <= 1e-5 and ga == gb
    assert shared.stats["forward_rows"] <= len(PAIRS)
    # one-token choices of one context (CLIcK's " A" ... " D") have identical model inputs: one forward row
    letters = [("보기: A, B, C, D\n정답:", f" {c}") for c in "ABCD"]
    s2 = LMScorer.from_pretrained(tiny, batch_size=8)
    assert [x[0] for x in s2.loglikelihood(letters)] == pytest.approx([one.loglikelihood([p])[0][0] for p in letters],
                                                                      abs=1e-5)
    assert s2.stats["forward_rows"] == 1
    # a shorter choice whose model input is a prefix of a longer choice's input reads that row's logits
    nested = [("The quick brown", " fox"), ("The quick brown", " fox jumps over")]
    s3 = LMScorer.from_pretrained(tiny, batch_size=8)
    assert [x[0] for x in s3.loglikelihood(nested)] == pytest.approx([one.loglikelihood([p])[0][0] for p in nested],
                                                                     abs=1e-5)
    assert s3.stats["forward_rows"] == 1



@pytest.mark.parametrize("bs", [1, 3, 16])
def test_shared_context_runs_once_and_scores_equal(tiny, bs):
    """Choices of one question share their context's forward pass (key/value cache copied per choice): the same
    scores as one request at a time, with contexts longer than the window (left-truncated per choice, so choices of
    different lengths no longer share a prefix), a one-token context, duplicates and several batches."""
    import random

    one = LMScorer.from_pretrained(tiny, batch_size=1, share_prefixes=False)
    rnd = random.Random(bs)
    vocab = one.tokenizer.vocab_size
    reqs = []
    for q in range(12):
        ctx = [rnd.randrange(3, vocab) for _ in range(rnd.choice([1, 5, 20, 47, 60]))]  # the window is 48
        for c in range(rnd.choice([2, 4])):
            reqs.append((ctx, [rnd.randrange(3, vocab) for _ in range(rnd.randrange(1, 5))]))
    reqs.append(reqs[0])
    ref = one.loglikelihood_tokens(reqs)
    cached = LMScorer.from_pretrained(tiny, batch_size=bs)
    got = cached.loglikelihood_tokens(reqs)
    assert [g for _, g in got] == [g for _, g in ref]
    assert max(abs(a - b) for (a, _), (b, _) in zip(got, ref)) <= 1e-5
    assert cached.stats["cached_rows"] > 0 and cached.stats["forward_calls"] < one.stats["forward_calls"]
    off = LMScorer.from_pretrained(tiny, batch_size=bs, cache_prefixes=False)
    assert [a for a, _ in off.loglikelihood_tokens(reqs)] == pytest.approx([a for a, _ in ref], abs=1e-5)
    assert "cached_rows" not in off.stats

# ----------------------------------------------------------------------------------------------------- bad input
def _kobest_root(tmp_path, header: str, rows: list[str], split: str = "test"):
    d = tmp_path / "kobest" / "v1.0" / "BoolQ"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{split}.tsv").write_text("\r\n".join([header, *rows]) + "\r\n", encoding="utf-8")
    return tmp_path


def test_unknown_task_is_a_clear_error(tmp_path):
    with pytest.raises(UnknownTaskError, match="kobest_bool.*known tasks"):
        evaluate(tmp_path / "no-model", ["kobest_bool"], data_root=tmp_path)
    from eval_harness.__main__ import main

    assert main(["--model", str(tmp_path), "--tasks", "nope"]) == 2


def test_missing_column_names_task_file_field(tmp_path, tiny, monkeypatch):
    root = _kobest_root(tmp_path, "ID\tText\tAnswer", ["1\t문단\tTrue"])
    monkeypatch.setattr(LMScorer, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("model loaded")))
    with pytest.raises(TaskDataError) as err:
        evaluate(tiny, ["kobest_boolq"], data_root=root)
    msg = str(err.value)
    assert "kobest_boolq" in msg and "BoolQ/test.tsv" in msg and "'Question'" in msg


def test_unknown_label_and_missing_file(tmp_path):
    root = _kobest_root(tmp_path, "ID\tText\tQuestion\tAnswer", ["1\t문단\t질문\tMaybe"])
    with pytest.raises(TaskDataError, match="kobest_boolq.*test.tsv.*'Answer'.*Maybe"):
        build_examples(TASKS["kobest_boolq"], root)
    with pytest.raises(TaskDataError, match="kobest_copa.*COPA/test.tsv.*not found"):
        build_examples(TASKS["kobest_copa"], root)


def test_fewshot_larger_than_split(tmp_path, tiny, monkeypatch):
    header = "ID\tText\tQuestion\tAnswer"
    root = _kobest_root(tmp_path, header, ["1\t문단\t질문\tTrue", "2\t문단\t질문\tFALSE"])
    _kobest_root(tmp_path, header, ["1\t훈련\t질문\ttrue", "2\t훈련2\t질문2\tFalse"], split="train")
    ex = build_examples(TASKS["kobest_boolq"], root, num_fewshot=2)
    assert [e.gold for e in ex] == [1, 0] and ex[0].context.count("\n\n") == 2
    monkeypatch.setattr(LMScorer, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("model loaded")))
    with pytest.raises(TaskDataError, match="kobest_boolq.*num_fewshot=3.*'train'.*2 docs"):
        evaluate(tiny, ["kobest_boolq"], data_root=root, num_fewshot=3)


def test_model_dir_without_tokenizer(tmp_path, tiny):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text((tiny / "config.json").read_text())
    root = _kobest_root(tmp_path, "ID\tText\tQuestion\tAnswer", ["1\t문단\t질문\tTrue"])
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        evaluate(d, ["kobest_boolq"], data_root=root)
    with pytest.raises(ModelLoadError, match="not found"):
        LMScorer.from_pretrained(tmp_path / "absent")


def test_tsv_quoting_and_spaces_kept(tmp_path):
    d = tmp_path / "kobest" / "v1.0" / "HellaSwag"
    d.mkdir(parents=True)
    (d / "test.tsv").write_text('context\tchoice1\tchoice2\tchoice3\tchoice4\tlabel\n'
                                '"누군가 ""빙고""를 외친다."\t"끝1"는\t 끝2 \t끝3\t끝4\t2\n', encoding="utf-8")
    (ex,) = build_examples(TASKS["kobest_hellaswag"], tmp_path)
    assert ex.context == '문장: 누군가 "빙고"를 외친다.' and ex.choices == ('"끝1"는', " 끝2 ", "끝3", "끝4")
    assert ex.gold == 2 and ex.requests()[1] == (ex.context, "  끝2 ")


def test_cli_end_to_end(tmp_path, tiny):
    from eval_harness.__main__ import main

    root = _kobest_root(tmp_path, "ID\tText\tQuestion\tAnswer", ["1\t문단\t질문\tTrue", "2\t문단 둘\t질문\tFALSE"])
    assert main(["--model", str(tiny), "--tasks", "kobest_boolq", "--data-root", str(root), "--out",
                 str(tmp_path / "out"), "--batch-size", "4"]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["results"]["kobest_boolq"]["n"] == 2 and 0.0 <= res["results"]["kobest_boolq"]["f1"] <= 1.0


@pytest.mark.mirror
def test_click_categories_match_lm_eval_filters():
    from tests.conftest import mirror_dir

    root = mirror_dir("click").parent
    sizes = {n: len(TASKS[n].docs(root)) for n in TASKS if n.startswith("click_")}
    assert sizes == {"click_cul_economy": 59, "click_cul_geography": 131, "click_cul_history": 280,
                     "click_cul_law": 219, "click_cul_politics": 84, "click_cul_kpop": 41, "click_cul_society": 309,
                     "click_cul_tradition": 222, "click_lang_text": 285, "click_lang_grammar": 233,
                     "click_lang_function": 132}
    assert len(TASKS["wikitext"].docs(mirror_dir("english_corpus").parent)) == 62


def test_a_model_without_a_selectable_cache_falls_back_to_full_rows(tiny, monkeypatch):
    pairs = [("The quick brown fox", " jumps"), ("The quick brown fox", " sleeps all day")]
    want = LMScorer.from_pretrained(tiny, batch_size=1, share_prefixes=False).loglikelihood(pairs)
    s = LMScorer.from_pretrained(tiny, batch_size=8)

    def broken(*a, **k):
        raise AttributeError("'Cache' object has no attribute 'batch_select_indices'")

    monkeypatch.setattr(s, "_cached_batch", broken)
    with pytest.warns(UserWarning, match="no shared-prefix cache"):
        got = s.loglikelihood(pairs)
    assert [a for a, _ in got] == pytest.approx([a for a, _ in want], abs=1e-5) and s.cache_prefixes is False
