"""MT-Bench and LogicKor: two-turn chat answers from a local HF model, judged only when a judge endpoint is configured.

Data (mirror ``<root>/chat_bench/``): ``mt_bench_question.jsonl`` (80 questions, FastChat @ 0e6d3e4),
``mt_bench_judge_prompts.jsonl`` (FastChat's judge prompt templates), ``mt_bench_reference_answer_gpt4.jsonl`` (the 30
GPT-4 reference answers for math, reasoning and coding) and ``logickor_questions.jsonl`` (42 questions, LogicKor @
11c3a84). Every problem with them is a :class:`~eval_harness.data.TaskDataError` naming the task, the file (and line)
and the field, raised before a model is loaded.

**Faithful to FastChat** (``fastchat/llm_judge/gen_model_answer.py``, ``common.py``, ``gen_judgment.py``,
``show_result.py`` @ 0e6d3e4):

* multi-turn generation, one conversation at a time: turn 1 is prompted, its answer is appended as the assistant
  message, then turn 2 is prompted on the whole conversation; ``max_new_tokens`` 1024 by default; generation stops at
  EOS (every id of the tokenizer's and the generation config's ``eos_token_id``: FastChat's ``stop_token_ids``), the
  text is cut at the first stop string, special-token strings are removed and the answer is stripped;
* ``sampling="fastchat"``: FastChat's per-category ``temperature_config`` (writing/roleplay 0.7, stem/humanities 0.1,
  extraction/math/coding/reasoning 0 = greedy, others 0.7), ``torch.manual_seed(seed)`` before each question
  (FastChat seeds choice ``i`` with ``i``, so ``seed=0`` is its single choice), the model's own generation config
  otherwise (top-p/top-k/repetition penalty as ``model.generate`` inherits them in FastChat);
* single-answer grading: ``single-v1`` for turn 1, ``single-v1-multi-turn`` for turn 2, and the reference-guided
  ``single-math-v1`` / ``single-math-v1-multi-turn`` (GPT-4 reference answers) for FastChat's ``NEED_REF_CATS``
  (math, reasoning, coding); the templates are read from the mirror's ``mt_bench_judge_prompts.jsonl``, filled with
  ``str.format`` exactly as ``run_judge_single`` does; messages = [system prompt, user prompt]; temperature 0,
  ``max_tokens`` 2048; the rating is ``\\[\\[(\\d+\\.?\\d*)\\]\\]``, else ``\\[(\\d+\\.?\\d*)\\]``, parsed with
  ``ast.literal_eval``, ``-1`` when neither matches (and when the endpoint gave no answer after the retries: FastChat's
  ``$ERROR$``); scores as ``show_result.py --mode single``: ``-1`` excluded, the mean of turn 1, of turn 2, and
  "overall" = the mean over every remaining judgement of both turns (not the mean of the two means).

**Faithful to LogicKor** (``generator.py``, ``evaluator.py``, ``score.py``, ``templates.py`` @ 11c3a84):

* generation: the first two ``questions`` through the tokenizer's chat template (a third question, as in id 3 of the
  file, is ignored as LogicKor's generator ignores it), greedy (temperature 0), LogicKor's stop strings, special
  tokens skipped, answers stripped; the ``default`` prompt strategy (no prefix messages; the ``1-shot`` and
  ``cot-1-shot`` strategies of ``templates.py`` can be passed as ``prefix_messages``, they are not embedded here);
* judging: LogicKor's ``JUDGE_TEMPLATE`` (``single_turn`` for the first answer, ``multi_turn`` for the follow-up; the
  text is embedded below from ``templates.py`` at the pinned commit, since the mirror does not hold it) as the system
  message and the user prompt built as ``create_answers`` builds it (question, ``**Additional Reference**`` when the
  reference is non-empty, ``**Model's Response**``, the follow-up block, ``[[대화 종료. 평가 시작.]]``); temperature 0,
  ``n`` 1, no ``max_tokens``; score = ``점수:\\s*(\\d+(\\.\\d+)?)`` on the output with ``*`` removed (float), the judge
  message = ``평가:(.*?)점수:``; scores as ``score.py``: per category the mean single-turn and multi-turn score, overall
  single, multi and ``(single + multi) / 2``.

**What differs, on purpose:**

* decoding is **greedy by default** for every category (reproducible runs); FastChat samples writing/roleplay/stem/
  humanities (``sampling="fastchat"`` restores that, with a seed);
* prompts come from the tokenizer's **Hugging Face chat template** (``apply_chat_template(..., add_generation_prompt=
  True, tokenize=False)``), not FastChat's own ``Conversation`` templates; the rendered text is encoded without the
  tokenizer's special tokens when it already starts with the BOS string (no doubled BOS), with them otherwise;
* a prompt longer than ``model max length - max_new_tokens`` is **left-truncated** and the turn is flagged
  ``truncated`` (FastChat would error out and write ``"ERROR"``; LogicKor's vLLM would refuse it);
  ``max_new_tokens >= model max length`` is a ``ValueError`` before anything is generated. LogicKor's own budget is
  ``max_tokens = model_len`` (4096); here it is ``max_new_tokens`` (default 1024) for both benchmarks;
* an unparsable LogicKor judge output is re-asked up to ``parse_retries`` times (LogicKor: 4, with 20 s waits), then
  scored ``-1`` and excluded from the means; LogicKor writes ``0.0`` ("Impossible to judge") instead, which
  ``logickor_unparsable_zero=True`` restores;
* a transient endpoint failure (timeout, connection error, HTTP 408/409/425/429/5xx, a malformed response) is retried a
  bounded number of times (``max_retries``, default 3; FastChat 16 x 10 s) and then recorded as ``score -1`` with the
  error; HTTP 401/403/404 (a wrong key, URL or model) stop the run with :class:`JudgeError`;
* there is no pairwise grading (``pair-v2``) and no multi-choice (``num_choices`` is 1).

**Judging needs an endpoint**: an OpenAI-compatible ``/v1/chat/completions`` server (``urllib.request``; no client
library), configured by arguments or by ``EVAL_JUDGE_URL`` + ``EVAL_JUDGE_MODEL`` (+ optional ``EVAL_JUDGE_API_KEY``).
Without one, nothing is judged and the results say ``"judge": null, "judgements": null, "scores": null`` -- never a
made-up score. Every judgement records the pinned judge model, the model name the endpoint reported, temperature 0,
the judge prompt name, the user prompt and the raw judge output; scores from different judges are not comparable.

Public API: :func:`mt_bench_questions`, :func:`logickor_questions`, :func:`mt_bench_judge_prompts`,
:func:`load_model`, :func:`generate_answers`, :func:`generate_answers_from_dir`, :class:`JudgeClient`,
:func:`judge_client_from_env`, :func:`judge`, :func:`parse_mt_bench_rating`, :func:`parse_logickor_score`,
:func:`mt_bench_scores`, :func:`logickor_scores`, :func:`run_chat_bench`, :func:`write_results`.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from eval_harness.data import TaskDataError

BENCHES = ("mt_bench", "logickor")
MT_BENCH_QUESTIONS = "mt_bench_question.jsonl"
MT_BENCH_JUDGE_PROMPTS = "mt_bench_judge_prompts.jsonl"
MT_BENCH_REFERENCES = "mt_bench_reference_answer_gpt4.jsonl"
LOGICKOR_QUESTIONS = "logickor_questions.jsonl"

FASTCHAT_MAX_NEW_TOKENS = 1024  # gen_model_answer.py --max-new-token default
# fastchat/llm_judge/common.py @ 0e6d3e4: NEED_REF_CATS (without "arena-hard-200", not an MT-Bench category) and the
# per-category sampling temperatures of gen_model_answer.py (categories not listed: 0.7; < 1e-4: greedy)
NEED_REF_CATS = ("math", "reasoning", "coding")
TEMPERATURE_CONFIG = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                      "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
FASTCHAT_DEFAULT_TEMPERATURE = 0.7
MT_BENCH_JUDGE_MAX_TOKENS = 2048  # run_judge_single -> chat_completion_openai(..., temperature=0, max_tokens=2048)
MT_BENCH_PROMPTS = {  # (reference-guided, multi-turn) -> prompt name, as gen_judgment.make_judge_single
    (False, False): "single-v1", (True, False): "single-math-v1",
    (False, True): "single-v1-multi-turn", (True, True): "single-math-v1-multi-turn"}
_ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")

# LogicKor generator.py @ 11c3a84: the vLLM SamplingParams stop list
LOGICKOR_STOP_STRINGS = ("<|endoftext|>", "[INST]", "[/INST]", "<|im_end|>", "<|end|>", "<|eot_id|>",
                         "<end_of_turn>", "<eos>")
LOGICKOR_PARSE_RETRIES = 4  # evaluator.create_answers retries while i <= 3 (then scores 0.0)
_LK_SCORE = re.compile(r"점수:\s*(\d+(\.\d+)?)")
_LK_MESSAGE = re.compile(r"평가:(.*?)점수:", re.DOTALL)
_LK_INSTRUCTION = ("아래의 내용을 주어진 평가 기준들을 충실히 반영하여 평가해라. "
                   "특히 모델 답변이 언어 요구사항을 준수하는지 반드시 확인해야 한다.")
_LK_END = "[[대화 종료. 평가 시작.]]"

# LogicKor's judge system prompts, verbatim from templates.py (JUDGE_TEMPLATE) of github.com/instructkr/LogicKor at
# commit 11c3a84f93d176754f1ce197a8f00961cffa9de2 (not in the data mirror; the repository has no licence file).
LOGICKOR_JUDGE_TEMPLATE = {
    "single_turn": """너는 질문에 대한 한국어 언어 모델의 답변을 매우 꼼꼼히 평가할 것이다. 공정한 평가를 위해 아래의 규칙을 준수한다.

