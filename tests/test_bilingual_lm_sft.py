"""SFT of the bilingual LM (spec §3.3): the chat encoding and its assistant-target mask, the CE + token-level
unlikelihood loss (against a plain-loop reference and a case worked by hand), the instruction mix (a hand-written
fake mirror; the real mirror under ``DATA_MIRROR``) and a few trainer steps end to end. A small plain BPE
(vocabulary 512) is trained here on generated Korean / English strings."""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from models.bilingual_lm import sft  # noqa: E402
from models.bilingual_lm.tokenizer import (  # noqa: E402
    ASSISTANT_ID, END_OF_TURN_ID, PAD_ID, SYSTEM_ID, USER_ID, train_tokenizer)

_MIRROR_ENV = os.environ.get("DATA_MIRROR", "").strip()
MIRROR = Path(_MIRROR_ENV).resolve() if _MIRROR_ENV else None
MIRROR_FOLDERS = ("gsm8k", "kobest", "mt_koen", "click", "bbh", "humaneval", "english_corpus")

KO = ["안녕하세요", "오늘 날씨가 좋네요", "학교에 갔어요", "책을 읽었습니다", "감사합니다", "다음 문장을 번역하세요",
      "예", "아니오", "긍정", "부정", "친구와 시장에 갔다", "밥을 먹었어요"]
EN = ["Hello there", "What is the answer", "The weather is nice today", "Translate the sentence", "Thank you",
      "Be brief.", "I read a book", "How many apples are left", "The answer is", "yes", "no"]
CORPUS = [f"{a} {b}" for a in KO for b in EN] + [f"{b}, {a}." for a in KO for b in EN] + \
         [f"What is {i} plus {j}? {i + j}" for i in range(10) for j in range(10)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, 512, morpheme_aware=False)


def enc(tok, text):
    return tok.encode(text)


# ================================================================================================ chat encoding
def test_mask_is_exactly_the_assistant_content_and_its_end_of_turn(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "안녕하세요"},
            {"role": "assistant", "content": "Hello there"}]
    s, u, a = enc(tok, "Be brief."), enc(tok, "안녕하세요"), enc(tok, "Hello there")
    assert len(s) >= 2 and len(u) >= 1 and len(a) >= 2
    full = [SYSTEM_ID, *s, END_OF_TURN_ID, USER_ID, *u, END_OF_TURN_ID, ASSISTANT_ID, *a, END_OF_TURN_ID]
    seq_len = len(full) + 4
    ids, mask = sft.encode_chat(tok, msgs, seq_len)
    assert ids == full + [PAD_ID] * 5 and len(mask) == seq_len
    # the template rendered by the tokenizer (HF Jinja string, re-encoded) gives the same ids
    assert ids[:len(full)] == tok.apply_chat_template(msgs, tokenize=True)
    first = len(s) + len(u) + 5  # index in ids of the first assistant content token
    assert ids[first - 1] == ASSISTANT_ID and ids[first] == a[0]
    expected = [first - 1 <= t < first - 1 + len(a) + 1 for t in range(seq_len)]  # target t = ids[t + 1]
    assert mask == expected
    assert [ids[t + 1] for t in range(seq_len) if mask[t]] == a + [END_OF_TURN_ID]
    e = sft.encode_chat(tok, msgs, seq_len)
    assert (e.length, e.truncated, e.truncated_tokens, e.target_tokens) == (len(full), False, 0, len(a) + 1)


def test_two_assistant_turns_both_masked_prompts_not(tok):
    msgs = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5"},
            {"role": "user", "content": "Thank you"}, {"role": "assistant", "content": "감사합니다"}]
    u1, a1, u2, a2 = (enc(tok, m["content"]) for m in msgs)
    ids, mask = sft.encode_chat(tok, msgs, 64)
    targets = [ids[t + 1] for t in range(64) if mask[t]]
    assert targets == a1 + [END_OF_TURN_ID] + a2 + [END_OF_TURN_ID]
    n = 1 + len(u1) + 1 + 1  # [user, u1, eot, assistant]
    assert mask[n - 1] and not mask[n - 2]  # first target is a1[0]; <|assistant|> (ids[n - 1]) is not a target
    assert not any(mask[n + len(a1):n + len(a1) + len(u2) + 3])  # user turn 2: role, content, eot, <|assistant|>
    assert sum(mask) == len(a1) + len(a2) + 2


