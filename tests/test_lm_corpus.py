"""The bilingual LM's corpus stage (data/lm_corpus.py, data/lm_sources.py, data/stages/build_lm_corpus.py): PII
scrubbing, exact / near-duplicate removal, decontamination on planted overlaps, the mixture-weight and file checks,
an end-to-end build on a tiny raw folder, and every reader on the real mirror."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import data.lm_corpus as lmc
from data.lm_corpus import Decontaminator, LMCorpusParams, NearDuplicates, build_corpus, normalise, read_shards, scrub_pii
from data.lm_sources import (
    ENCODINGS,
    EVAL_SETS,
    EVALUATION_ONLY,
    TRAIN_SOURCES,
    CorpusFileError,
    Document,
    paragraphs,
    read_text,
)
from data.stages.build_lm_corpus import load_params, main
from tests.conftest import REPO, mirror_dir


# ------------------------------------------------------------------------------------------------------ PII
@pytest.mark.parametrize("text, expected, kind", [
    ("mail me at kim.minsu+lm@example.co.kr today", "mail me at [EMAIL] today", "email"),
    ("주민등록번호 900101-1234567 입니다", "주민등록번호 [RRN] 입니다", "rrn"),
    ("전화 010-1234-5678 로", "전화 [PHONE] 로", "phone"),
    ("+82 10 1234 5678", "[PHONE]", "phone"),
    ("사무실 (02-788-4649, 내선)", "사무실 ([PHONE], 내선)", "phone"),
    ("call (212) 555-0123 now", "call [PHONE] now", "phone"),
    ("card 4111 1111 1111 1111.", "card [CARD].", "card"),
    ("card 4111-1111-1111-1111", "card [CARD]", "card"),
    ("amex 3782 822463 10005", "amex [CARD]", "card"),
    ("visa 4012888888881881", "visa [CARD]", "card"),
])
def test_pii_kinds_are_replaced_and_counted(text, expected, kind):
    out, counts = scrub_pii(text)
    assert out == expected
    assert dict(counts) == {kind: 1}


@pytest.mark.parametrize("text", [
    "1.00 % 0.1 gives 0.09999999999999995 instead",  # a float's digits are not a card
    "_HUGE_VAL = 1.79769313486231e+308",
    "4111 1111 1111 1112",  # fails the Luhn check
    "991399-1234567",  # month 13: not a resident registration number
    "released 2024-01-15, version 3.11.7, port 8080",
    "x = 1234567890123",  # 13 digits failing Luhn
    "0000000000000000",  # passes Luhn, one repeated digit (seen in NSMC reviews)
    "1234567891001",  # passes Luhn, no card network starts with 1
    "43242343424141341",  # passes Luhn, 17 digits: not a Visa length
])
def test_pii_leaves_other_numbers_alone(text):
    assert scrub_pii(text) == (text, {})


# ------------------------------------------------------------------------------------------------------ duplicates
def _params(**kw) -> LMCorpusParams:
    return LMCorpusParams(**kw)


def _clean(docs, params, decon=None):
    stats, contamination = {}, lmc.defaultdict(list)
    kept = list(lmc.clean_documents(docs, params, decon, stats, contamination))
    return kept, stats, contamination


def test_exact_and_near_duplicates():
    long = ("The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden "
            "fence near the river bank in the late afternoon sun. ") * 2
    docs = [Document("s", "d0", "en", long),
            Document("s", "d1", "en", "  " + long.upper().replace(" ", "   ") + "\n"),  # same text normalised
            Document("s", "d2", "en", long.replace("lazy", "sleepy")),  # one word changed: near duplicate
            Document("s", "d3", "en", "A completely different document about Korean grammar and particles, "
                                      "long enough to be shingled and compared."),
            Document("s", "d4", "en", "short one"),
            Document("s", "d5", "en", "short  one!"),  # short: exact-dedup only (differs after normalising)
            Document("s", "d6", "en", "   "),
            Document("t", "d7", "en", long)]  # across sources too
    kept, stats, _ = _clean(docs, _params())
    assert [d.doc_id for d in kept] == ["d0", "d3", "d4", "d5"]
    assert stats["s"]["removed_exact_duplicate"] == 1 and stats["s"]["removed_near_duplicate"] == 1
    assert stats["s"]["removed_empty"] == 1 and stats["t"]["removed_exact_duplicate"] == 1
    # switched off: everything but the empty one is kept
    kept, _, _ = _clean(docs, _params(exact_dedup=False, near_dedup=False))
    assert len(kept) == 7


def test_near_duplicate_threshold():
    a = normalise("abcdefghij klmnopqrst uvwxyz 0123456789 " * 5)
    nd = NearDuplicates(num_perm=128, threshold=0.8, shingle=5)
    assert not nd.seen(a)
    assert nd.seen(a[:-3])  # nearly the same shingles
    assert not nd.seen(normalise("완전히 다른 한국어 문서입니다. 형태소와 조사가 다르게 붙어 있는 긴 문장을 씁니다."))


# ------------------------------------------------------------------------------------------------------ decontamination
EVAL = {
    "a": ["one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"],
    "b": ["이 영화 정말 최고의 작품 이었다 다시 보고 싶다",  # 9 words: short, matched whole
          "too short to match"],  # below short_min_words: never matched
}


def test_decontamination_on_planted_overlaps():
    decon = Decontaminator(EVAL, ngram=13, short_min_words=8)
    assert decon.sizes == {"a": {"texts": 1, "keys": 3}, "b": {"texts": 2, "keys": 1}}
    docs = [
        Document("s", "hit13", "en", "prefix text: One two three four five six seven eight nine ten eleven twelve "
                                     "THIRTEEN, suffix"),
        Document("s", "miss12", "en", "one two three four five six seven eight nine ten eleven twelve and more"),
        Document("s", "short_hit", "ko", "나는 이 영화, 정말 최고의 작품이었다... 아니 이 영화 정말 최고의 작품 이었다 다시 보고 싶다!"),
        Document("s", "short_miss", "ko", "이 영화 정말 최고의 작품 이었다 다시 보고"),
        Document("s", "tiny", "en", "it was too short to match anything"),
        Document("s", "both", "en", "one two three four five six seven eight nine ten eleven twelve thirteen "
                                    "이 영화 정말 최고의 작품 이었다 다시 보고 싶다"),
    ]
    kept, stats, contamination = _clean(docs, _params(), decon)
    assert [d.doc_id for d in kept] == ["miss12", "short_miss", "tiny"]
    assert stats["s"]["removed_contaminated"] == 3
    assert sorted(contamination["a"]) == ["both", "hit13"] and sorted(contamination["b"]) == ["both", "short_hit"]


# ------------------------------------------------------------------------------------------------------ bad input
def _write_params(tmp_path: Path, section: dict) -> Path:
    import yaml

    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"data": {"build_lm_corpus": section}}))
    return p


@pytest.mark.parametrize("weights, message", [
    ({"ko": 0.5, "en": 0.3, "code": 0.1}, "must sum to 1"),
    ({"ko": 0.5, "en": 0.5}, "expected exactly the keys"),
    ({"ko": 1.2, "en": -0.2, "code": 0.0}, "must be >= 0"),
])
def test_mixture_weights_must_be_shares(tmp_path, weights, message):
    path = _write_params(tmp_path, {"weights": weights})
    with pytest.raises(ValueError, match=message) as err:
        load_params(path)
    assert "data.build_lm_corpus.weights" in str(err.value) and str(path) in str(err.value)


def test_unknown_key_and_source_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"data.build_lm_corpus.dedup: unknown key"):
        load_params(_write_params(tmp_path, {"dedup": True}))
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['wikipedia'\]"):
        load_params(_write_params(tmp_path, {"sources": ["wikipedia"]}))


def test_the_repository_params_validate():
    p = load_params(REPO / "params.yaml")
    assert abs(sum(p.weights.values()) - 1) < 1e-9 and set(p.sources) == set(TRAIN_SOURCES)


def test_empty_and_non_utf8_files_are_named(tmp_path):
    (tmp_path / "korean_text" / "kolaw").mkdir(parents=True)
    empty = tmp_path / "korean_text" / "kolaw" / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(CorpusFileError, match=r"empty\.txt: the file is empty"):
        list(TRAIN_SOURCES["korean_text"](tmp_path))
    empty.write_bytes("대한민국".encode("euc-kr"))
    with pytest.raises(CorpusFileError, match=r"empty\.txt: not valid utf-8 at byte 0"):
        list(TRAIN_SOURCES["korean_text"](tmp_path))
    with pytest.raises(CorpusFileError, match=r"nltk_gutenberg/\*\.txt: no file matches"):
        list(TRAIN_SOURCES["gutenberg"](tmp_path))


def test_paragraph_chunks_keep_every_paragraph():
    text = "\n\n".join(f"paragraph {i} " + "x" * 50 for i in range(100))
    chunks = paragraphs(text, max_chars=500)
    assert all(len(c) <= 500 for c in chunks) and len(chunks) > 10
    assert "\n\n".join(chunks) == text


# ------------------------------------------------------------------------------------------------------ end to end
def _tiny_raw(root: Path) -> None:
    (root / "korean_text" / "kolaw").mkdir(parents=True)
    (root / "korean_text" / "kolaw" / "law.txt").write_text("제1조 대한민국은 민주공화국이다. 문의: help@assembly.go.kr\n")
    (root / "korean_text" / "kobill").mkdir(parents=True)
    (root / "korean_text" / "kobill" / "1.txt").write_text("의안 번호 1 예산분석관 (02-788-4649)\n")
    (root / "korean_text" / "kobill" / "2.txt").write_text("의안 번호 1 예산분석관 (02-788-4649)\n")  # duplicate
    (root / "gsm8k").mkdir()
    import random

    rng = random.Random(0)
    vocab = "apple river stone cloud piano tiger lemon candle rocket forest window basket violin garden".split()
    rows = [{"question": " ".join(rng.choice(vocab) for _ in range(12)) + "?", "answer": f"#### {i}"} for i in range(30)]
    rows.append({"question": EVAL["a"][0], "answer": "#### 1"})  # contaminated
    (root / "gsm8k" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    nsmc = root / "korean_corpus" / "nsmc_raw"
    nsmc.mkdir(parents=True)
    lines = ["review_id\tmovie_id\trating\tdate\treview"] + [f"{i}\t1\t10\t15.08.25\t리뷰 번호 {i} 재미있다" for i in range(200)]
    (nsmc / "nsmc_raw_reviews.part00.tsv.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


def test_build_corpus_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(lmc, "EVAL_SETS", {"a": lambda root: EVAL["a"], "b": lambda root: EVAL["b"]})
    raw, out = tmp_path / "raw", tmp_path / "corpus"
    _tiny_raw(raw)
    params = _params(sources=["korean_text", "gsm8k_train", "nsmc_raw"], heldout_sources=["nsmc_raw"],
                     heldout_fraction=0.1, shard_docs=64)
    stats = build_corpus(raw, out, params, progress=False)
    assert stats["sources"]["korean_text"]["removed_exact_duplicate"] == 1
    assert stats["sources"]["korean_text"]["pii"] == {"email": 1, "phone": 2}
    assert stats["sources"]["gsm8k_train"]["removed_contaminated"] == 1 and stats["decontamination"] == {"a": 1, "b": 0}
    assert stats["sources"]["nsmc_raw"]["heldout_documents"] == 20 and stats["heldout_documents"] == 20
    assert stats["languages"]["ko"]["documents"] == 2 + 180 and stats["languages"]["en"]["documents"] == 30
    assert stats["shards"] == {"train": {"ko": 3, "en": 1, "code": 0}, "heldout": {"ko": 1, "en": 0, "code": 0}}
    train = read_shards(out / "train")
    assert len(train) == 212 and not any("help@" in d.text or "4649" in d.text for d in train)
    held = read_shards(out / "heldout", "ko")
    assert {d.doc_id for d in held}.isdisjoint({d.doc_id for d in train}) and len(held) == 20
    report = json.loads((out / "decontamination.json").read_text())
    assert report["eval_sets"]["a"]["examples"] == ["gsm8k_train_30"] and "nsmc_test" in report["unavailable"]
    assert json.loads((out / "mixture.json").read_text())["weights"] == params.weights
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    # the same input gives the same shards
    again = build_corpus(raw, tmp_path / "again", params, progress=False)
    assert again == stats and read_shards(tmp_path / "again" / "train") == train


def test_stage_cli_reports_bad_input_before_work(tmp_path, capsys):
    path = _write_params(tmp_path, {"weights": {"ko": 1.0, "en": 0.5, "code": 0.0}})
    rc = main(["--params", str(path), "--raw", str(tmp_path), "--out", str(tmp_path / "out"),
               "--metrics", str(tmp_path / "m.json")])
    assert rc == 1 and "data.build_lm_corpus.weights" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()


# ------------------------------------------------------------------------------------------------------ the mirror
@pytest.mark.mirror
def test_every_reader_decodes_the_mirror(monkeypatch):
    import data.lm_sources as src

    root = mirror_dir("korean_corpus").parent
    opened: list[str] = []
    real_read, real_glob = src.read_text, src._glob
    monkeypatch.setattr(src, "read_text", lambda r, rel: opened.append(rel) or real_read(r, rel))
    monkeypatch.setattr(src, "_glob", lambda r, pattern: opened.append(pattern) or real_glob(r, pattern))
    for name, reader in TRAIN_SOURCES.items():
        docs = list(reader(root, 500)) if name == "nsmc_raw" else list(reader(root))
        assert docs and all(isinstance(d.text, str) for d in docs), name
        assert {d.lang for d in docs} == {"code" if name == "cpython_stdlib" else
                                          "en" if name in ("gutenberg", "tinyshakespeare", "addresses", "gsm8k_train")
                                          else "ko"}, name
    # evaluation-only folders (KorQuAD, KLUE dev, KorNLI, WikiText-2) are never opened for training text
    assert opened and not [rel for rel in opened if rel.startswith(EVALUATION_ONLY)]
    for name, read in EVAL_SETS.items():
        assert len(read(root)) > 0, name
    # the files with a known other encoding decode to real punctuation, not mojibake
    assert "C\u00e6sar" in real_read(root, "english_corpus/nltk_gutenberg/shakespeare-caesar.txt")
    assert "\u2014" in real_read(root, "english_corpus/nltk_inaugural/2005-Bush.txt")
    assert len(ENCODINGS) == 9


@pytest.mark.mirror
def test_kobest_train_and_test_overlap_is_found_on_the_mirror():
    """KoBEST BoolQ reuses Wikipedia paragraphs across its splits: the decontamination must find train items that
    share 13-grams with the test split (the mirror's real overlap)."""
    root = mirror_dir("kobest").parent
    decon = Decontaminator({"kobest_boolq_test": EVAL_SETS["kobest_boolq_test"](root)})
    docs = list(TRAIN_SOURCES["kobest_train"](root))
    boolq = [d for d in docs if d.doc_id.startswith("kobest_BoolQ_")]
    hits = sum(1 for d in boolq[:1000] if decon.hits(d.text))
    assert 5 <= hits <= 200