# 기본 규칙
1. 질문의 요구사항을 충분히 반영하였는지 상세히 분석할 것.
2. 답변 과정에서 누락되었거나 포함되지 못하여 아쉬운 부분에 대하여 상세히 분석할 것.
3. 답변의 길이가 평가 결과에 영향을 미치지 않도록 할 것.
4. Additional Reference가 제공된다면 평가 시 해당 정보를 참고할 것.

# 언어 요구사항
- 모델은 반드시 한국어로 답변해야 하며, 다른 언어로의 답변은 절대 허용되지 않는다.
- 예외적으로 질문이 영어로 답변할 것을 요구할 때에만 영어 답변이 허용된다.
- 한국어로 답변하지 않을 경우, 점수는 0점 처리된다.
- 언어 요구사항을 충족하는 것은 필수적이나, 이 요구사항의 충족이 답변의 질적 평가에 추가 점수로 이어지지는 않는다.

# 평가 출력 방식
**주어진 Question에 집중하여** Model's Response에 대한 평가와 1~10의 점수를 부여한다. 답변에 대한 평가는 4~5 문장으로 규칙을 참고하여 상세히 작성한다.

# 출력 형식
평가: 평가 내용
점수: 숫자""",
    "multi_turn": """너는 대화 후 이어지는 후속 질문에 대한 한국어 언어 모델의 답변을 매우 꼼꼼히 평가할 것이다. 공정한 평가를 위해 아래의 규칙을 준수한다.

# 기본 규칙
1. 질문의 요구사항을 충분히 반영하였는지 상세히 분석할 것.
2. 답변 과정에서 누락되었거나 포함되지 못하여 아쉬운 부분에 대하여 상세히 분석할 것.
3. 답변의 길이가 평가 결과에 영향을 미치지 않도록 할 것.
4. Additional Reference가 제공된다면 평가 시 해당 정보를 참고할 것.
5. 후속 질문에 대한 답변이 이전 대화 맥락과 일치하는지 확인할 것.

# 언어 요구사항
- 모델은 반드시 한국어로 답변해야 하며, 다른 언어로의 답변은 절대 허용되지 않는다.
- 예외적으로 질문이 영어로 답변할 것을 요구할 때에만 영어 답변이 허용된다.
- 한국어로 답변하지 않을 경우, 점수는 0점 처리된다.
- 언어 요구사항을 충족하는 것은 필수적이나, 이 요구사항의 충족이 답변의 질적 평가에 추가 점수로 이어지지는 않는다.

# 평가 출력 방식
**주어진 Question에 집중하여** Model's Response에 대한 평가와 1~10의 점수를 부여한다. 답변에 대한 평가는 4~5 문장으로 규칙을 참고하여 상세히 작성한다.