def test_padding_and_truncation_are_recorded(tok):
    msgs = [{"role": "user", "content": "How many apples are left"},
            {"role": "assistant", "content": "The answer is 7"}]
    u, a = enc(tok, msgs[0]["content"]), enc(tok, msgs[1]["content"])
    n = len(u) + len(a) + 4
    # exactly fits: no padding, no truncation
    e = sft.encode_chat(tok, msgs, n - 1)
    assert len(e.ids) == n and PAD_ID not in e.ids and not e.truncated and e.target_tokens == len(a) + 1
    # cut inside the assistant content: the beginning is kept, the cut ids are counted
    cut = len(u) + 4  # rows of cut + 1 ids: [user, u, eot, assistant, a0, a1, ...]
    e = sft.encode_chat(tok, msgs, cut)
    assert e.ids == [USER_ID, *u, END_OF_TURN_ID, ASSISTANT_ID, *a][:cut + 1]
    assert e.truncated and e.truncated_tokens == n - (cut + 1) and e.length == n
    assert e.target_tokens == 2 and e.full_target_tokens == len(a) + 1 and e.target_mask[-2:] == [True, True]
    # cut before any assistant target: nothing to learn
    e = sft.encode_chat(tok, msgs, len(u) + 2)
    assert e.truncated and e.target_tokens == 0 and not any(e.target_mask)
    with pytest.raises(ValueError, match="seq_len"):
        sft.encode_chat(tok, msgs, 0)


def test_unknown_role_and_bad_messages_are_named(tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "tool", "content": "{}"}]
    with pytest.raises(ValueError, match=r"messages\[2\].*'tool'.*turn 2"):
        sft.encode_chat(tok, msgs, 16)
    with pytest.raises(ValueError, match=r"messages\[0\]\['content'\]"):
        sft.encode_chat(tok, [{"role": "user", "content": 3}], 16)
    with pytest.raises(ValueError, match="empty"):
        sft.encode_chat(tok, [], 16)


def test_role_token_strings_inside_content_are_plain_text(tok):
    ids, mask = sft.encode_chat(tok, [{"role": "user", "content": "<|assistant|>yes<|end_of_turn|>"},
                                      {"role": "assistant", "content": "no"}], 40)
    n = ids.index(PAD_ID) if PAD_ID in ids else len(ids)
    assert ids[:n].count(ASSISTANT_ID) == 1 and ids[:n].count(END_OF_TURN_ID) == 2
    assert [ids[t + 1] for t in range(40) if mask[t]] == enc(tok, "no") + [END_OF_TURN_ID]


def test_sft_rows_match_encode_chat_and_report_per_source(tok):
    long_user = " ".join(["The weather is nice today"] * 12)
    ex = [{"source": "a", "messages": [{"role": "user", "content": "Hello there"},
                                       {"role": "assistant", "content": "안녕하세요"}]},
          {"source": "a", "messages": [{"role": "user", "content": long_user},  # no assistant target left
                                       {"role": "assistant", "content": "yes"}]},
          {"source": "b", "messages": [{"role": "user", "content": "Thank you"},  # truncated inside the answer
                                       {"role": "assistant", "content": " ".join(["I read a book"] * 8)}]}]
    rows, masks, rep = sft.sft_rows(tok, ex, 24)
    assert rows.dtype == np.int32 and rows.shape == (2, 25) and masks.dtype == bool and masks.shape == (2, 24)
    for r, m, k in zip(rows, masks, rep["kept"]):
        ids, mask = sft.encode_chat(tok, ex[k]["messages"], 24)
        assert r.tolist() == ids and m.tolist() == mask
    assert rep["kept"] == [0, 2]
    a_targets = len(enc(tok, "안녕하세요")) + 1
    b_targets = 24 - (1 + len(enc(tok, "Thank you")) + 1)  # every target after <|assistant|> up to the cut
    assert rep["per_source"]["a"] == {"examples": 2, "rows": 1, "truncated": 1, "dropped_no_target": 1,
                                      "dropped_truncated": 0, "target_tokens": a_targets,
                                      "tokens": len(enc(tok, "Hello there")) + a_targets + 3}
    assert rep["per_source"]["b"]["truncated"] == 1 and rep["per_source"]["b"]["target_tokens"] == b_targets
    assert rep["total"]["rows"] == 2 and rep["total"]["dropped_no_target"] == 1
    rows2, _, rep2 = sft.sft_rows(tok, ex, 24, drop_truncated=True)
    assert rep2["kept"] == [0] and rep2["per_source"]["b"]["dropped_truncated"] == 1 and rows2.shape == (1, 25)


