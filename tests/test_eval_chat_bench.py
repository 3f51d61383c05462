"""MT-Bench / LogicKor (``eval_harness.chat_bench``): loaders, two-turn generation on a tiny random Llama with a chat
template, bad input, and judging against a local stub of an OpenAI-compatible endpoint (127.0.0.1, ephemeral port).

Nothing here talks to a real judge: the stub returns canned judge outputs, and the no-judge test makes sure no request
is made at all and no score appears.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from eval_harness import chat_bench as cb
from eval_harness.data import TaskDataError
from tests.conftest import mirror_dir

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
TEXTS = ["Compose an engaging travel blog post about a trip to Hawaii. Rewrite your previous response.",
         "민수에게는 빨간색 셔츠 한 벌과 노란색 셔츠 다섯 벌이 있어. 다음 질문에 답해 주세요.",
         "Solve the equation 3x + 2 = 11 step by step; what is x? def f(x): return x * 2"] * 40
MAX_NEW = 8


def _root() -> Path:
    return mirror_dir("chat_bench").parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(chat model dir, model, tokenizer, dir without a chat template)."""
    import torch

    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    from eval_harness.tiny import build_tiny_lm

    base = tmp_path_factory.mktemp("chat_tiny")
    plain = build_tiny_lm(base / "plain", TEXTS, vocab_size=400, max_position_embeddings=256)
    chat = base / "chat"
    shutil.copytree(plain, chat)
    tok = AutoTokenizer.from_pretrained(str(chat))
    tok.chat_template = TEMPLATE
    tok.save_pretrained(str(chat))
    model, tokenizer = cb.load_model(chat)
    return chat, model, tokenizer, plain