# 출력 형식
평가: 평가 내용
점수: 숫자""",
}

ENV_URL, ENV_MODEL, ENV_KEY = "EVAL_JUDGE_URL", "EVAL_JUDGE_MODEL", "EVAL_JUDGE_API_KEY"
_DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")


# ================================================================================================== data loaders
def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _bench_file(root: str | Path, name: str) -> Path:
    return Path(root) / "chat_bench" / name


def _read_jsonl(task: str, path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a BOM is dropped (LogicKor reads ``utf-8-sig``)."""
    from eval_harness.data import _read_text  # missing file, UTF-8, CRLF and BOM handled as for every task

    rows = []
    for lineno, line in enumerate(_read_text(task, path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskDataError(f"{task}: {path}:{lineno}: not valid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(obj, dict):
            raise TaskDataError(f"{task}: {path}:{lineno}: a JSON object expected, got {type(obj).__name__}")
        rows.append((lineno, obj))
    if not rows:
        raise TaskDataError(f"{task}: {path}: no records")
    return rows


def _field(task: str, path: Path, lineno: int, obj: dict, name: str, types: tuple[type, ...]) -> Any:
    if name not in obj:
        raise TaskDataError(f"{task}: {path}:{lineno}: missing field {name!r}")
    value = obj[name]
    if not isinstance(value, types) or isinstance(value, bool):
        raise TaskDataError(f"{task}: {path}:{lineno}: field {name!r} is {type(value).__name__}, expected "
                            f"{' or '.join(t.__name__ for t in types)}")
    return value


def _strings(task: str, path: Path, lineno: int, name: str, value: list, n: int, *, exact: bool,
             allow_none: bool = False) -> list:
    if (len(value) != n) if exact else (len(value) < n):
        want = f"exactly {n}" if exact else f"at least {n}"
        raise TaskDataError(f"{task}: {path}:{lineno}: field {name!r} has {len(value)} turns, expected {want}")
    for i, v in enumerate(value):
        if v is None and allow_none:
            continue
        if not isinstance(v, str) or (not allow_none and not v.strip()):
            raise TaskDataError(f"{task}: {path}:{lineno}: field {name!r}[{i}] is {v!r}, expected a non-empty string"
                                + (" or null" if allow_none else ""))
    return list(value)


def _unique(task: str, path: Path, lineno: int, qid, seen: set) -> None:
    if qid in seen:
        raise TaskDataError(f"{task}: {path}:{lineno}: duplicate id {qid!r}")
    seen.add(qid)


def mt_bench_references(root: str | Path) -> dict:
    """FastChat's GPT-4 reference answers: ``{question_id: [turn 1 answer, turn 2 answer]}`` (``choices[0].turns``)."""
    task, path = "mt_bench", _bench_file(root, MT_BENCH_REFERENCES)
    refs: dict = {}
    for lineno, obj in _read_jsonl(task, path):
        qid = _field(task, path, lineno, obj, "question_id", (int, str))
        choices = _field(task, path, lineno, obj, "choices", (list,))
        if not choices or not isinstance(choices[0], dict) or not isinstance(choices[0].get("turns"), list):
            raise TaskDataError(f"{task}: {path}:{lineno}: field 'choices[0].turns' missing or not a list")
        turns = _strings(task, path, lineno, "choices[0].turns", choices[0]["turns"], 2, exact=True)
        _unique(task, path, lineno, qid, set(refs))
        refs[qid] = turns
    return refs


def mt_bench_questions(root: str | Path, *, with_references: bool = True) -> list[dict]:
    """The 80 MT-Bench questions as ``{"bench", "question_id", "category", "turns", "references"}``.

    ``references`` is the pair of GPT-4 reference answers for the reference-guided categories (math, reasoning,
    coding; every such question must have one, as FastChat's ``check_data`` asserts) and ``None`` for the others.
    ``with_references=False`` skips the reference file (answer generation alone does not need it).
    """
    task, path = "mt_bench", _bench_file(root, MT_BENCH_QUESTIONS)
    rows = _read_jsonl(task, path)
    refs = mt_bench_references(root) if with_references else {}
    out, seen = [], set()
    for lineno, obj in rows:
        qid = _field(task, path, lineno, obj, "question_id", (int, str))
        category = _field(task, path, lineno, obj, "category", (str,))
        turns = _strings(task, path, lineno, "turns", _field(task, path, lineno, obj, "turns", (list,)), 2, exact=True)
        _unique(task, path, lineno, qid, seen)
        ref = None
        if category in NEED_REF_CATS and with_references:
            if qid not in refs:
                raise TaskDataError(f"{task}: {_bench_file(root, MT_BENCH_REFERENCES)}: no reference answer for "
                                    f"question_id {qid!r} (category {category!r} is graded against a reference)")
            ref = refs[qid]
        out.append({"bench": "mt_bench", "question_id": qid, "category": category, "turns": turns,
                    "references": ref})
    return out


def logickor_questions(root: str | Path) -> list[dict]:
    """The 42 LogicKor questions as ``{"bench", "question_id", "category", "turns", "references", "unused_turns"}``.

    ``turns`` are the first two ``questions`` and ``references`` the first two ``references`` (each a string or
    ``None``), as LogicKor's generator and evaluator use them; further questions go to ``unused_turns``.
    """
    task, path = "logickor", _bench_file(root, LOGICKOR_QUESTIONS)
    out, seen = [], set()
    for lineno, obj in _read_jsonl(task, path):
        qid = _field(task, path, lineno, obj, "id", (int, str))
        category = _field(task, path, lineno, obj, "category", (str,))
        questions = _strings(task, path, lineno, "questions", _field(task, path, lineno, obj, "questions", (list,)),
                             2, exact=False)
        references = _strings(task, path, lineno, "references",
                              _field(task, path, lineno, obj, "references", (list,)), 2, exact=False, allow_none=True)
        _unique(task, path, lineno, qid, seen)
        out.append({"bench": "logickor", "question_id": qid, "category": category, "turns": questions[:2],
                    "references": references[:2], "unused_turns": questions[2:]})
    return out


def mt_bench_judge_prompts(root: str | Path) -> dict[str, dict]:
    """FastChat's judge prompt templates by name; the four single-answer prompts must be there."""
    task, path = "mt_bench", _bench_file(root, MT_BENCH_JUDGE_PROMPTS)
    prompts: dict[str, dict] = {}
    for lineno, obj in _read_jsonl(task, path):
        name = _field(task, path, lineno, obj, "name", (str,))
        for f in ("type", "system_prompt", "prompt_template", "output_format"):
            _field(task, path, lineno, obj, f, (str,))
        prompts[name] = obj
    for name in MT_BENCH_PROMPTS.values():
        if name not in prompts:
            raise TaskDataError(f"{task}: {path}: no judge prompt named {name!r} (have: {sorted(prompts)})")
        if prompts[name]["output_format"] != "[[rating]]" or prompts[name]["type"] != "single":
            raise TaskDataError(f"{task}: {path}: judge prompt {name!r}: field 'output_format'/'type' is "
                                f"{prompts[name]['output_format']!r}/{prompts[name]['type']!r}, expected "
                                f"'[[rating]]'/'single'")
    return prompts


def load_questions(bench: str, root: str | Path, *, with_references: bool = True) -> list[dict]:
    """:func:`mt_bench_questions` or :func:`logickor_questions` by name."""
    if bench == "mt_bench":
        return mt_bench_questions(root, with_references=with_references)
    if bench == "logickor":
        return logickor_questions(root)
    raise ValueError(f"unknown chat benchmark {bench!r} (choose from {', '.join(BENCHES)})")


# ============================================================================================== answer generation
def tokenizer_sha256(model_path: str | Path | None) -> str | None:
    """sha256 of ``<model_path>/tokenizer.json`` (``None`` when there is no such file)."""
    from eval_harness.evaluate import tokenizer_hash

    return None if model_path is None else tokenizer_hash(Path(model_path))


def _model_name(model, tokenizer, model_path) -> str:
    if model_path is not None:
        return str(model_path)
    return str(getattr(tokenizer, "name_or_path", None) or getattr(model.config, "_name_or_path", "") or "<model>")


def check_chat_template(tokenizer, model_path: str | Path | None, chat_template: str | None = None) -> str:
    """The chat template in use: ``chat_template`` if given, else the tokenizer's; a clear error if there is none."""
    if chat_template is not None:
        if not isinstance(chat_template, str) or not chat_template.strip():
            raise ValueError("chat_template must be a non-empty Jinja string")
        return chat_template
    tpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tpl, dict):  # several named templates: the "default" one is what apply_chat_template uses
        tpl = tpl.get("default")
    if not tpl:
        raise ValueError(f"{model_path}: the tokenizer has no chat template (no 'chat_template' in "
                         f"tokenizer_config.json and no chat_template.jinja); MT-Bench/LogicKor prompts need one: save "
                         f"one with the tokenizer or pass chat_template='<Jinja template>'")
    return tpl


def _eos_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    for src in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        for i in ([src] if isinstance(src, int) else list(src or [])):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def _stop_criteria(tokenizer, stops: Sequence[str], start: int):
    """A StoppingCriteria (batch 1): stop once the decoded new tokens hold a stop string. Only the last
    ``max(len(stop in bytes)) + 1`` tokens are decoded per step (every token yields at least one byte)."""
    import torch
    from transformers import StoppingCriteria

    class _Stop(StoppingCriteria):
        window = max(len(s.encode("utf-8")) for s in stops) + 1

        def __call__(self, input_ids, scores=None, **kwargs):  # noqa: ARG002
            tail = input_ids[0, max(start, input_ids.shape[1] - self.window):].tolist()
            text = tokenizer.decode(tail, skip_special_tokens=False)
            hit = any(s in text for s in stops)
            return torch.full((input_ids.shape[0],), hit, dtype=torch.bool, device=input_ids.device)

    return _Stop()


def _decoding(bench: str, category: str, sampling: str, model, max_new_tokens: int, eos: list[int], pad,
              stops: list[str], seed: int):
    """The GenerationConfig for one question and the record of its settings."""
    if sampling == "greedy":
        temperature = 0.0
    elif sampling == "fastchat":
        if bench != "mt_bench":
            raise ValueError(f"sampling='fastchat' is MT-Bench's per-category temperature scheme; {bench} decodes "
                             f"greedily (temperature 0, as LogicKor's generator)")
        temperature = TEMPERATURE_CONFIG.get(category, FASTCHAT_DEFAULT_TEMPERATURE)
    else:
        raise ValueError(f"sampling must be 'greedy' or 'fastchat', not {sampling!r}")
    do_sample = temperature >= 1e-4  # gen_model_answer.py: temperature < 1e-4 -> do_sample False
    cfg = copy.deepcopy(model.generation_config)
    cfg.max_new_tokens, cfg.max_length = max_new_tokens, None
    cfg.do_sample, cfg.num_beams, cfg.num_return_sequences = do_sample, 1, 1
    cfg.eos_token_id, cfg.pad_token_id = (eos or None), pad
    if do_sample:
        cfg.temperature = temperature
    else:
        cfg.temperature, cfg.top_p, cfg.top_k = None, None, None
    settings = {"sampling": sampling, "do_sample": do_sample, "temperature": temperature if do_sample else 0.0,
                "top_p": cfg.top_p if do_sample else None, "top_k": cfg.top_k if do_sample else None,
                "repetition_penalty": getattr(cfg, "repetition_penalty", None), "max_new_tokens": max_new_tokens,
                "seed": seed if do_sample else None, "eos_token_ids": eos, "stop_strings": stops}
    return cfg, settings


def _clean(tokenizer, ids: list[int], stops: Sequence[str]) -> tuple[str, bool]:
    """FastChat's post-processing: decode, cut at the first stop string, drop special-token strings, strip."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    hits = [text.find(s) for s in stops if s and text.find(s) >= 0]
    if hits:
        text = text[: min(hits)]
    for special in sorted(set(tokenizer.all_special_tokens), key=len, reverse=True):
        if special:
            text = text.replace(special, "")
    return text.strip(), bool(hits)


def generate_answers(model, tokenizer, questions: Sequence[dict], *, max_new_tokens: int = FASTCHAT_MAX_NEW_TOKENS,
                     sampling: str = "greedy", seed: int = 0, chat_template: str | None = None,
                     prefix_messages: Sequence[dict] | None = None, stop_strings: Sequence[str] | None = None,
                     model_path: str | Path | None = None, progress: bool = True) -> list[dict]:
    """Two-turn answers of ``model`` to ``questions`` (from :func:`mt_bench_questions` / :func:`logickor_questions`).

    Args:
        max_new_tokens: generation budget per turn (FastChat's default 1024); must be below the model's max length.
        sampling: ``"greedy"`` (default, every category) or ``"fastchat"`` (MT-Bench's per-category temperatures,
            ``torch.manual_seed(seed)`` before each question).
        chat_template: a Jinja template to use instead of the tokenizer's (required if the tokenizer has none).
        prefix_messages: messages put before the first user turn (a system prompt, LogicKor's few-shot strategies).
        stop_strings: text stop strings; ``None`` = the benchmark's own (LogicKor's list; none for MT-Bench).
        model_path: recorded as the model and used for the tokenizer hash; default the tokenizer's ``name_or_path``.

    Returns:
        one record per question: ``bench, question_id, category, turns, answers, prompts`` (the full chat-template text
        of each turn, before any truncation), ``prompt_tokens`` (before truncation), ``input_tokens`` (what the model
        saw), ``tokens_generated`` (new tokens incl. a final EOS; <= max_new_tokens), ``stop_reasons``
        (``eos``/``stop_string``/``length``), ``truncated`` (per turn), ``add_special_tokens`` (per turn),
        ``references``, ``decoding`` (the settings), ``model``, ``tokenizer_sha256``, ``chat_template_sha256``.

    Raises:
        ValueError: no chat template; ``max_new_tokens`` not below the model's max length; an unknown ``sampling``.
    """
    import torch
    from tqdm.auto import tqdm

    from eval_harness.engine import resolve_max_length

    name = _model_name(model, tokenizer, model_path)
    template = check_chat_template(tokenizer, name, chat_template)
    max_len = resolve_max_length(model.config, tokenizer)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, not {max_new_tokens!r}")
    if max_new_tokens >= max_len:
        raise ValueError(f"{name}: max_new_tokens={max_new_tokens} must be less than the model's max length "
                         f"{max_len} (there would be no room for the prompt)")
    for q in questions:
        _decoding(q["bench"], q["category"], sampling, model, max_new_tokens, [], None, [], seed)  # validate first
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else None)
    tok_sha = tokenizer_sha256(name if Path(name).is_dir() else None)
    tpl_sha = hashlib.sha256(template.encode("utf-8")).hexdigest()
    bos = tokenizer.bos_token
    device = next(model.parameters()).device
    budget = max_len - max_new_tokens
    prefix = [dict(m) for m in (prefix_messages or [])]
    out = []
    with torch.inference_mode():
        for q in tqdm(list(questions), desc=f"answers ({questions[0]['bench'] if questions else ''})",
                      disable=not progress):
            stops = list(stop_strings) if stop_strings is not None else (
                list(LOGICKOR_STOP_STRINGS) if q["bench"] == "logickor" else [])
            cfg, settings = _decoding(q["bench"], q["category"], sampling, model, max_new_tokens, eos, pad, stops,
                                      seed)
            if settings["do_sample"]:
                torch.manual_seed(seed)
            messages = list(prefix)
            rec = {"bench": q["bench"], "question_id": q["question_id"], "category": q["category"],
                   "turns": list(q["turns"]), "answers": [], "prompts": [], "prompt_tokens": [], "input_tokens": [],
                   "tokens_generated": [], "stop_reasons": [], "truncated": [], "add_special_tokens": []}
            for turn in q["turns"]:
                messages.append({"role": "user", "content": turn})
                prompt = tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                                       tokenize=False)
                add_special = not (bos and prompt.startswith(bos))
                ids = list(tokenizer(prompt, add_special_tokens=add_special)["input_ids"])
                n_prompt, truncated = len(ids), len(ids) > budget
                if truncated:
                    ids = ids[-budget:]
                inp = torch.tensor([ids], dtype=torch.long, device=device)
                crit = [_stop_criteria(tokenizer, stops, len(ids))] if stops else None
                gen = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), generation_config=cfg,
                                     stopping_criteria=crit)
                new = gen[0, len(ids):].tolist()
                cut = next((i for i, t in enumerate(new) if t in eos), None)  # FastChat's stop_token_ids cut
                answer, hit = _clean(tokenizer, new if cut is None else new[:cut], stops)
                reason = "stop_string" if hit else ("eos" if cut is not None else "length")
                messages.append({"role": "assistant", "content": answer})
                rec["answers"].append(answer)
                rec["prompts"].append(prompt)
                rec["prompt_tokens"].append(n_prompt)
                rec["input_tokens"].append(len(ids))
                rec["tokens_generated"].append(len(new))
                rec["stop_reasons"].append(reason)
                rec["truncated"].append(truncated)
                rec["add_special_tokens"].append(add_special)
            rec.update({"references": q.get("references"), "prefix_messages": prefix, "decoding": settings,
                        "max_length": max_len, "model": name, "tokenizer_sha256": tok_sha,
                        "chat_template_sha256": tpl_sha})
            out.append(rec)
    return out


def load_model(model_dir: str | Path, *, dtype: str = "float32", device: str = "cpu",
               chat_template: str | None = None):
    """``(model, tokenizer)`` from a local directory (``AutoTokenizer`` + ``AutoModelForCausalLM``, float32 by
    default); the directory, the dtype and the chat template are checked before any weights are read."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval_harness.engine import ModelLoadError, check_model_dir

    model_dir = Path(model_dir)
    check_model_dir(model_dir)
    if dtype not in _DTYPE_NAMES:
        raise ModelLoadError(f"{model_dir}: unknown dtype {dtype!r} (choose from {', '.join(_DTYPE_NAMES)})")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    check_chat_template(tokenizer, model_dir, chat_template)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype)).to(device).eval()
    return model, tokenizer


def generate_answers_from_dir(model_dir: str | Path, questions: Sequence[dict], *, dtype: str = "float32",
                              device: str = "cpu", chat_template: str | None = None, **kwargs) -> list[dict]:
    """:func:`load_model` then :func:`generate_answers` (``kwargs`` go to the latter)."""
    model, tokenizer = load_model(model_dir, dtype=dtype, device=device, chat_template=chat_template)
    return generate_answers(model, tokenizer, questions, chat_template=chat_template, model_path=model_dir, **kwargs)


# ========================================================================================================== judge
class JudgeError(RuntimeError):
    """The judge endpoint gave no usable answer (after the retries, or a non-retryable HTTP status)."""


class JudgeConfigError(JudgeError):
    """HTTP 401/403/404: a wrong key, URL or model name; judging stops instead of recording -1 for every item."""


_RETRY_STATUS = {408, 409, 425, 429}
_FATAL_STATUS = {401, 403, 404}


class JudgeClient:
    """A client for an OpenAI-compatible chat-completions endpoint, temperature 0, the judge model pinned.

    ``url`` is the endpoint (``…/v1/chat/completions``) or its base (``…/v1``; ``/chat/completions`` is appended).
    Each request has a ``timeout`` (seconds); transient failures are retried ``max_retries`` times with a linear
    backoff of ``retry_sleep`` seconds. The API key, if any, is sent as a Bearer token and never recorded.
    """

    def __init__(self, url: str, model: str, *, api_key: str | None = None, timeout: float = 120.0,
                 max_retries: int = 3, retry_sleep: float = 5.0):
        if not url or not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"judge url must be an http(s) URL, not {url!r}")
        if not model or not isinstance(model, str):
            raise ValueError("the judge model must be named (pinned), e.g. gpt-4-0613")
        if max_retries < 0 or timeout <= 0:
            raise ValueError("max_retries must be >= 0 and timeout > 0")
        u = url.rstrip("/")
        self.url = u if u.endswith("/chat/completions") else u + "/chat/completions"
        self.model, self.timeout, self.max_retries, self.retry_sleep = model, float(timeout), int(max_retries), \
            float(retry_sleep)
        self._api_key = api_key or None

    def config(self) -> dict:
        """What results record about the judge (no key)."""
        return {"url": self.url, "model": self.model, "temperature": 0, "timeout_s": self.timeout,
                "max_retries": self.max_retries, "api_key_set": self._api_key is not None}

    def chat(self, messages: list[dict], *, max_tokens: int | None = None) -> dict:
        """One completion: ``{"content", "model_reported", "attempts"}``; raises :class:`JudgeError`."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0, "n": 1}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        last = ""
        for attempt in range(1, self.max_retries + 2):
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                content = payload["choices"][0]["message"]["content"]
                if not isinstance(content, str):
                    raise TypeError(f"message content is {type(content).__name__}")
                return {"content": content, "model_reported": payload.get("model"), "attempts": attempt}
            except urllib.error.HTTPError as err:
                detail = err.read()[:300].decode("utf-8", "replace") if err.fp is not None else ""
                last = f"HTTP {err.code} {err.reason}: {detail}"
                if err.code in _FATAL_STATUS:
                    raise JudgeConfigError(f"judge {self.url} (model {self.model!r}): {last}") from None
                if err.code < 500 and err.code not in _RETRY_STATUS:
                    raise JudgeError(f"judge {self.url} (model {self.model!r}): {last}") from None
            except (urllib.error.URLError, TimeoutError, socket.timeout, OSError, http.client.HTTPException) as err:
                last = f"{type(err).__name__}: {err}"
            except (ValueError, KeyError, IndexError, TypeError) as err:  # malformed JSON / response shape
                last = f"malformed response: {type(err).__name__}: {err}"
            if attempt <= self.max_retries:
                time.sleep(self.retry_sleep * attempt)
        raise JudgeError(f"judge {self.url} (model {self.model!r}): no answer after {self.max_retries + 1} "
                         f"attempt(s): {last}")


def judge_client_from_env(url: str | None = None, model: str | None = None, api_key: str | None = None,
                          **kwargs) -> JudgeClient | None:
    """A :class:`JudgeClient` from the arguments, else ``EVAL_JUDGE_URL`` / ``EVAL_JUDGE_MODEL`` /
    ``EVAL_JUDGE_API_KEY``; ``None`` when neither a URL nor a model is configured (then nothing is judged)."""
    url = url or os.environ.get(ENV_URL, "").strip() or None
    model = model or os.environ.get(ENV_MODEL, "").strip() or None
    api_key = api_key or os.environ.get(ENV_KEY, "").strip() or None
    if url is None and model is None:
        return None
    if url is None or model is None:
        missing = f"{ENV_URL} (or judge_url)" if url is None else f"{ENV_MODEL} (or judge_model)"
        raise ValueError(f"judge half-configured: {missing} is not set; set both the endpoint URL and the pinned "
                         f"judge model, or neither (no judging)")
    return JudgeClient(url, model, api_key=api_key, **kwargs)


def parse_mt_bench_rating(judgment: str | None) -> float:
    """FastChat's ``[[rating]]`` parsing: ``[[x]]``, else ``[x]``, ``ast.literal_eval``; ``-1`` if neither."""
    if not judgment:
        return -1
    match = _ONE_SCORE.search(judgment) or _ONE_SCORE_BACKUP.search(judgment)
    return ast.literal_eval(match.groups()[0]) if match else -1


