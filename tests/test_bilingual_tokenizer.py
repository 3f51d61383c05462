"""Morpheme-aware byte-level BPE (models.bilingual_lm.tokenizer, spec §3.1): pre-split only cuts, no merge crosses
a cut, training ids == inference ids, lossless round trip, special ids, chat template, metrics, errors. Tiny
tokenizers (vocabulary 512) are trained here on a hand-written Korean/English corpus; the mirror tests read
DATA_MIRROR."""

from __future__ import annotations

import gzip
import json
import os
import tarfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from models.bilingual_lm import tokenizer as bt  # noqa: E402

_MIRROR_ENV = os.environ.get("DATA_MIRROR", "").strip()
MIRROR = Path(_MIRROR_ENV).resolve() if _MIRROR_ENV else None
needs_mirror = pytest.mark.skipif(MIRROR is None or not (MIRROR / "korean_text").is_dir(),
                                  reason="DATA_MIRROR is not set or has no korean_text/")

KOREAN = [
    "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.",
    "국민은 학교에서 공부를 했다. 학생들은 도서관에서 책을 읽었습니다.",
    "어제 친구와 함께 시장에 갔어요. 시장에는 사람이 많았어요.",
    "우리는 아침에 밥을 먹었습니다. 저녁에는 국수를 먹을 거예요.",
    "모든 국민은 법 앞에 평등하다. 누구든지 성별이나 종교에 의하여 차별을 받지 아니한다.",
    "날씨가 좋아서 공원에서 산책을 했다. 공원에는 꽃이 많이 피었다.",
    "그는 회사에서 일을 하고 집으로 돌아왔다. 집에서는 가족이 기다리고 있었다.",
    "이 영화는 정말 재미있었어요. 배우들의 연기가 훌륭했고 음악도 좋았어요.",
    "정부는 국민의 자유와 권리를 보장하여야 한다. 국가는 개인의 기본적 인권을 확인한다.",
    "학생들은 선생님의 말씀을 듣고 질문을 했다. 선생님은 친절하게 대답했다.",
    "나는 서울에서 태어나서 부산에서 자랐다. 지금은 대전에서 일하고 있다.",
    "오늘은 비가 와서 집에 있었어요. 내일은 날씨가 맑을 거예요.",
    "국회는 법률을 제정하고 정부는 법률을 집행한다. 법원은 재판을 한다.",
    "우리 팀은 어제 경기에서 이겼다. 선수들은 열심히 뛰었고 관중들은 환호했다.",
    "책을 읽는 것은 좋은 습관이다. 매일 조금씩 읽으면 많은 것을 배울 수 있다.",
    "그녀는 커피를 마시면서 신문을 읽었다. 신문에는 경제 소식이 많았다.",
]
ENGLISH = [
    "The quick brown fox jumps over the lazy dog. It's a sentence we've all seen.",
    "Tokenizers split text into pieces; byte-level BPE never goes out of vocabulary.",
    "def add(a, b):\n    return a + b  # 2024-01-01\n",
]
TRAIN = (KOREAN + ENGLISH) * 3
HELD_OUT_KO = [
    "국민은 시장에서 책을 샀다. 친구들은 공원에서 경기를 했어요.",
    "정부와 국회는 국민의 권리를 보장한다. 학생들은 도서관에 갔어요.",
    "그는 어제 회사에 갔다가 집으로 돌아왔습니다.",
]
TRICKY = [
    "나온다", "했다", "갔어요", "그는 나온다 했다 갔어요.",
    "GPT-4를 2024년에 썼다. Hello, 세계! 123abc가나다",
    "def f(x):\n\treturn x  # 주석입니다\n\n\n",
    "  여러   칸의    공백과\t\t탭\r\n그리고 줄바꿈\n",
    "이모지 😀👨‍👩‍👧 🇰🇷와 ㅋㅋㅋ ㅠㅠ 그리고 漢字와 Привет",
    "\u1112\u1161\u11ab\u1100\u1173\u11af 자모 분해형(NFD) 한글",
    " 앞 공백", "뒤 공백 ", "", " ", "\n", "don't we'll I'm",
    "<|user|>안녕하세요<|end_of_turn|> 특수 토큰 문자열",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both variants trained on TRAIN (vocab 512) and saved: {variant: (in-memory tokenizer, saved directory)}."""
    out = {}
    for name, morph in (("morph", True), ("plain", False)):
        tok = bt.train_tokenizer(TRAIN, 512, morpheme_aware=morph)
        out[name] = (tok, tok.save_pretrained(tmp_path_factory.mktemp(name)))
    return out


def _spans(parts_bytes):
    spans, pos = [], 0
    for n in parts_bytes:
        spans.append((pos, pos + n))
        pos += n
    return spans


# ----------------------------------------------------------------------------------------------- pre-split
def test_pre_split_cuts_contractions_only_outside_overlaps():
    assert bt.pre_split("그는 나온다 했다 갔어요.") == ["그", "는", " 나온다", " 했", "다", " 갔", "어요", "."]
    assert bt.pre_split("그는 나온다 했다 갔어요.", morpheme_aware=False) == ["그는", " 나온다", " 했다", " 갔어요", "."]
    assert bt.pre_split("나온다") == ["나온다"]  # 나오 [0,2) + ᆫ다 [1,3) overlap: no cut inside
    assert bt.pre_split("대한민국은 GPT를 썼다") == ["대한민국", "은", " GPT", "를", " 썼", "다"]
    assert bt.pre_split("a   b\tc\n\nd", morpheme_aware=False) == ["a", "  ", " b", "\t", "c", "\n", "\n", "d"]
    assert bt.pre_split("") == [] and bt.pre_split("", morpheme_aware=False) == []


@pytest.mark.parametrize("morph", [True, False])
def test_pieces_concatenate_to_the_input(morph):
    got = bt.pre_split_batch(TRICKY + KOREAN, morpheme_aware=morph)
    for text, pieces in zip(TRICKY + KOREAN, got):
        assert "".join(pieces) == text
        assert all(pieces), text  # no empty piece
    # a leading space stays with the word that follows; no piece starts inside a Hangul run after a space
    assert " 여러" in got[6] and "  " in got[6]
    # small chunks (a long line cut for Kiwi) still only cut
    long_line = " ".join(KOREAN)
    assert "".join(bt.pre_split(long_line, chunk_chars=37)) == long_line


def test_pre_split_matches_the_saved_pretokenizer(trained):
    backend = trained["plain"][0].backend
    u2b = bt._unicode_to_byte()
    for text in TRICKY:
        words = [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
        assert [bytes(u2b[c] for c in w).decode("utf-8") for w in words] == bt.pre_split(text, morpheme_aware=False)
        # the morpheme pieces are a refinement: the saved pre-tokenizer re-splits no piece
        for piece in bt.pre_split(text):
            assert len(backend.pre_tokenizer.pre_tokenize_str(piece)) == 1, piece


# ----------------------------------------------------------------------------------------------- training
def test_special_token_ids_and_saved_files(trained):
    from transformers import AutoTokenizer

    tok, d = trained["morph"]
    assert [tok.backend.token_to_id(t) for t in bt.SPECIAL_TOKENS] == list(range(10))
    assert tok.vocab_size == len(tok) == 512 and tok.metadata["vocab_size"] == 512
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids(["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]) == [3, 4, 5]
    assert {"tokenizer.json", "tokenizer_config.json", bt.METADATA_FILE} <= {p.name for p in d.iterdir()}
    meta = json.loads((d / bt.METADATA_FILE).read_text())
    assert meta["morpheme_aware"] is True and meta["analyser"]["kiwipiepy_version"] == "0.24.1"
    assert meta["vocab_sha256"] == bt.vocab_hash(tok.backend) and len(meta["vocab_sha256"]) == 64
    assert json.loads((trained["plain"][1] / bt.METADATA_FILE).read_text())["morpheme_aware"] is False
    hf = AutoTokenizer.from_pretrained(str(d))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 1, 2)
    assert hf.convert_tokens_to_ids(list(bt.SPECIAL_TOKENS)) == list(range(10))
    assert tok.encode("<|fim_prefix|>x<|fim_suffix|>y<|fim_middle|>")[:1] == [3]
    assert tok.encode("안녕", add_bos=True, add_eos=True)[0] == 0 and tok.encode("안녕", add_eos=True)[-1] == 1


def test_no_merge_crosses_a_morpheme_cut(trained):
    morph, plain = trained["morph"][0], trained["plain"][0]
    crossing = {"morph": 0, "plain": 0}
    for text in KOREAN + HELD_OUT_KO + TRICKY:
        pieces = morph.pieces(text)
        cuts = {b for _, b in _spans([len(p.encode()) for p in pieces])}
        for name, tok in (("morph", morph), ("plain", plain)):
            ids = tok.encode(text)
            for a, b in _spans([len(tok.token_bytes(i)) for i in ids]):
                crossing[name] += any(a < c < b for c in cuts)
    assert crossing["morph"] == 0
    assert crossing["plain"] > 10  # the check can fail: the baseline merges e.g. 국민+은 across a morpheme cut


def _trainer_ids(tok, text):
    """Ids as the BPE trainer saw the text: each piece a training string, through the trainer's own
    pre-tokenizer, then the learned model on each word."""
    ids = []
    for piece in tok.pieces(text):
        if piece in bt.SPECIAL_IDS:
            ids.append(bt.SPECIAL_IDS[piece])
            continue
        for word, _ in tok.backend.pre_tokenizer.pre_tokenize_str(piece):
            ids.extend(t.id for t in tok.backend.model.tokenize(word))
    return ids


@pytest.mark.parametrize("variant", ["morph", "plain"])
def test_training_ids_equal_inference_ids(trained, variant):
    tok, d = trained[variant]
    loaded = bt.load_tokenizer(d)
    assert loaded.morpheme_aware is (variant == "morph")
    texts = HELD_OUT_KO + TRICKY + KOREAN
    want = [_trainer_ids(tok, t) for t in texts]
    assert [tok.encode(t) for t in texts] == want
    assert [loaded.encode(t) for t in texts] == want
    assert loaded.encode_batch(texts) == want
    batch = loaded(texts, padding=True)
    n = max(map(len, want))
    assert batch["input_ids"] == [w + [bt.PAD_ID] * (n - len(w)) for w in want]
    assert batch["attention_mask"] == [[1] * len(w) + [0] * (n - len(w)) for w in want]
    assert loaded(texts[0]) == {"input_ids": want[0], "attention_mask": [1] * len(want[0])}
    assert sum(map(len, want)) > 100


@pytest.mark.parametrize("morph", [True, False])
def test_trainer_sees_exactly_the_pieces(trained, morph):
    """An independent training run on pre_split's pieces (each its own training string) gives the very same
    vocabulary and merges; training on whole texts does not (for the morpheme-aware variant)."""
    from tokenizers import pre_tokenizers, trainers

    def reference(strings):
        backend = bt._new_backend(bt.SPLIT_PATTERN)
        trainer = trainers.BpeTrainer(vocab_size=512, min_frequency=2, special_tokens=list(bt.SPECIAL_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        backend.train_from_iterator(strings, trainer)
        return bt.vocab_hash(backend)

    got = bt.vocab_hash(trained["morph" if morph else "plain"][0].backend)
    assert got == reference([p for t in TRAIN for p in bt.pre_split(t, morpheme_aware=morph)])
    assert (got == reference(TRAIN)) is (not morph)


def test_plain_wrapper_equals_autotokenizer(trained):
    from transformers import AutoTokenizer

    tok, d = trained["plain"]
    hf = AutoTokenizer.from_pretrained(str(d))
    for text in TRICKY + HELD_OUT_KO:
        ids = tok.encode(text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids
        assert tok.encode_pieces_batch(tok.pieces_batch([text])) == [ids]  # the Python pieces give the same ids


def test_autotokenizer_alone_is_lossless_but_not_morpheme_aware(trained):
    from transformers import AutoTokenizer

    tok, d = trained["morph"]
    hf = AutoTokenizer.from_pretrained(str(d))
    for text in TRICKY + HELD_OUT_KO:
        assert hf.decode(hf(text, add_special_tokens=False)["input_ids"]) == text
    # without the wrapper nothing cuts at morphemes: a learned byte merge can then span a cut (here in 정부는 ..)
    differ = [t for t in KOREAN + HELD_OUT_KO if hf(t, add_special_tokens=False)["input_ids"] != tok.encode(t)]
    assert len(differ) >= 1 and differ[0].startswith("정부는")


def test_plain_and_morpheme_aware_differ_on_korean_both_lossless(trained):
    morph, plain = trained["morph"][0], trained["plain"][0]
    sentence = "국민은 학교에서 공부를 했다."
    m, p = morph.encode(sentence), plain.encode(sentence)
    assert m != p and len(m) >= len(p)
    assert morph.decode(m) == sentence and plain.decode(p) == sentence
    for text in TRICKY + HELD_OUT_KO + KOREAN:
        assert morph.decode(morph.encode(text)) == text
        assert plain.decode(plain.encode(text)) == text
        assert morph.decode(morph.encode(text, split_special_tokens=True)) == text


def test_training_is_deterministic():
    a = bt.train_tokenizer(KOREAN, 300)
    b = bt.train_tokenizer(list(KOREAN), 300)
    assert bt.vocab_hash(a.backend) == bt.vocab_hash(b.backend)
    assert bt.vocab_hash(a.backend) != bt.vocab_hash(bt.train_tokenizer(KOREAN, 300, morpheme_aware=False).backend)


# ----------------------------------------------------------------------------------------------- chat
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "안녕하세요? 날씨가 어때요?"},
    {"role": "assistant", "content": " 오늘은 맑아요.\n"},
]
EXPECTED_CHAT = ("<|system|>You are a helpful assistant.<|end_of_turn|>"
                 "<|user|>안녕하세요? 날씨가 어때요?<|end_of_turn|>"
                 "<|assistant|> 오늘은 맑아요.\n<|end_of_turn|>")


def test_chat_template(trained):
    from transformers import AutoTokenizer

    tok, d = trained["morph"]
    loaded = bt.load_tokenizer(d)
    hf = AutoTokenizer.from_pretrained(str(d))
    assert loaded.apply_chat_template(CONVERSATION) == EXPECTED_CHAT
    assert hf.apply_chat_template(CONVERSATION, tokenize=False) == EXPECTED_CHAT
    prompt = loaded.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True)
    assert prompt == EXPECTED_CHAT.split("<|assistant|>")[0] + "<|assistant|>"
    assert hf.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True) == prompt
    ids = loaded.apply_chat_template(CONVERSATION, tokenize=True)
    assert ids[0] == bt.SYSTEM_ID and ids[-1] == bt.END_OF_TURN_ID
    assert [i for i in ids if i < 10] == [6, 9, 7, 9, 8, 9]
    assert loaded.decode(ids) == EXPECTED_CHAT
    assert ids == tok.encode("<|system|>You are a helpful assistant.<|end_of_turn|>") + tok.encode(
        "<|user|>안녕하세요? 날씨가 어때요?<|end_of_turn|>") + tok.encode("<|assistant|> 오늘은 맑아요.\n<|end_of_turn|>")


def test_chat_unknown_role_raises(trained):
    import jinja2
    from transformers import AutoTokenizer

    d = trained["morph"][1]
    bad = CONVERSATION[:2] + [{"role": "tool", "content": "42"}]
    with pytest.raises(ValueError, match=r"messages\[2\]: unknown chat role 'tool'"):
        bt.load_tokenizer(d).apply_chat_template(bad)
    with pytest.raises(jinja2.exceptions.TemplateError, match="unknown chat role tool"):
        AutoTokenizer.from_pretrained(str(d)).apply_chat_template(bad, tokenize=False)


# ----------------------------------------------------------------------------------------------- metrics
def test_metrics_keys_and_values(trained):
    tok = trained["morph"][0]
    m = bt.tokenizer_metrics(tok, {"ko": KOREAN, "en": ENGLISH, "held": HELD_OUT_KO})
    keys = {"texts", "chars", "bytes", "tokens", "chars_per_token", "bytes_per_token", "hangul_syllables",
            "hangul_split_syllables", "hangul_byte_fallback_share", "roundtrip_failures"}
    assert set(m) == {"ko", "en", "held"} and all(set(v) == keys for v in m.values())
    ko = m["ko"]
    assert ko["texts"] == len(KOREAN) and ko["chars"] == sum(map(len, KOREAN))
    assert ko["bytes"] == sum(len(t.encode()) for t in KOREAN)
    assert ko["tokens"] == sum(len(tok.encode(t)) for t in KOREAN)
    assert ko["chars_per_token"] == pytest.approx(ko["chars"] / ko["tokens"]) and ko["chars_per_token"] > 1.0
    assert ko["bytes_per_token"] == pytest.approx(ko["bytes"] / ko["tokens"]) and ko["bytes_per_token"] > 2.5
    assert ko["hangul_syllables"] == sum(1 for t in KOREAN for c in t if "가" <= c <= "힣")
    assert 0.0 <= ko["hangul_byte_fallback_share"] <= 1.0
    assert ko["hangul_byte_fallback_share"] == pytest.approx(ko["hangul_split_syllables"] / ko["hangul_syllables"])
    assert m["en"]["hangul_syllables"] == 0 and m["en"]["hangul_byte_fallback_share"] is None
    assert all(v["roundtrip_failures"] == 0 for v in m.values())


def test_metrics_split_share_on_known_cases(trained):
    tok = trained["morph"][0]
    whole = next(s for s in "국민은의다" if len(tok.encode(s)) == 1)  # a syllable that is one token
    rare = "뷁"  # not in the training text: raw byte tokens
    assert len(tok.encode(rare)) > 1
    m = bt.tokenizer_metrics(tok, {"whole": [whole * 3], "rare": [rare], "mixed": [f"{whole} {rare}x"], "none": []})
    assert m["whole"]["hangul_byte_fallback_share"] == 0.0 and m["whole"]["hangul_syllables"] == 3
    assert m["rare"]["hangul_byte_fallback_share"] == 1.0
    assert m["mixed"]["hangul_split_syllables"] == 1 and m["mixed"]["hangul_byte_fallback_share"] == 0.5
    assert m["none"]["tokens"] == 0 and m["none"]["chars_per_token"] is None


class _Broken(bt.BilingualTokenizer):
    def decode(self, ids, *, skip_special_tokens=False):
        return super().decode(ids, skip_special_tokens=skip_special_tokens).replace("다", "")


def test_metrics_count_roundtrip_failures(trained):
    tok = trained["morph"][0]
    broken = _Broken(tok.hf, tok.metadata)
    m = bt.tokenizer_metrics(broken, {"ko": KOREAN + ["가나"], "en": ENGLISH})
    assert m["ko"]["roundtrip_failures"] == sum("다" in t for t in KOREAN) and m["en"]["roundtrip_failures"] == 0


# ----------------------------------------------------------------------------------------------- errors
def test_clear_errors(tmp_path, trained):
    with pytest.raises(ValueError, match="texts: the training corpus is empty"):
        bt.train_tokenizer([], 512)
    with pytest.raises(ValueError, match="texts: the training corpus is empty"):
        bt.train_tokenizer(["", ""], 512)
    with pytest.raises(ValueError, match=r"texts\[1\]: expected str, got int"):
        bt.train_tokenizer(["가나다", 3], 512)
    with pytest.raises(ValueError, match="texts: expected a sequence of str, got a single str"):
        bt.train_tokenizer("가나다", 512)
    with pytest.raises(ValueError, match=r"vocab_size=266 is too small: it must be >= 267"):
        bt.train_tokenizer(KOREAN, 266)
    with pytest.raises(ValueError, match="vocab_size: expected an int"):
        bt.train_tokenizer(KOREAN, 512.0)
    with pytest.raises(ValueError, match=r"directory: .* has no tokenizer\.json"):
        bt.load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match=r"text: expected str, got bytes"):
        trained["morph"][0].encode(b"abc")
    with pytest.raises(ValueError, match=r"corpora\['x'\]\[0\]: expected str"):
        bt.tokenizer_metrics(trained["morph"][0], {"x": [None]})
    with pytest.raises(ValueError, match=r"messages\[0\]\['content'\]: expected str"):
        trained["morph"][0].apply_chat_template([{"role": "user", "content": 1}])


def test_load_detects_a_vocabulary_mismatch(tmp_path, trained):
    import shutil

    d = shutil.copytree(trained["morph"][1], tmp_path / "tok")
    other = trained["plain"][1]
    shutil.copy(other / "tokenizer.json", d / "tokenizer.json")
    with pytest.raises(ValueError, match=r"vocab_sha256 .* does not match"):
        bt.load_tokenizer(d)
    meta = json.loads((trained["morph"][1] / bt.METADATA_FILE).read_text())
    meta["analyser"]["kiwipiepy_version"] = "0.0.1"
    d2 = shutil.copytree(trained["morph"][1], tmp_path / "tok2")
    (d2 / bt.METADATA_FILE).write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="different analyser"):
        assert bt.load_tokenizer(d2).morpheme_aware
    with pytest.raises(ValueError, match="different analyser"):
        bt.load_tokenizer(d2, strict=True)
    d3 = shutil.copytree(trained["morph"][1], tmp_path / "tok3")
    (d3 / bt.METADATA_FILE).unlink()
    with pytest.warns(UserWarning, match="no bilingual_tokenizer.json: loading it as a plain"):
        plain = bt.load_tokenizer(d3)
    assert not plain.morpheme_aware and plain.pattern == bt.SPLIT_PATTERN
    text = KOREAN[8]
    assert plain.encode(text) == trained["morph"][0].backend.encode(text, add_special_tokens=False).ids


# ----------------------------------------------------------------------------------------------- mirror
def _mirror_sample() -> dict[str, list[str]]:
    kt = MIRROR / "korean_text"
    out = {"constitution": [(kt / "kolaw" / "constitution.txt").read_text(encoding="utf-8")],
           "kobill": [p.read_text(encoding="utf-8") for p in sorted((kt / "kobill").glob("*.txt"))]}
    nsmc = MIRROR / "korean_corpus" / "nsmc_raw" / "nsmc_raw_reviews.part00.tsv.gz"
    if nsmc.is_file():
        with gzip.open(nsmc, "rt", encoding="utf-8") as f:
            next(f)
            out["nsmc"] = [line.rstrip("\n").split("\t")[-1] for _, line in zip(range(2000), f)]
    emma = MIRROR / "english_corpus" / "nltk_gutenberg" / "austen-emma.txt"
    if emma.is_file():
        out["emma"] = [emma.read_text(encoding="utf-8")[:100_000]]
    code = MIRROR / "code_corpus" / "cpython311_stdlib_py.tar.gz"
    if code.is_file():
        with tarfile.open(code) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".py")][:20]
            out["code"] = [tar.extractfile(m).read().decode("utf-8", errors="replace") for m in members]
    return out


@pytest.mark.mirror
@needs_mirror
def test_roundtrip_on_mirror_text(trained):
    sample = _mirror_sample()
    for variant in ("morph", "plain"):
        m = bt.tokenizer_metrics(bt.load_tokenizer(trained[variant][1]), sample)
        assert {k: v["roundtrip_failures"] for k, v in m.items()} == {k: 0 for k in sample}
        assert m["constitution"]["chars"] == len(sample["constitution"][0]) > 18_000
        assert 0.0 <= m["constitution"]["hangul_byte_fallback_share"] <= 1.0
    constitution = sample["constitution"][0]
    pieces = bt.pre_split(constitution)
    assert "".join(pieces) == constitution and len(pieces) > len(bt.pre_split(constitution, morpheme_aware=False))