# ---------------------------------------------------------------------------------------------- judge stub server
@contextmanager
def judge_stub(responder):
    """A chat-completions stub on 127.0.0.1:<ephemeral>; ``responder(body, n) -> (status, content[, delay_s])``.
    Yields ``(base_url, seen)`` with every request (path, JSON body, Authorization header); always shut down."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode("utf-8"))
            seen.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            status, content, *delay = responder(body, len(seen))
            if delay:
                time.sleep(delay[0])
            payload = ({"id": f"c{len(seen)}", "object": "chat.completion", "model": f"{body['model']}-0613",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                     "finish_reason": "stop"}]} if status == 200 else {"error": {"message": content}})
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and went away
                pass

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_env_judge(monkeypatch):
    for k in (cb.ENV_URL, cb.ENV_MODEL, cb.ENV_KEY):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _client(url, **kw):
    kw.setdefault("timeout", 5.0)
    kw.setdefault("retry_sleep", 0.0)
    return cb.JudgeClient(url, "judge-test", **kw)


# ------------------------------------------------------------------------------------------------------ loaders
@pytest.mark.mirror
def test_mirror_loaders():
    root = _root()
    mt = cb.mt_bench_questions(root)
    assert len(mt) == 80 and {q["category"] for q in mt} == {"writing", "roleplay", "reasoning", "math", "coding",
                                                             "extraction", "stem", "humanities"}
    assert all(len(q["turns"]) == 2 for q in mt)
    with_ref = [q for q in mt if q["references"] is not None]
    assert len(with_ref) == 30 and {q["category"] for q in with_ref} == set(cb.NEED_REF_CATS)
    q111 = next(q for q in mt if q["question_id"] == 111)
    ref_lines = (root / "chat_bench" / cb.MT_BENCH_REFERENCES).read_text(encoding="utf-8").splitlines()
    ref_line = next(json.loads(x) for x in ref_lines if json.loads(x)["question_id"] == 111)
    assert q111["references"] == ref_line["choices"][0]["turns"]
    prompts = cb.mt_bench_judge_prompts(root)
    assert set(cb.MT_BENCH_PROMPTS.values()) <= set(prompts) and len(prompts) == 8
    assert "{ref_answer_1}" in prompts["single-math-v1"]["prompt_template"]
    lk = cb.logickor_questions(root)
    assert len(lk) == 42 and len({q["category"] for q in lk}) == 6
    assert all(len(q["turns"]) == 2 and len(q["references"]) == 2 for q in lk)
    q3 = next(q for q in lk if q["question_id"] == 3)
    assert len(q3["unused_turns"]) == 1 and q3["references"] == ["다섯 벌", None]  # the file's 3-question item


def _write(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines),
                    encoding="utf-8")
    return path


def _fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    d = root / "chat_bench"
    _write(d / cb.MT_BENCH_QUESTIONS, [
        {"question_id": 1, "category": "writing", "turns": ["Write a haiku.", "Now in Korean."]},
        {"question_id": 2, "category": "math", "turns": ["What is 2+2?", "And 3+3?"]}])
    _write(d / cb.MT_BENCH_REFERENCES, [{"question_id": 2, "choices": [{"index": 0, "turns": ["4", "6"]}]}])
    _write(d / cb.LOGICKOR_QUESTIONS, [
        {"id": 1, "category": "수학(Math)", "questions": ["2+2는?", "3+3은?"], "references": ["4", None]}])
    return root


def test_loader_errors(tmp_path):
    root = _fake_root(tmp_path)
    d = root / "chat_bench"
    assert [q["references"] for q in cb.mt_bench_questions(root)] == [None, ["4", "6"]]
    assert cb.logickor_questions(root)[0]["turns"] == ["2+2는?", "3+3은?"]

    with pytest.raises(TaskDataError, match=r"mt_bench: .*mt_bench_question\.jsonl: file not found"):
        cb.mt_bench_questions(tmp_path / "nowhere")
    with pytest.raises(TaskDataError, match=r"logickor: .*logickor_questions\.jsonl: file not found"):
        cb.logickor_questions(tmp_path / "nowhere")

    _write(d / cb.MT_BENCH_QUESTIONS, [{"question_id": 1, "category": "writing", "turns": ["a", "b"]}, "{not json"])
    with pytest.raises(TaskDataError, match=r"mt_bench: .*mt_bench_question\.jsonl:2: not valid JSON"):
        cb.mt_bench_questions(root)
    _write(d / cb.MT_BENCH_QUESTIONS, [{"question_id": 1, "category": "writing"}])
    with pytest.raises(TaskDataError, match=r"mt_bench: .*mt_bench_question\.jsonl:1: missing field 'turns'"):
        cb.mt_bench_questions(root)
    _write(d / cb.MT_BENCH_QUESTIONS, [{"question_id": 1, "turns": ["a", "b"]}])
    with pytest.raises(TaskDataError, match=r"missing field 'category'"):
        cb.mt_bench_questions(root)
    _write(d / cb.MT_BENCH_QUESTIONS, [{"question_id": 1, "category": "writing", "turns": ["a", "b", "c"]}])
    with pytest.raises(TaskDataError, match=r":1: field 'turns' has 3 turns, expected exactly 2"):
        cb.mt_bench_questions(root)
    _write(d / cb.MT_BENCH_QUESTIONS, [{"question_id": 7, "category": "coding", "turns": ["a", "b"]}])
    with pytest.raises(TaskDataError, match=r"mt_bench_reference_answer_gpt4\.jsonl: no reference answer for "
                                            r"question_id 7"):
        cb.mt_bench_questions(root)
    assert cb.mt_bench_questions(root, with_references=False)[0]["references"] is None
    _write(d / cb.MT_BENCH_REFERENCES, [{"question_id": 7}])
    with pytest.raises(TaskDataError, match=r"mt_bench_reference_answer_gpt4\.jsonl:1: missing field 'choices'"):
        cb.mt_bench_questions(root)

    _write(d / cb.LOGICKOR_QUESTIONS, [{"id": 1, "category": "문법(Grammar)", "references": [None, None]}])
    with pytest.raises(TaskDataError, match=r"logickor: .*logickor_questions\.jsonl:1: missing field 'questions'"):
        cb.logickor_questions(root)
    _write(d / cb.LOGICKOR_QUESTIONS, [{"id": 1, "category": "문법(Grammar)", "questions": ["only one"],
                                        "references": [None, None]}])
    with pytest.raises(TaskDataError, match=r"field 'questions' has 1 turns, expected at least 2"):
        cb.logickor_questions(root)
    _write(d / cb.LOGICKOR_QUESTIONS, [{"id": 1, "category": "x", "questions": ["a", "b"]}])
    with pytest.raises(TaskDataError, match=r"missing field 'references'"):
        cb.logickor_questions(root)

    _write(d / cb.MT_BENCH_JUDGE_PROMPTS, [{"name": "single-v1", "type": "single", "system_prompt": "s",
                                            "prompt_template": "{question}{answer}", "output_format": "[[rating]]"}])
    with pytest.raises(TaskDataError, match=r"mt_bench_judge_prompts\.jsonl: no judge prompt named 'single-math-v1'"):
        cb.mt_bench_judge_prompts(root)


# --------------------------------------------------------------------------------------------------- generation
@pytest.mark.mirror
def test_generate_two_turns_greedy(tiny):
    chat, model, tok, _ = tiny
    root = _root()
    mt = cb.mt_bench_questions(root)
    questions = [mt[0], next(q for q in mt if q["category"] == "math")] + cb.logickor_questions(root)[:2]
    recs = cb.generate_answers(model, tok, questions, max_new_tokens=MAX_NEW, model_path=chat, progress=False)
    again = cb.generate_answers(model, tok, questions, max_new_tokens=MAX_NEW, model_path=chat, progress=False)
    assert recs == again  # greedy: two runs, identical records
    assert [r["bench"] for r in recs] == ["mt_bench", "mt_bench", "logickor", "logickor"]
    sha = hashlib.sha256((chat / "tokenizer.json").read_bytes()).hexdigest()
    for q, r in zip(questions, recs):
        assert r["question_id"] == q["question_id"] and r["category"] == q["category"] and r["turns"] == q["turns"]
        assert len(r["answers"]) == len(r["prompts"]) == len(r["tokens_generated"]) == len(r["truncated"]) == 2
        assert all(1 <= n <= MAX_NEW for n in r["tokens_generated"])
        u1, u2 = q["turns"]
        assert r["prompts"][0] == tok.apply_chat_template([{"role": "user", "content": u1}],
                                                          add_generation_prompt=True, tokenize=False)
        conv = [{"role": "user", "content": u1}, {"role": "assistant", "content": r["answers"][0]},
                {"role": "user", "content": u2}]
        assert r["prompts"][1] == tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        assert f"<|assistant|>{r['answers'][0]}</s><|user|>{u2}" in r["prompts"][1]  # the turn-1 answer is in turn 2
        assert r["truncated"] == [n > r["max_length"] - MAX_NEW for n in r["prompt_tokens"]]
        assert r["input_tokens"] == [min(n, r["max_length"] - MAX_NEW) for n in r["prompt_tokens"]]
        assert r["add_special_tokens"] == [False, False]  # the template writes BOS itself: no second BOS
        assert r["decoding"]["do_sample"] is False and r["decoding"]["temperature"] == 0.0
        assert r["decoding"]["max_new_tokens"] == MAX_NEW and r["decoding"]["eos_token_ids"] == [tok.eos_token_id]
        assert r["model"] == str(chat) and r["tokenizer_sha256"] == sha and r["max_length"] == 256
        assert r["references"] == q["references"]
    assert recs[2]["decoding"]["stop_strings"] == list(cb.LOGICKOR_STOP_STRINGS)
    assert recs[0]["decoding"]["stop_strings"] == []
    assert any(any(r["truncated"]) for r in recs)  # the long LogicKor prompts exceed 256 - 8 tokens


def test_generate_synthetic_and_sampling(tiny, tmp_path):
    chat, model, tok, _ = tiny
    qs = cb.mt_bench_questions(_fake_root(tmp_path))
    a = cb.generate_answers(model, tok, qs, max_new_tokens=4, sampling="fastchat", seed=3, progress=False)
    b = cb.generate_answers(model, tok, qs, max_new_tokens=4, sampling="fastchat", seed=3, progress=False)
    assert a == b  # seeded per question, as FastChat's torch.manual_seed(i)
    assert a[0]["decoding"]["do_sample"] is True and a[0]["decoding"]["temperature"] == 0.7  # writing
    assert a[1]["decoding"]["do_sample"] is False and a[1]["decoding"]["temperature"] == 0.0  # math: greedy
    assert a[1]["answers"] == cb.generate_answers(model, tok, qs[1:], max_new_tokens=4, progress=False)[0]["answers"]
    # prefix messages (a system prompt / LogicKor's few-shot strategies) go before the first user turn
    r = cb.generate_answers(model, tok, qs[:1], max_new_tokens=4, prefix_messages=[
        {"role": "system", "content": "Be brief."}], progress=False)[0]
    assert r["prompts"][0] == "<s><|system|>Be brief.</s><|user|>Write a haiku.</s><|assistant|>"
    assert r["prefix_messages"] == [{"role": "system", "content": "Be brief."}]
    # stop strings: the text is cut at the first one and the turn says so
    greedy = cb.generate_answers(model, tok, qs[:1], max_new_tokens=MAX_NEW, progress=False)[0]["answers"][0]
    stop = next(c for c in greedy[1:] if c.isascii() and c.isprintable() and not c.isspace())
    r = cb.generate_answers(model, tok, qs[:1], max_new_tokens=MAX_NEW, stop_strings=[stop], progress=False)[0]
    assert r["answers"][0] == greedy[: greedy.find(stop)].strip() and r["stop_reasons"][0] == "stop_string"
    assert r["decoding"]["stop_strings"] == [stop]
    # a left-truncated prompt: a window too small for the conversation
    long_q = [{**qs[0], "turns": ["word " * 400, "again " * 10]}]
    r = cb.generate_answers(model, tok, long_q, max_new_tokens=4, progress=False)[0]
    assert r["truncated"] == [True, True] and r["input_tokens"] == [252, 252] and r["prompt_tokens"][0] > 252


def test_generation_errors(tiny, tmp_path):
    chat, model, tok, plain = tiny
    qs = cb.mt_bench_questions(_fake_root(tmp_path))
    lk = cb.logickor_questions(_fake_root(tmp_path))
    with pytest.raises(ValueError, match=r"max_new_tokens=256 must be less than the model's max length 256"):
        cb.generate_answers(model, tok, qs, max_new_tokens=256, progress=False)
    with pytest.raises(ValueError, match=r"max_new_tokens must be a positive int"):
        cb.generate_answers(model, tok, qs, max_new_tokens=0, progress=False)
    with pytest.raises(ValueError, match=r"sampling='fastchat' is MT-Bench's"):
        cb.generate_answers(model, tok, lk, max_new_tokens=4, sampling="fastchat", progress=False)
    with pytest.raises(ValueError, match=r"sampling must be 'greedy' or 'fastchat'"):
        cb.generate_answers(model, tok, qs, max_new_tokens=4, sampling="beam", progress=False)
    # no chat template: the message names the model directory; an explicit template string is accepted instead
    with pytest.raises(ValueError, match=re.escape(f"{plain}: the tokenizer has no chat template")):
        cb.load_model(plain)
    with pytest.raises(ValueError, match=re.escape(f"{plain}: the tokenizer has no chat template")):
        cb.generate_answers_from_dir(plain, qs, max_new_tokens=4, progress=False)
    recs = cb.generate_answers_from_dir(plain, qs[:1], max_new_tokens=4, chat_template=TEMPLATE, progress=False)
    assert recs[0]["model"] == str(plain) and recs[0]["prompts"][0].startswith("<s><|user|>Write a haiku.")
    from eval_harness.engine import ModelLoadError

    with pytest.raises(ModelLoadError, match="unknown dtype 'float8'"):
        cb.load_model(chat, dtype="float8")


# -------------------------------------------------------------------------------------------------------- judging
def test_parsers():
    p = cb.parse_mt_bench_rating
    assert p("Rating: [[7]]") == 7 and p("[[8.5]]") == 8.5 and p("I give it [6].") == 6
    assert p("[[10]] though [3]") == 10 and p("Rating: seven") == -1 and p("") == -1 and p(None) == -1
    assert cb.parse_logickor_score("평가: 좋은 답변이다.\n**점수:** 8") == (8.0, "좋은 답변이다.")
    assert cb.parse_logickor_score("점수: 6.5")[0] == 6.5
    assert cb.parse_logickor_score("score 9") == (None, "No judge message found")


def _answer_records(questions):
    return [{"bench": q["bench"], "question_id": q["question_id"], "category": q["category"], "turns": q["turns"],
             "answers": [f"A1 of {q['question_id']}", f"A2 of {q['question_id']}"], "references": q["references"],
             "model": "tiny"} for q in questions]


@pytest.mark.mirror
def test_mt_bench_judge_stub():
    root = _root()
    mt = cb.mt_bench_questions(root)
    q_w, q_m = next(q for q in mt if q["question_id"] == 81), next(q for q in mt if q["question_id"] == 111)
    prompts = cb.mt_bench_judge_prompts(root)
    canned = {"single-v1": "Rating: [[7]]", "single-v1-multi-turn": "ok [9]", "single-math-v1": "Rating: [[4]]",
              "single-math-v1-multi-turn": "no rating at all"}
    asked = {}

    def respond(body, n):  # which FastChat template the request was built from, told by its text
        user = body["messages"][1]["content"]
        multi = user.startswith("<|The Start of")
        ref = "Reference Answer" in user
        name = cb.MT_BENCH_PROMPTS[(ref, multi)]
        assert body["messages"][0]["content"] == prompts[name]["system_prompt"]
        asked[n] = name
        return 200, canned[name]

    with judge_stub(respond) as (url, seen):
        client = _client(url, api_key="sk-test")
        js = cb.judge("mt_bench", _answer_records([q_w, q_m]), client, judge_prompts=prompts, progress=False)
    assert len(seen) == 4 and all(s["path"] == "/v1/chat/completions" for s in seen)
    assert all(s["auth"] == "Bearer sk-test" for s in seen)
    for s in seen:
        b = s["body"]
        assert b["model"] == "judge-test" and b["temperature"] == 0 and b["n"] == 1 and b["max_tokens"] == 2048
        assert [m["role"] for m in b["messages"]] == ["system", "user"]
    assert [(j["question_id"], j["turn"], j["judge_prompt"]) for j in js] == [
        (81, 1, "single-v1"), (81, 2, "single-v1-multi-turn"), (111, 1, "single-math-v1"),
        (111, 2, "single-math-v1-multi-turn")]
    assert [j["judge_prompt"] for j in js] == [asked[i] for i in (1, 2, 3, 4)]
    math1, math2 = seen[2]["body"]["messages"][1]["content"], seen[3]["body"]["messages"][1]["content"]
    ref1, ref2 = q_m["references"]
    assert f"[The Start of Reference Answer]\n{ref1}\n[The End of Reference Answer]" in math1
    assert f"### Reference answer:\n{ref2}" in math2 and "A2 of 111" in math2
    assert "Reference" not in seen[0]["body"]["messages"][1]["content"]
    assert seen[0]["body"]["messages"][1]["content"] == prompts["single-v1"]["prompt_template"].format(
        question=q_w["turns"][0], answer="A1 of 81")
    assert [j["score"] for j in js] == [7, 9, 4, -1] and [j["parsed"] for j in js] == [True, True, True, False]
    for j in js:
        assert j["judge_model"] == "judge-test" and j["judge_model_reported"] == "judge-test-0613"
        assert j["temperature"] == 0 and j["judgment"] in canned.values() and j["error"] is None
    s = cb.mt_bench_scores(js)
    assert s["turn_1"] == 5.5 and s["turn_2"] == 9 and s["overall"] == pytest.approx(20 / 3)
    assert s["n_judged"] == {"turn_1": 2, "turn_2": 1} and s["n_excluded"] == 1
    assert s["per_category"] == {"math": 4, "writing": 8}


def test_logickor_judge_stub(tmp_path):
    qs = cb.logickor_questions(_fake_root(tmp_path)) + [
        {"bench": "logickor", "question_id": 2, "category": "글쓰기(Writing)", "turns": ["시를 써라.", "더 짧게."],
         "references": [None, None], "unused_turns": []}]

    def respond(body, n):
        user = body["messages"][1]["content"]
        if "시를 써라." in user:
            return 200, "평가: 알 수 없음"  # never a score: re-asked, then -1
        if "**Follow-up Question.**" in user:
            return 200, "평가: 후속 답변이 맞다.\n점수: 6.5"
        return 200, "**평가:** 정확하다.\n**점수:** 8"

    recs = _answer_records(qs)
    with judge_stub(respond) as (url, seen):
        js = cb.judge("logickor", recs, _client(url), parse_retries=2, progress=False)
        n_first = len(seen)
        zero = cb.judge("logickor", recs[1:], _client(url), parse_retries=0, logickor_unparsable_zero=True,
                        progress=False)
    assert n_first == 2 + 2 * 3  # question 2: each turn asked 1 + parse_retries times
    b0 = seen[0]["body"]
    assert b0["model"] == "judge-test" and b0["temperature"] == 0 and "max_tokens" not in b0
    assert b0["messages"][0] == {"role": "system", "content": cb.LOGICKOR_JUDGE_TEMPLATE["single_turn"]}
    assert seen[1]["body"]["messages"][0]["content"] == cb.LOGICKOR_JUDGE_TEMPLATE["multi_turn"]
    u0, u1 = b0["messages"][1]["content"], seen[1]["body"]["messages"][1]["content"]
    assert u0 == ("아래의 내용을 주어진 평가 기준들을 충실히 반영하여 평가해라. 특히 모델 답변이 언어 요구사항을 준수하는지 반드시 "
                  "확인해야 한다.\n\n**Question**\n2+2는?\n\n**Additional Reference**\n4\n\n**Model's Response**\nA1 of 1"
                  "\n\n[[대화 종료. 평가 시작.]]")
    assert u1.endswith("**Follow-up Question.**\n3+3은?\n\n**Model's Response**\nA2 of 1\n\n[[대화 종료. 평가 시작.]]")
    assert u1.count("**Additional Reference**") == 1  # the second reference is null
    assert "**Additional Reference**" not in seen[2]["body"]["messages"][1]["content"]
    assert [(j["question_id"], j["turn"], j["score"]) for j in js] == [(1, 1, 8.0), (1, 2, 6.5), (2, 1, -1), (2, 2, -1)]
    assert js[0]["judge_message"] == "정확하다." and js[0]["judge_prompt"] == "logickor-single_turn"
    assert js[2]["attempts"] == 3 and js[2]["parsed"] is False and js[2]["judgment"] == "평가: 알 수 없음"
    s = cb.logickor_scores(js)
    assert s["per_category"]["수학(Math)"] == {"single": 8.0, "multi": 6.5, "mean": 7.25}
    assert s["per_category"].get("글쓰기(Writing)") is None and s["n_excluded"] == 2
    assert s["single"] == 8.0 and s["multi"] == 6.5 and s["overall"] == 7.25
    assert [j["score"] for j in zero] == [0.0, 0.0]  # LogicKor's own fallback, on request
    assert cb.logickor_scores(zero)["overall"] == 0.0


def test_judge_retries_timeout_and_fatal_status():
    rec = _answer_records([{"bench": "logickor", "question_id": 1, "category": "c", "turns": ["q1", "q2"],
                            "references": [None, None]}])
    state = {"fail": 2}

    def flaky(body, n):
        if state["fail"] > 0:
            state["fail"] -= 1
            return 503, "busy"
        return 200, "점수: 9"

    with judge_stub(flaky) as (url, seen):
        js = cb.judge("logickor", rec, _client(url, max_retries=3), progress=False)
    assert len(seen) == 4 and js[0]["attempts"] == 3 and [j["score"] for j in js] == [9.0, 9.0]

    with judge_stub(lambda body, n: (500, "down")) as (url, seen):
        js = cb.judge("logickor", rec, _client(url, max_retries=1), progress=False)
    assert len(seen) == 4 and [j["score"] for j in js] == [-1, -1]  # bounded: 2 attempts per turn, then -1
    assert "no answer after 2 attempt(s): HTTP 500" in js[0]["error"] and js[0]["judgment"] is None
    assert cb.logickor_scores(js)["overall"] is None

    with judge_stub(lambda body, n: (200, "점수: 5", 1.0)) as (url, seen):  # slower than the client's timeout
        t0 = time.perf_counter()
        with pytest.raises(cb.JudgeError, match=r"no answer after 2 attempt\(s\): .*timed out"):
            _client(url, timeout=0.3, max_retries=1).chat([{"role": "user", "content": "x"}])
        assert time.perf_counter() - t0 < 3 and len(seen) == 2

    with judge_stub(lambda body, n: (401, "bad key")) as (url, seen):
        with pytest.raises(cb.JudgeConfigError, match=r"HTTP 401"):
            cb.judge("logickor", rec, _client(url, max_retries=3), progress=False)
    assert len(seen) == 1  # not retried


def test_judge_config(monkeypatch):
    assert cb.judge_client_from_env() is None
    monkeypatch.setenv(cb.ENV_URL, "http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match=r"judge half-configured: EVAL_JUDGE_MODEL"):
        cb.judge_client_from_env()
    monkeypatch.setenv(cb.ENV_MODEL, "gpt-4-0613")
    c = cb.judge_client_from_env()
    assert c.url == "http://127.0.0.1:9/v1/chat/completions" and c.model == "gpt-4-0613"
    assert c.config()["temperature"] == 0 and c.config()["api_key_set"] is False
    assert cb.judge_client_from_env(url="https://x.test/v1/chat/completions", model="m").url == \
        "https://x.test/v1/chat/completions"
    with pytest.raises(ValueError, match="http"):
        cb.JudgeClient("ftp://x", "m")


# ------------------------------------------------------------------------------------------------ whole runs
@pytest.mark.mirror
def test_run_without_judge_makes_no_request(tiny, tmp_path, monkeypatch):
    chat, model, tok, _ = tiny

    def no_judge(*a, **k):
        raise AssertionError("judge() called without a configured judge")

    def no_http(*a, **k):
        raise AssertionError("an HTTP request was made")

    monkeypatch.setattr(cb, "judge", no_judge)
    monkeypatch.setattr(urllib.request, "urlopen", no_http)
    res = cb.run_chat_bench("mt_bench", root=_root(), model_dir=chat, limit=2, max_new_tokens=MAX_NEW,
                            progress=False, out_dir=tmp_path / "out")
    assert res["judge"] is None and res["judgements"] is None and res["scores"] is None
    assert res["config"]["judge"] is None and res["config"]["question_ids"] == [81, 82]
    assert res["config"]["tokenizer_sha256"] == hashlib.sha256((chat / "tokenizer.json").read_bytes()).hexdigest()
    assert res["config"]["dtype"] == "float32" and res["config"]["sampling"] == "greedy"
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["answers_mt_bench.jsonl", "results_mt_bench.json"]
    summary = json.loads((tmp_path / "out" / "results_mt_bench.json").read_text(encoding="utf-8"))
    assert summary["scores"] is None and summary["judge"] is None
    lines = (tmp_path / "out" / "answers_mt_bench.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["question_id"] for x in lines] == [81, 82]


@pytest.mark.mirror
def test_run_with_env_judge_and_shared_folder(tiny, tmp_path, monkeypatch):
    chat, model, tok, _ = tiny
    out = tmp_path / "out"
    cb.run_chat_bench("mt_bench", root=_root(), model=model, tokenizer=tok, model_dir=chat, question_ids=[111],
                      max_new_tokens=MAX_NEW, progress=False, out_dir=out)
    with judge_stub(lambda body, n: (200, "평가: 보통.\n점수: 5")) as (url, seen):
        monkeypatch.setenv(cb.ENV_URL, url)
        monkeypatch.setenv(cb.ENV_MODEL, "judge-env")
        res = cb.run_chat_bench("logickor", root=_root(), model=model, tokenizer=tok, model_dir=chat, limit=1,
                                max_new_tokens=MAX_NEW, judge_max_retries=0, judge_parallel=2, progress=False,
                                out_dir=out)
    assert len(seen) == 2 and {s["body"]["model"] for s in seen} == {"judge-env"}
    assert res["judge"]["model"] == "judge-env" and res["judge"]["models_reported"] == ["judge-env-0613"]
    assert res["judge"]["prompts"] == ["logickor-multi_turn", "logickor-single_turn"]
    assert res["scores"]["overall"] == 5.0 and res["scores"]["per_category"]["추론(Reasoning)"]["mean"] == 5.0
    assert len(res["judgements"]) == 2 and res["judgements"][0]["user_prompt"].endswith("[[대화 종료. 평가 시작.]]")
    assert sorted(p.name for p in out.iterdir()) == ["answers_logickor.jsonl", "answers_mt_bench.jsonl",
                                                     "judgements_logickor.jsonl", "results_logickor.json",
                                                     "results_mt_bench.json"]
    js = [json.loads(x) for x in (out / "judgements_logickor.jsonl").read_text(encoding="utf-8").splitlines()]
    assert js == res["judgements"]


# --------------------------------------------------------------------------------------- through the harness API
@pytest.mark.mirror
def test_chat_tasks_through_evaluate_unjudged_then_judged(tiny, tmp_path, monkeypatch):
    from eval_harness.evaluate import evaluate

    chat, *_ = tiny
    out = evaluate(chat, ["mt_bench", "logickor"], data_root=_root(), limit=2, gen_kwargs={"max_gen_toks": MAX_NEW},
                   out_dir=tmp_path / "a")
    assert out["results"]["mt_bench"] == {"n": 2, "judge": None}  # answers, no score without a judge
    recs = out["samples"]["logickor"]
    assert len(recs) == 2 and all(len(r["answers"]) == 2 and r["judgements"] is None for r in recs)
    assert all(n <= MAX_NEW for r in recs for n in r["tokens_generated"])
    assert "| mt_bench | 2 |" in (tmp_path / "a" / "results.md").read_text()
    with judge_stub(lambda body, n: (200, "Rating: [[6]]")) as (url, seen):
        monkeypatch.setenv(cb.ENV_URL, url)
        monkeypatch.setenv(cb.ENV_MODEL, "judge-env")
        judged = evaluate(chat, ["mt_bench"], data_root=_root(), limit=2, gen_kwargs={"max_gen_toks": MAX_NEW})
    r = judged["results"]["mt_bench"]
    assert len(seen) == 4 and r["judge"] == "judge-env" and r["overall"] == r["turn_1"] == r["turn_2"] == 6.0
    first = judged["samples"]["mt_bench"][0]
    assert [j["turn"] for j in first["judgements"]] == [1, 2] and first["answers"] == out["samples"]["mt_bench"][0]["answers"]
    with pytest.raises(TaskDataError, match="takes no few-shot examples"):
        evaluate(chat, ["logickor"], data_root=_root(), num_fewshot=1)