def parse_logickor_score(judgment: str | None) -> tuple[float | None, str]:
    """LogicKor's parsing: ``(score or None, judge message)`` from the output with ``*`` removed."""
    text = (judgment or "").replace("*", "")
    msg = _LK_MESSAGE.search(text)
    score = _LK_SCORE.search(text)
    return (float(score.group(1)) if score else None), (msg.group(1).strip() if msg else "No judge message found")


def _mt_bench_request(rec: dict, turn: int, prompts: dict) -> tuple[str, list[dict]]:
    ref_based = rec["category"] in NEED_REF_CATS
    name = MT_BENCH_PROMPTS[(ref_based, turn == 2)]
    tpl = prompts[name]
    kwargs = {}
    if ref_based:
        refs = rec.get("references")
        if not refs or len(refs) < 2:
            raise ValueError(f"mt_bench question {rec['question_id']} ({rec['category']}): the reference-guided judge "
                             f"needs the reference answers (load the questions with with_references=True)")
        kwargs["ref_answer_1"] = refs[0]
        if turn == 2:
            kwargs["ref_answer_2"] = refs[1]
    q, a = rec["turns"], rec["answers"]
    if turn == 2:
        user = tpl["prompt_template"].format(question_1=q[0], question_2=q[1], answer_1=a[0], answer_2=a[1], **kwargs)
    else:
        user = tpl["prompt_template"].format(question=q[0], answer=a[0], **kwargs)
    return name, [{"role": "system", "content": tpl["system_prompt"]}, {"role": "user", "content": user}]