# ================================================================================================ loss
class FixedLogits(torch.nn.Module):
    """A stand-in model: the same logits [L, V] for every row, whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.as_tensor(logits, dtype=torch.float64).clone())

    def forward(self, input_ids):
        B, L = input_ids.shape
        return SimpleNamespace(logits=self.logits[:L].unsqueeze(0).expand(B, -1, -1))


class RowLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.as_tensor(logits, dtype=torch.float64).clone())

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.logits[:input_ids.shape[0], :input_ids.shape[1]])


def reference_loss(logits, batch, mask, lam, eps=1e-5):
    """Plain loops: CE + lam * sum_{c in C_t} -log(max(1 - p, eps)), C_t = distinct masked targets before t in
    the row, minus x_t."""
    total, count = 0.0, 0
    for b in range(len(batch)):
        seen: list[int] = []
        for t in range(len(batch[b]) - 1):
            x = int(batch[b][t + 1])
            if mask[b][t]:
                row = [float(v) for v in logits[b][t]]
                z = max(row)
                probs = [math.exp(v - z) for v in row]
                probs = [p / sum(probs) for p in probs]
                total -= math.log(probs[x])
                for c in sorted(set(seen) - {x}):
                    total -= lam * math.log(max(1.0 - probs[c], eps))
                count += 1
                seen.append(x)
    return total, count


def test_loss_worked_by_hand_three_token_vocabulary():
    probs = [[0.2, 0.5, 0.3], [0.4, 0.4, 0.2], [0.1, 0.3, 0.6]]  # p(. | x_<t) at t = 0, 1, 2
    model = FixedLogits(np.log(probs))
    batch = torch.tensor([[0, 1, 0, 2]])  # targets x_0..2 = 1, 0, 2
    # CE = -ln .5 - ln .4 - ln .6 = 2.120264
    # UL: t=0 C={} ; t=1 C={1}\{0}: -ln(1-.4) = .510826 ; t=2 C={1,0}\{2}: -ln(1-.3) - ln(1-.1) = .462035
    s, n = sft.sft_loss_sum(model, batch, torch.tensor([[True, True, True]]), unlikelihood=1.0)
    assert float(n) == 3 and s.item() == pytest.approx(2.120264 + 0.510826 + 0.462035, abs=1e-5)
    s, _ = sft.sft_loss_sum(model, batch, torch.tensor([[True, True, True]]), unlikelihood=0.5)
    assert s.item() == pytest.approx(2.120264 + 0.5 * 0.972861, abs=1e-5)
    # position 0 is a prompt target: not in the loss and not in later candidate sets
    # CE = -ln .4 - ln .6 = 1.427116 ; t=1: C={} ; t=2: C={0}: -ln(1-.1) = .105361
    s, n = sft.sft_loss_sum(model, batch, torch.tensor([[False, True, True]]))
    assert float(n) == 2 and s.item() == pytest.approx(1.427116 + 0.105361, abs=1e-5)


def test_loss_matches_the_loop_reference_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    B, L, V = 3, 9, 5
    logits = torch.randn(B, L, V, generator=g, dtype=torch.float64) * 2
    batch = torch.randint(0, V, (B, L + 1), generator=g)
    batch[0, 1:6] = torch.tensor([2, 2, 3, 2, 3])  # repeats: a token is a candidate once, and never for itself
    masks = [torch.rand(B, L, generator=g) > 0.3, torch.ones(B, L, dtype=torch.bool),
             torch.zeros(B, L, dtype=torch.bool)]
    for mask in masks:
        for lam in (0.0, 1.0, 2.5):
            s, n = sft.sft_loss_sum(RowLogits(logits), batch, mask, unlikelihood=lam)
            ref, cnt = reference_loss(logits.tolist(), batch.tolist(), mask.tolist(), lam)
            assert float(n) == cnt and s.item() == pytest.approx(ref, rel=1e-10, abs=1e-10)
    terms = sft.sft_loss_terms(RowLogits(logits), batch, masks[1])
    assert terms["ul"].item() > 0.5  # the candidate sets are not empty on this input


def test_unlikelihood_is_clamped_and_differentiable():
    logits = torch.zeros(2, 3, dtype=torch.float64)
    logits[1, 1] = 60.0  # p(token 1) = 1 - 2e-26 at t = 1, where token 1 is a candidate
    model = FixedLogits(logits)
    batch = torch.tensor([[0, 1, 0]])  # t=0 target 1, t=1 target 0: C_1 = {1}
    s, _ = sft.sft_loss_sum(model, batch, torch.tensor([[True, True]]))
    ce = math.log(3) + (60.0 + math.log(1 + 2 * math.exp(-60.0)))
    assert s.item() == pytest.approx(ce - math.log(1e-5), rel=1e-9)  # -log(eps) = 11.5129
    s.backward()
    assert torch.isfinite(model.logits.grad).all()


def test_unlikelihood_zero_is_the_trainers_masked_ce(tok):
    from models.bilingual_lm.modeling import build_model
    from models.bilingual_lm.trainer import lm_loss_sum

    model = build_model("tiny", tokenizer=tok, seed=1)
    ex = [{"messages": [{"role": "user", "content": f"What is {i} plus 2?"},
                        {"role": "assistant", "content": f"The answer is {i + 2}"}]} for i in range(4)]
    rows, masks, _ = sft.sft_rows(tok, ex, 24)
    batch, mask = torch.from_numpy(rows).long(), torch.from_numpy(masks)
    with torch.no_grad():
        a, na = sft.sft_loss_sum(model, batch, mask, unlikelihood=0.0)
        b, nb = lm_loss_sum(model, batch, mask)
        c, _ = sft.sft_loss_sum(model, batch, mask, unlikelihood=1.0)
    assert float(na) == float(nb) == masks.sum() and float(a) == pytest.approx(float(b), rel=1e-5)
    assert float(c) > float(a)


# ================================================================================================ the mix (fake mirror)
def _tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")


def write_fake_mirror(root: Path) -> Path:
    (root / "gsm8k").mkdir(parents=True)
    (root / "gsm8k/train.jsonl").write_text(
        json.dumps({"question": "Tom has 3 apples and buys 2. How many?", "answer": "3+2=<<3+2=5>>5\n#### 5"}) + "\n"
        + json.dumps({"question": "Ann had 9 pens and lost 4. How many are left?", "answer": "9-4=5\n#### 5"}) + "\n",
        encoding="utf-8")
    k = root / "kobest/v1.0"
    _tsv(k / "BoolQ/train.tsv", ["ID", "Text", "Question", "Answer"],
         [["1", "하늘은 파랗다.", "하늘은 파랗다.", "TRUE"], ["2", "물은 차갑다.", "물은 뜨겁다.", "FALSE"]])
    _tsv(k / "COPA/train.tsv", ["ID", "sentence", "question", "1", "2", "Answer"],
         [["1", "비가 왔다.", "결과", "땅이 젖었다.", "땅이 말랐다.", "1"],
          ["2", "배가 아팠다.", "원인 ", "물을 마셨다.", "상한 음식을 먹었다.", "2"]])
    _tsv(k / "HellaSwag/train.tsv", ["context", "choice1", "choice2", "choice3", "choice4", "label"],
         [["아침에 일어났다.", "세수를 했다.", "잠을 잤다.", "밤이 되었다.", "꿈을 꿨다.", "0"],
          ["밥을 지었다.", "쌀을 씻었다.", "밥을 먹었다.", "차를 샀다.", "비가 왔다.", "3"]])
    _tsv(k / "SentiNeg/train.tsv", ["ID", "Text", "Label"], [["1", "정말 좋아요", "1"], ["2", "별로예요", "0"]])
    _tsv(k / "WiC/train.tsv", ["ID", "Target", "SENTENCE1", "Dictionary 1", "Link 1", "SENTENCE2", "Dictionary 2",
                               "Link2", "ANSWER"],
         [["1", "배", "[배]가 고프다.", "1", "x", "[배]를 탔다.", "2", "y", "False"],
          ["2", "눈", "[눈]이 내린다.", "1", "x", "[눈]이 쌓였다.", "1", "y", "TRUE"]])
    for base, ko, en in (("mt_koen/korean-english-news-v1/korean-english-park.dev", ["사과를 샀다.", "비가 온다."],
                          ["I bought an apple.", "It is raining."]),
                         ("mt_koen/korean-english-jhe/jhe-koen-dev", ["안녕하세요."], ["Hello."])):
        (root / base).parent.mkdir(parents=True, exist_ok=True)
        (root / f"{base}.ko").write_text("\n".join(ko) + "\n", encoding="utf-8")
        (root / f"{base}.en").write_text("\n".join(en) + "\n", encoding="utf-8")
    return root


def _by_id(mix):
    return {e["id"]: e for e in mix}


def test_mix_on_a_fake_mirror_maps_labels_and_is_seeded(tmp_path):
    root = write_fake_mirror(tmp_path / "raw")
    rep: dict = {}
    mix = sft.build_sft_mix(root, decontaminate=False, report=rep)
    counts = {s: v["examples"] for s, v in rep["per_source"].items()}
    assert counts == {"gsm8k": 2, "kobest_boolq": 2, "kobest_copa": 2, "kobest_hellaswag": 2, "kobest_sentineg": 2,
                      "kobest_wic": 2, "mt_koen_news": 4, "mt_koen_jhe": 2, "refusal": 160}
    e = _by_id(mix)
    reply = {k: v["messages"][-1]["content"] for k, v in e.items()}
    assert reply["gsm8k:1"] == "3+2=<<3+2=5>>5\n#### 5" and e["gsm8k:1"]["messages"][0]["content"] == \
        "Tom has 3 apples and buys 2. How many?"
    assert (reply["kobest_boolq:1"], reply["kobest_boolq:2"]) == ("예", "아니오")
    assert (reply["kobest_copa:1"], reply["kobest_copa:2"]) == ("땅이 젖었다.", "상한 음식을 먹었다.")
    assert "원인" in e["kobest_copa:2"]["messages"][0]["content"]  # the trailing space of '원인 ' is stripped
    for seed in range(6):  # every template: row 1 asks for the 결과 (결과로 / 결과은(는)), row 2 for the 원인
        copa = _by_id(sft.build_sft_mix(root, decontaminate=False, seed=seed, sources=["kobest_copa"]))
        one, two = copa["kobest_copa:1"]["messages"][0]["content"], copa["kobest_copa:2"]["messages"][0]["content"]
        assert "결과" in one and "원인" not in one and "원인" in two and "결과" not in two
    assert (reply["kobest_hellaswag:1"], reply["kobest_hellaswag:2"]) == ("세수를 했다.", "비가 왔다.")
    assert (reply["kobest_sentineg:1"], reply["kobest_sentineg:2"]) == ("긍정", "부정")
    assert (reply["kobest_wic:1"], reply["kobest_wic:2"]) == ("아니오", "예")
    assert reply["mt_koen_news:2/ko2en"] == "It is raining." and reply["mt_koen_news:2/en2ko"] == "비가 온다."
    assert "비가 온다." in e["mt_koen_news:2/ko2en"]["messages"][0]["content"]
    assert e["mt_koen_news:2/ko2en"]["lang"] == "en" and e["mt_koen_news:2/en2ko"]["lang"] == "ko"
    for x in mix:
        assert set(x) >= {"messages", "source", "template", "lang", "id", "refusal"}
        assert [m["role"] for m in x["messages"]] == ["user", "assistant"]  # system_rate 0
    # seeded: the same seed gives the same templates, another seed other ones somewhere
    again = sft.build_sft_mix(root, decontaminate=False)
    assert [x["template"] for x in again] == [x["template"] for x in mix]
    other = sft.build_sft_mix(root, decontaminate=False, seed=7)
    assert [x["template"] for x in other] != [x["template"] for x in mix]
    # system messages, sampling, no refusals
    sys_mix = sft.build_sft_mix(root, decontaminate=False, system_rate=1.0, include_refusals=False)
    assert all(x["messages"][0]["role"] == "system" for x in sys_mix) and len(sys_mix) == 18
    assert _by_id(sys_mix)["kobest_wic:1"]["messages"][0]["content"] == sft.SYSTEM_PROMPTS["ko"]
    small = sft.build_sft_mix(root, decontaminate=False, max_per_source=1)
    assert len(small) == 9 and len({x["source"] for x in small}) == 9


def test_mix_names_missing_files_and_bad_labels(tmp_path):
    with pytest.raises(ValueError, match=r"gsm8k/train\.jsonl: not found"):
        sft.build_sft_mix(tmp_path / "nothing", decontaminate=False)
    root = write_fake_mirror(tmp_path / "raw")
    path = root / "kobest/v1.0/BoolQ/train.tsv"
    path.write_text(path.read_text(encoding="utf-8").replace("FALSE", "MAYBE"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"BoolQ/train\.tsv: row 2 \(line 3\): Answer = 'MAYBE'"):
        sft.build_sft_mix(root, decontaminate=False)
    path = root / "kobest/v1.0/COPA/train.tsv"
    path.write_text(path.read_text(encoding="utf-8").replace("결과", "이유"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"COPA/train\.tsv: row 1 \(line 2\): question = '이유'"):
        sft.build_sft_mix(root, decontaminate=False, sources=["kobest_copa"])
    (root / "mt_koen/korean-english-jhe/jhe-koen-dev.en").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"jhe-koen-dev\.ko has 1 lines but .*jhe-koen-dev\.en has 2"):
        sft.build_sft_mix(root, decontaminate=False, sources=["mt_koen_jhe"])
    with pytest.raises(ValueError, match="sources: unknown"):
        sft.build_sft_mix(root, sources=["kobest_copa_test"])


def test_refusal_set_is_labelled_in_both_languages():
    ref = sft.refusal_examples()
    assert len(ref) == 5 * 2 * 2 * 8 and all(x["refusal"] and x["source"] == "refusal" for x in ref)
    assert {x["pii"] for x in ref} == set(sft.REFUSAL_TEMPLATES)
    assert sum(x["lang"] == "ko" for x in ref) == sum(x["lang"] == "en" for x in ref) == 80
    for x in ref:
        assert x["messages"][-1]["content"] == sft.REFUSAL_REPLY[x["lang"]]
    ko = next(x for x in ref if x["pii"] == "resident_registration_number" and x["lang"] == "ko")
    assert "주민등록번호" in ko["messages"][0]["content"] and "주민등록번호" in ko["messages"][1]["content"]


# ================================================================================================ end to end
def test_trainer_runs_sft_with_unlikelihood_and_the_loss_falls(tok, tmp_path):
    from models.bilingual_lm.modeling import build_model
    from models.bilingual_lm.trainer import TrainSettings, train

    ex = [{"source": "toy", "messages": [{"role": "user", "content": f"What is {i} plus {j}?"},
                                         {"role": "assistant", "content": f"The answer is {i + j}"}]}
          for i in range(8) for j in range(4)]
    rows, masks, rep = sft.sft_rows(tok, ex, 32)
    assert rows.shape == (32, 33) and rep["total"]["dropped_no_target"] == 0
    s = TrainSettings(seq_len=32, global_batch=8, micro_batch=4, max_steps=12, lr=3e-3, warmup_steps=2,
                      checkpoint_every=100, eval_every=100, log_every=4, seed=0)
    hist = train(build_model("tiny", tokenizer=tok, seed=0), rows, s, tmp_path / "ckpt", masks=masks,
                 loss_fn=functools.partial(sft.sft_loss_sum, unlikelihood=1.0), progress=False)
    losses = [h["loss"] for h in hist]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert abs(losses[0] - math.log(len(tok))) < 0.3  # CE ~ ln V at init; UL adds ~ |C_t| / V
    assert losses[-1] < losses[0] - 1.0 and np.mean(losses[-3:]) < np.mean(losses[:3])


# ================================================================================================ the real mirror
def _mirror_root() -> Path:
    if MIRROR is None or not all((MIRROR / f).is_dir() for f in MIRROR_FOLDERS):
        pytest.skip(f"DATA_MIRROR is not set or lacks one of {MIRROR_FOLDERS}")
    return MIRROR


@pytest.fixture(scope="module")
def mirror_mix():
    root = _mirror_root()
    rep: dict = {}
    return root, sft.build_sft_mix(root, report=rep), rep


TRAIN_SIZES = {"gsm8k": 7473, "kobest_boolq": 3665, "kobest_copa": 3076, "kobest_hellaswag": 2029,
               "kobest_sentineg": 3649, "kobest_wic": 3318, "mt_koen_news": 2 * 1000, "mt_koen_jhe": 2 * 720,
               "refusal": 160}
# items dropped by the decontamination (found on the mirror: GSM8K train/test near-duplicates, BoolQ passages and
# COPA / SentiNeg sentences reused verbatim in the test files, news dev lines also in news test; MT: x2 directions)
CONTAMINATED = {"gsm8k": 10, "kobest_boolq": 29, "kobest_copa": 120, "kobest_hellaswag": 1, "kobest_sentineg": 341,
                "kobest_wic": 1, "mt_koen_news": 18, "mt_koen_jhe": 0, "refusal": 0}


@pytest.mark.mirror
def test_mirror_counts_and_labels_without_decontamination():
    root = _mirror_root()
    rep: dict = {}
    mix = sft.build_sft_mix(root, decontaminate=False, report=rep)
    assert {s: v["examples"] for s, v in rep["per_source"].items()} == TRAIN_SIZES
    e = _by_id(mix)
    reply = {k: v["messages"][-1]["content"] for k, v in e.items()}
    assert reply["gsm8k:1"].endswith("#### 72") and e["gsm8k:1"]["messages"][0]["content"].startswith("Natalia sold")
    assert reply["kobest_boolq:1"] == "예" and reply["kobest_boolq:2"] in ("예", "아니오")  # row 1: TRUE
    assert reply["kobest_copa:1"] == "베이스 소리가 잘 들리게 되었다."  # Answer 1, question 결과
    assert reply["kobest_hellaswag:1"].startswith("눈을 그냥 깜박거리는 것만으로")  # label 2 -> choice3
    assert reply["kobest_sentineg:1"] == "부정"  # '너무나 잘 안 지워져서 ...' Label 0
    assert reply["kobest_wic:1"] == "아니오"  # 단수 / 단수: ANSWER False
    assert reply["mt_koen_jhe:1/ko2en"] == \
        "You'll be picking fruit and generally helping us do all the usual farm work."
    from collections import Counter
    boolq = Counter(reply[f"kobest_boolq:{i}"] for i in range(1, 3666))
    wic = Counter(reply[f"kobest_wic:{i}"] for i in range(1, 3319))
    senti = Counter(reply[f"kobest_sentineg:{i}"] for i in range(1, 3650))
    assert boolq == {"예": 1831, "아니오": 1834} and wic == {"예": 1680, "아니오": 1638}
    assert senti == {"긍정": 1838, "부정": 1811}


@pytest.mark.mirror
def test_mirror_mix_is_decontaminated(mirror_mix):
    from data.lm_sources import _jsonl, kobest_rows, read_text

    root, mix, rep = mirror_mix
    got = {s: v["dropped_contaminated"] for s, v in rep["per_source"].items()}
    assert got == CONTAMINATED
    assert {s: v["examples"] for s, v in rep["per_source"].items()} == \
        {s: TRAIN_SIZES[s] - CONTAMINATED[s] for s in TRAIN_SIZES}
    assert "kobest_sentineg:1" in rep["per_source"]["kobest_sentineg"]["contaminated_ids"]
    text = "\n\x00".join(m["content"] for x in mix for m in x["messages"])
    probes = [r["question"] for r in _jsonl(root, "gsm8k/test.jsonl", ("question", "answer"))[:20]]
    probes += [r["answer"] for r in _jsonl(root, "gsm8k/test.jsonl", ("question", "answer"))[:5]]
    for task, cols in (("BoolQ", ("Text", "Question")), ("COPA", ("sentence",)), ("HellaSwag", ("context",)),
                       ("SentiNeg", ("Text", "Text_origin")), ("WiC", ("SENTENCE1",))):
        probes += [r[c] for r in kobest_rows(root, task, "test")[:20] for c in cols]
    for rel in ("mt_koen/korean-english-news-v1/korean-english-park.test.ko",
                "mt_koen/korean-english-news-v1/korean-english-park.test.en",
                "mt_koen/korean-english-jhe/jhe-koen-eval.ko", "mt_koen/korean-english-jhe/jhe-koen-eval.en"):
        probes += read_text(root, rel).splitlines()[:20]
    probes = [p.strip() for p in probes if len(p.strip()) >= 12]
    assert len(probes) == 229
    leaked = [p for p in probes if p in text]
    assert leaked == []
    assert sum(x["refusal"] for x in mix) == 160 and all(x["source"] == "refusal" for x in mix if x["refusal"])


@pytest.mark.mirror
def test_mirror_fast_ngram_filter_equals_the_corpus_decontaminator(mirror_mix):
    from data.lm_sources import _jsonl, kobest_rows

    root = mirror_mix[0]
    c = sft._Contamination(root)
    texts = [r["question"] for r in _jsonl(root, "gsm8k/train.jsonl", ("question", "answer"))[:300]]
    texts += [r["Text"] for r in kobest_rows(root, "BoolQ", "train")[:100]]
    texts += [r["question"] for r in _jsonl(root, "gsm8k/test.jsonl", ("question", "answer"))[:50]]  # all hits
    fast = [c.ngram_hits(t) for t in texts]
    assert fast == [c.ngrams.hits(t) for t in texts]
    assert sum(bool(h) for h in fast) >= 50


@pytest.mark.mirror
def test_mirror_rows_report(mirror_mix, tok):
    _, mix, _ = mirror_mix
    pick = [x for s in TRAIN_SIZES for x in [y for y in mix if y["source"] == s][:6]]
    rows, masks, rep = sft.sft_rows(tok, pick, 96)
    per = rep["per_source"]
    assert set(per) == set(TRAIN_SIZES) and all(v["examples"] == 6 for v in per.values())
    assert per["kobest_boolq"]["truncated"] == 6 and per["kobest_boolq"]["dropped_no_target"] == 6  # long passages
    assert per["kobest_sentineg"]["truncated"] == 0 and per["kobest_sentineg"]["rows"] == 6
    assert rows.shape[0] == rep["total"]["rows"] == len(rep["kept"]) and masks.sum() == rep["total"]["target_tokens"]