def _logickor_request(rec: dict, turn: int) -> tuple[str, list[dict]]:
    q, a, refs = rec["turns"], rec["answers"], rec.get("references") or [None, None]
    prompt = f"{_LK_INSTRUCTION}\n\n**Question**\n{q[0]}"
    if refs[0]:
        prompt += f"\n\n**Additional Reference**\n{refs[0]}"
    prompt += f"\n\n**Model's Response**\n{a[0]}"
    if turn == 2:
        prompt += f"\n\n**Follow-up Question.**\n{q[1]}"
        if refs[1]:
            prompt += f"\n\n**Additional Reference**\n{refs[1]}"
        prompt += f"\n\n**Model's Response**\n{a[1]}"
    prompt += f"\n\n{_LK_END}"
    name = "multi_turn" if turn == 2 else "single_turn"
    return name, [{"role": "system", "content": LOGICKOR_JUDGE_TEMPLATE[name]}, {"role": "user", "content": prompt}]


def _judge_one(bench: str, rec: dict, turn: int, client: JudgeClient, prompts: dict | None, parse_retries: int,
               unparsable_zero: bool) -> dict:
    if bench == "mt_bench":
        name, messages = _mt_bench_request(rec, turn, prompts or {})
        max_tokens = MT_BENCH_JUDGE_MAX_TOKENS
    else:
        name, messages = _logickor_request(rec, turn)
        name, max_tokens = f"logickor-{name}", None
    out = {"bench": bench, "question_id": rec["question_id"], "category": rec["category"], "turn": turn,
           "model": rec.get("model"), "judge_model": client.model, "judge_prompt": name, "temperature": 0,
           "judge_model_reported": None, "user_prompt": messages[1]["content"], "judgment": None, "score": -1,
           "parsed": False, "attempts": 0, "error": None}
    for _ in range(parse_retries + 1):
        try:
            resp = client.chat(messages, max_tokens=max_tokens)
        except JudgeConfigError:
            raise
        except JudgeError as err:  # FastChat: "$ERROR$" -> rating -1
            out["error"] = str(err)
            return out
        out["attempts"] += resp["attempts"]
        out["judgment"], out["judge_model_reported"] = resp["content"], resp["model_reported"]
        if bench == "mt_bench":
            out["score"] = parse_mt_bench_rating(resp["content"])
            out["parsed"] = out["score"] != -1
        else:
            score, message = parse_logickor_score(resp["content"])
            out["judge_message"] = message
            if score is not None:
                out["score"], out["parsed"] = score, True
        if out["parsed"]:
            return out
    if bench == "logickor" and unparsable_zero:
        out["score"], out["judge_message"] = 0.0, "Impossible to judge due to repetition."  # LogicKor's fallback
    return out


def judge(bench: str, answers: Sequence[dict], client: JudgeClient, *, judge_prompts: dict | None = None,
          parse_retries: int | None = None, logickor_unparsable_zero: bool = False, parallel: int = 1,
          progress: bool = True) -> list[dict]:
    """Judge every answer record's two turns; one judgement per (question, turn), in (question, turn) order.

    Args:
        judge_prompts: MT-Bench: :func:`mt_bench_judge_prompts` (required); LogicKor: unused (embedded template).
        parse_retries: re-asks after an unparsable output (default: MT-Bench 0 as FastChat, LogicKor 4 as LogicKor).
        logickor_unparsable_zero: score an unparsable LogicKor output 0.0 (LogicKor) instead of -1 (excluded).
        parallel: concurrent requests (FastChat's ``--parallel``); the order of the output does not depend on it.
    """
    from tqdm.auto import tqdm

    if bench not in BENCHES:
        raise ValueError(f"unknown chat benchmark {bench!r} (choose from {', '.join(BENCHES)})")
    if bench == "mt_bench" and not judge_prompts:
        raise ValueError("mt_bench judging needs judge_prompts (mt_bench_judge_prompts(root))")
    retries = (0 if bench == "mt_bench" else LOGICKOR_PARSE_RETRIES) if parse_retries is None else int(parse_retries)
    jobs = []
    for rec in answers:
        if rec.get("bench", bench) != bench or len(rec.get("answers", [])) != 2:
            raise ValueError(f"{bench}: record {rec.get('question_id')!r} is not a two-turn {bench} answer record")
        if bench == "mt_bench":
            for turn in (1, 2):
                _mt_bench_request(rec, turn, judge_prompts)  # template / reference errors before any request
        jobs += [(rec, 1), (rec, 2)]

    def run(job):
        return _judge_one(bench, job[0], job[1], client, judge_prompts, retries, logickor_unparsable_zero)

    bar = tqdm(total=len(jobs), desc=f"judge ({bench})", disable=not progress)
    try:
        if parallel <= 1:
            out = []
            for job in jobs:
                out.append(run(job))
                bar.update()
        else:
            with ThreadPoolExecutor(max_workers=int(parallel)) as pool:
                out = []
                for r in pool.map(run, jobs):
                    out.append(r)
                    bar.update()
    finally:
        bar.close()
    return out


# ========================================================================================================= scores
def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _valid(j: dict) -> bool:
    return j["score"] != -1 and j["score"] is not None


def mt_bench_scores(judgements: Sequence[dict]) -> dict:
    """``show_result.py --mode single``: ``-1`` excluded; mean of turn 1, of turn 2, and over both ("overall");
    plus per-category means (both turns) and the counts."""
    ok = [j for j in judgements if _valid(j)]
    t1, t2 = [j["score"] for j in ok if j["turn"] == 1], [j["score"] for j in ok if j["turn"] == 2]
    cats: dict[str, list[float]] = {}
    for j in ok:
        cats.setdefault(j["category"], []).append(j["score"])
    return {"turn_1": _mean(t1), "turn_2": _mean(t2), "overall": _mean(t1 + t2),
            "per_category": {c: _mean(v) for c, v in sorted(cats.items())},
            "n_judged": {"turn_1": len(t1), "turn_2": len(t2)}, "n_excluded": len(judgements) - len(ok)}


def logickor_scores(judgements: Sequence[dict]) -> dict:
    """``score.py``: per category the mean single-turn (turn 1) and multi-turn (turn 2) score and their average;
    overall single, multi and ``(single + multi) / 2``. ``-1`` (unparsable, endpoint failure) is excluded."""
    ok = [j for j in judgements if _valid(j)]
    per: dict[str, dict[str, list[float]]] = {}
    for j in ok:
        per.setdefault(j["category"], {"single": [], "multi": []})["single" if j["turn"] == 1 else "multi"].append(
            j["score"])
    cats = {}
    for c, v in per.items():
        s, m = _mean(v["single"]), _mean(v["multi"])
        cats[c] = {"single": s, "multi": m, "mean": None if s is None or m is None else (s + m) / 2}
    single = _mean([j["score"] for j in ok if j["turn"] == 1])
    multi = _mean([j["score"] for j in ok if j["turn"] == 2])
    return {"per_category": cats, "single": single, "multi": multi,
            "overall": None if single is None or multi is None else (single + multi) / 2,
            "n_judged": {"single": sum(j["turn"] == 1 for j in ok), "multi": sum(j["turn"] == 2 for j in ok)},
            "n_excluded": len(judgements) - len(ok)}


def bench_scores(bench: str, judgements: Sequence[dict]) -> dict:
    return mt_bench_scores(judgements) if bench == "mt_bench" else logickor_scores(judgements)


# ================================================================================================== whole runs
def run_chat_bench(bench: str, *, root: str | Path, model=None, tokenizer=None, model_dir: str | Path | None = None,
                   dtype: str = "float32", device: str = "cpu", question_ids: Sequence | None = None,
                   limit: int | None = None, max_new_tokens: int = FASTCHAT_MAX_NEW_TOKENS, sampling: str = "greedy",
                   seed: int = 0, chat_template: str | None = None, prefix_messages: Sequence[dict] | None = None,
                   stop_strings: Sequence[str] | None = None, judge_client: JudgeClient | None = None,
                   judge_url: str | None = None, judge_model: str | None = None, judge_api_key: str | None = None,
                   judge_timeout: float = 120.0, judge_max_retries: int = 3, judge_parallel: int = 1,
                   parse_retries: int | None = None, logickor_unparsable_zero: bool = False,
                   out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Questions -> answers -> (judgements -> scores, only with a judge) for one benchmark.

    The model is ``model`` + ``tokenizer``, or loaded from ``model_dir`` (:func:`load_model`). The judge is
    ``judge_client``, else :func:`judge_client_from_env` (arguments, then ``EVAL_JUDGE_*``); with none, nothing is
    judged. Order of checks (bad input fails before the model loads): the question files, the judge configuration
    and (MT-Bench) its prompt file, the model directory / dtype / chat template, then ``max_new_tokens`` against the
    model's window.

    Returns:
        ``{"config": {...}, "judge": judge config or None, "answers": [...], "judgements": [...] or None,
        "scores": {...} or None}``; written with :func:`write_results` when ``out_dir`` is given.
    """
    t0 = time.perf_counter()
    if bench not in BENCHES:
        raise ValueError(f"unknown chat benchmark {bench!r} (choose from {', '.join(BENCHES)})")
    client = judge_client if judge_client is not None else judge_client_from_env(
        judge_url, judge_model, judge_api_key, timeout=judge_timeout, max_retries=judge_max_retries)
    # MT-Bench references are attached whenever the file is there (records can be judged later); judging needs them
    with_refs = client is not None or _bench_file(root, MT_BENCH_REFERENCES).is_file()
    questions = load_questions(bench, root, with_references=with_refs)
    if question_ids is not None:
        wanted = list(question_ids)
        by_id = {q["question_id"]: q for q in questions}
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise TaskDataError(f"{bench}: question id(s) {missing} not in the question file")
        questions = [by_id[i] for i in wanted]
    if limit is not None:
        questions = questions[:limit]
    prompts = mt_bench_judge_prompts(root) if client is not None and bench == "mt_bench" else None
    if model is None:
        if model_dir is None:
            raise ValueError("pass model + tokenizer or model_dir")
        model, tokenizer = load_model(model_dir, dtype=dtype, device=device, chat_template=chat_template)
    elif tokenizer is None:
        raise ValueError("model given without its tokenizer")
    t_load = time.perf_counter()
    answers = generate_answers(model, tokenizer, questions, max_new_tokens=max_new_tokens, sampling=sampling,
                               seed=seed, chat_template=chat_template, prefix_messages=prefix_messages,
                               stop_strings=stop_strings, model_path=model_dir, progress=progress)
    t_gen = time.perf_counter()
    judgements = scores = None
    if client is not None:
        judgements = judge(bench, answers, client, judge_prompts=prompts, parse_retries=parse_retries,
                           logickor_unparsable_zero=logickor_unparsable_zero, parallel=judge_parallel,
                           progress=progress)
        scores = bench_scores(bench, judgements)
    files = [MT_BENCH_QUESTIONS] + ([MT_BENCH_REFERENCES] if with_refs else []) + (
        [MT_BENCH_JUDGE_PROMPTS] if prompts else []) if bench == "mt_bench" else [LOGICKOR_QUESTIONS]
    first = answers[0] if answers else {}
    judge_cfg = None
    if client is not None:
        judge_cfg = {**client.config(), "prompts": sorted({j["judge_prompt"] for j in judgements}),
                     "max_tokens": MT_BENCH_JUDGE_MAX_TOKENS if bench == "mt_bench" else None,
                     "parse_retries": (0 if bench == "mt_bench" else LOGICKOR_PARSE_RETRIES)
                     if parse_retries is None else parse_retries,
                     "logickor_unparsable_zero": logickor_unparsable_zero if bench == "logickor" else None,
                     "models_reported": sorted({str(j["judge_model_reported"]) for j in judgements
                                                if j["judge_model_reported"] is not None})}
    config = {"bench": bench, "model": first.get("model", _model_name(model, tokenizer, model_dir)),
              "tokenizer_sha256": first.get("tokenizer_sha256"),
              "chat_template_sha256": first.get("chat_template_sha256"),
              "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
              "device": str(next(model.parameters()).device), "n_questions": len(answers),
              "question_ids": [a["question_id"] for a in answers], "max_new_tokens": max_new_tokens,
              "max_length": first.get("max_length"), "sampling": sampling, "seed": seed,
              "prefix_messages": list(prefix_messages or []),
              "stop_strings": first.get("decoding", {}).get("stop_strings"),
              "n_truncated_turns": sum(sum(a["truncated"]) for a in answers),
              "data_sha256": {f: _sha256(_bench_file(root, f)) for f in files}, "judge": judge_cfg,
              "timings_s": {"load": t_load - t0, "generate": t_gen - t_load,
                            "judge": time.perf_counter() - t_gen if client is not None else None}}
    results = {"config": config, "judge": judge_cfg, "answers": answers, "judgements": judgements, "scores": scores}
    if out_dir is not None:
        write_results(results, out_dir)
    return results


def write_results(results: dict, out_dir: str | Path) -> Path:
    """Write ``answers_<bench>.jsonl``, ``judgements_<bench>.jsonl`` (only if judged) and ``results_<bench>.json``
    (config, judge, scores) into ``out_dir`` atomically (``data.atomic.atomic_directory``: the folder is built beside
    ``out_dir`` and renamed into place). Files of ``out_dir`` that belong to other benchmarks are carried over, so
    MT-Bench and LogicKor can share one folder; this benchmark's old files are replaced (an old judgements file is
    dropped when the new results are unjudged)."""
    import shutil

    from data.atomic import atomic_directory

    bench = results["config"]["bench"]
    out_dir = Path(out_dir)
    mine = {f"answers_{bench}.jsonl", f"judgements_{bench}.jsonl", f"results_{bench}.json"}
    with atomic_directory(out_dir) as tmp:
        if out_dir.is_dir():
            for p in out_dir.iterdir():
                if p.name in mine:
                    continue
                if p.is_dir():
                    shutil.copytree(p, tmp / p.name, symlinks=True)
                else:
                    shutil.copy2(p, tmp / p.name, follow_symlinks=False)
        with open(tmp / f"answers_{bench}.jsonl", "w", encoding="utf-8") as f:
            for r in results["answers"]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        if results.get("judgements") is not None:
            with open(tmp / f"judgements_{bench}.jsonl", "w", encoding="utf-8") as f:
                for j in results["judgements"]:
                    f.write(json.dumps(j, ensure_ascii=False) + "\n")
        summary = {k: results.get(k) for k in ("config", "judge", "scores")}
        (tmp / f"results_{bench}.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n",
                                                   encoding="utf-8")
    return out_dir
