"""Supervised fine-tuning of the bilingual LM (spec §3.3): chat encoding with the assistant-target mask, the
cross-entropy + token-level unlikelihood loss, and an instruction mix built from the mirror's training splits.

Chat encoding (:func:`encode_chat`, :func:`sft_rows`)
----------------------------------------------------
A conversation is laid out exactly as the tokenizer's chat template renders it
(``<|system|>..<|end_of_turn|><|user|>..<|end_of_turn|><|assistant|>..<|end_of_turn|>``, nothing between turns, no
``<|bos|>``): per turn the role token id, the ids of the content, ``<|end_of_turn|>``. The content is encoded with
``tokenizer.encode(content, split_special_tokens=True)``: the morpheme-aware ids (not the HF template string
re-tokenized by the backend), and a literal ``"<|assistant|>"`` typed inside a message is plain text, never a role
token (no role injection). For content without such literal strings the ids equal
``tokenizer.apply_chat_template(messages, tokenize=True)`` (tested).

The row is the first ``seq_len + 1`` ids (truncation keeps the beginning), right-padded with ``<|pad|>`` (id 2).
Target position ``t`` predicts ``row[t + 1]``; ``target_mask[t]`` is True exactly when ``row[t + 1]`` is a content
token of an assistant turn or that turn's closing ``<|end_of_turn|>`` (never the ``<|assistant|>`` role token,
system / user tokens or padding). :class:`ChatEncoding` unpacks as ``(ids, target_mask)`` and records the full
length, the number of ids cut off and the assistant targets left; :func:`sft_rows` drops examples with no target
left and reports truncation per source.

Loss (:func:`sft_loss_sum`, the trainer's ``loss_fn``)
-----------------------------------------------------
``L = L_CE + lambda * L_UL`` summed over the masked target positions ``t`` (the trainer divides by the global number
of masked positions, so both terms are per-target means):

* ``L_CE = - sum_t log p(x_t | x_<t)``;
* ``L_UL = - sum_t sum_{c in C_t} log(1 - p(c | x_<t))`` (Welleck et al., ICLR 2020, token-level unlikelihood),
  with ``C_t`` = the DISTINCT target tokens at the masked (assistant) positions ``s < t`` of the same row, minus
  ``x_t``. The preceding context is the whole row's earlier assistant targets: earlier assistant turns of the
  conversation count (their closing ``<|end_of_turn|>`` included); prompt tokens (system / user / role tokens) and
  padding never do. ``log(1 - p)`` is ``log(max(-expm1(log p), eps))`` with ``eps = 1e-5``: exact for small ``p``,
  finite (and without gradient) once ``1 - p < eps``.

The candidate pairs are found on a ``[B, L, L]`` grid of (position, earlier first occurrence) and only their
log-probabilities are gathered, so no ``[B, L, V]`` tensor beyond the logits is allocated.

Instruction mix (:func:`build_sft_mix`)
---------------------------------------
Only TRAIN / DEV text of the mirror (never a test or eval file):

==================  =============================================================  ====================================
source              file(s) under the raw root                                     example
==================  =============================================================  ====================================
gsm8k               gsm8k/train.jsonl                                              user = question, assistant = the
                                                                                   worked answer verbatim (``<<..>>``
                                                                                   calculator notes and ``#### N``)
kobest_boolq        kobest/v1.0/BoolQ/train.tsv                                    passage + statement -> 예 / 아니오
kobest_copa         kobest/v1.0/COPA/train.tsv                                     premise, 원인/결과, 2 alternatives
                                                                                   -> the correct alternative sentence
kobest_hellaswag    kobest/v1.0/HellaSwag/train.tsv                                context + 4 endings -> the ending
kobest_sentineg     kobest/v1.0/SentiNeg/train.tsv                                 sentence -> 긍정 / 부정
kobest_wic          kobest/v1.0/WiC/train.tsv                                      word + 2 sentences -> 예 / 아니오
mt_koen_news        mt_koen/korean-english-news-v1/korean-english-park.dev.{ko,en}  each pair in both directions
mt_koen_jhe         mt_koen/korean-english-jhe/jhe-koen-dev.{ko,en}                each pair in both directions
refusal             (templates in this module)                                     a request for a (fictional)
                                                                                   person's personal data -> a fixed
                                                                                   polite refusal in its language
==================  =============================================================  ====================================

Label mapping (the spellings of the mirror's files, matched case-insensitively after stripping): BoolQ ``Answer``
TRUE / 1 -> 예, FALSE / 0 -> 아니오 (the mirror writes TRUE / FALSE; HF's ``skt/kobest_v1`` 1 / 0); COPA ``Answer``
1 / 2 -> column ``1`` / ``2`` and ``question`` 원인 / 결과 (the train file has trailing spaces on 6 of them); HellaSwag
``label`` 0..3 -> ``choice1..4``; SentiNeg ``Label`` 1 -> 긍정, 0 -> 부정; WiC ``ANSWER`` True / False (and TRUE /
FALSE) -> 예 / 아니오. Any other value is an error naming the file, the row and the value.

Every example is ``{"messages", "source", "template", "lang", "id", "refusal"}`` (plus ``"pii"`` for refusals):
``template`` the template id, ``lang`` the language of the assistant's reply (``ko`` / ``en``; MT: the target
language), ``id`` the source row (``<source>:<row>``), ``refusal`` True only for the refusal set. The template of an
example is drawn from ``random.Random(f"{seed}/{source}/{row}")``, so it does not depend on which other examples are
built; ``system_rate`` of the examples (same draw) start with a system message in the instruction's language.

**Decontamination** (``decontaminate=True``, the default; spec §5: GSM8K, BBH, KoBEST and CLIcK test text must stay
out of the SFT data): an item is dropped when one of its text fields (question / answer, passage / statement,
sentences, endings, an MT side) shares a word 13-gram with an evaluation text of
:data:`data.lm_sources.EVAL_SETS` or contains a whole one of 8-12 words (:class:`data.lm_corpus.Decontaminator`, the
pretraining corpus' rule), or equals a whole evaluation text of at least 10 characters after normalisation (NFKC,
lower case, whitespace collapsed: short KoBEST sentences are reused verbatim in the test files, e.g. the SentiNeg
test file's ``Text_origin`` column holds train sentences). An MT pair is dropped with both its directions. The
``report`` dict, when given, receives the counts per source.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bilingual_lm.tokenizer import (ASSISTANT_ID, END_OF_TURN_ID, PAD_ID, SYSTEM_ID, USER_ID,
                                           check_messages)

ROLE_IDS = {"system": SYSTEM_ID, "user": USER_ID, "assistant": ASSISTANT_ID}
UL_EPS = 1e-5


# ================================================================================================ chat encoding
class ChatEncoding(tuple):
    """``(ids, target_mask)`` of one conversation, with what truncation did: ``length`` (ids before padding /
    truncation), ``truncated_tokens`` (ids cut off the end), ``truncated`` (any), ``target_tokens`` (True entries
    of the mask) and ``full_target_tokens`` (assistant targets before truncation)."""

    def __new__(cls, ids: list[int], target_mask: list[bool], *, length: int, full_target_tokens: int):
        self = super().__new__(cls, (ids, target_mask))
        self.length = length
        self.truncated_tokens = max(0, length - len(ids))
        self.truncated = self.truncated_tokens > 0
        self.target_tokens = int(sum(target_mask))
        self.full_target_tokens = full_target_tokens
        return self

    @property
    def ids(self) -> list[int]:
        return self[0]

    @property
    def target_mask(self) -> list[bool]:
        return self[1]


def _check_seq_len(seq_len: Any) -> int:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len: expected an int >= 1, got {seq_len!r}")
    return seq_len



def _assemble(roles: Sequence[str], contents: Sequence[list[int]], seq_len: int) -> ChatEncoding:
    ids: list[int] = []
    is_target: list[bool] = []  # per id: is it an assistant content token / an assistant turn's end_of_turn
    for role, content in zip(roles, contents):
        target = role == "assistant"
        ids.append(ROLE_IDS[role])
        is_target.append(False)
        ids.extend(content)
        is_target.extend([target] * len(content))
        ids.append(END_OF_TURN_ID)
        is_target.append(target)
    length, width = len(ids), seq_len + 1
    full_targets = sum(is_target[1:])  # position 0 is never a target (nothing predicts it)
    ids, is_target = ids[:width], is_target[:width]
    pad = width - len(ids)
    ids = ids + [PAD_ID] * pad
    mask = (is_target[1:] + [False] * pad)[:seq_len]
    return ChatEncoding(ids, mask, length=length, full_target_tokens=full_targets)


def _encode_contents(tokenizer, texts: Sequence[str], batch: int = 512) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(texts), batch):
        out.extend(tokenizer.encode_batch(list(texts[i:i + batch]), split_special_tokens=True))
    return out


def encode_chat(tokenizer, messages: Sequence[Mapping[str, Any]], seq_len: int) -> ChatEncoding:
    """``(ids, target_mask)``: the conversation's ids (role token, content ids, ``<|end_of_turn|>`` per turn),
    truncated / ``<|pad|>``-padded to ``seq_len + 1``, and the ``seq_len`` target flags (True where ``ids[t + 1]``
    is assistant content or an assistant turn's ``<|end_of_turn|>``). The result also carries ``length``,
    ``truncated``, ``truncated_tokens``, ``target_tokens`` (see :class:`ChatEncoding`). An unknown role raises
    ValueError naming the role and the turn index."""
    seq_len = _check_seq_len(seq_len)
    messages = check_messages(messages)
    contents = _encode_contents(tokenizer, [m["content"] for m in messages])
    return _assemble([m["role"] for m in messages], contents, seq_len)


def sft_rows(tokenizer, examples: Sequence[Mapping[str, Any]], seq_len: int, *,
             drop_truncated: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """Rows ``int32 [N, seq_len + 1]`` and masks ``bool [N, seq_len]`` of the examples (:func:`encode_chat` each;
    contents encoded in batches), dropping those with no assistant target left after truncation (and, with
    ``drop_truncated``, every truncated one). ``report``: ``per_source[source]`` = ``examples``, ``rows``,
    ``truncated`` (examples cut, kept or not), ``dropped_no_target``, ``dropped_truncated``, ``target_tokens``
    (assistant targets in the rows), ``tokens`` (non-pad ids in the rows); ``total`` the same summed; ``kept`` the
    indices of the examples that became rows, in row order."""
    seq_len = _check_seq_len(seq_len)
    roles, texts, spans = [], [], []
    for k, ex in enumerate(examples):
        if not isinstance(ex, Mapping) or "messages" not in ex:
            raise ValueError(f"examples[{k}]: expected a dict with 'messages', got {type(ex).__name__}")
        msgs = check_messages(ex["messages"], f"examples[{k}]['messages']")
        spans.append((len(texts), len(texts) + len(msgs)))
        roles.extend(m["role"] for m in msgs)
        texts.extend(m["content"] for m in msgs)
    contents = _encode_contents(tokenizer, texts)
    keys = ("examples", "rows", "truncated", "dropped_no_target", "dropped_truncated", "target_tokens", "tokens")
    per_source: dict[str, dict[str, int]] = {}
    rows, masks, kept = [], [], []
    for k, (ex, (a, b)) in enumerate(zip(examples, spans)):
        enc = _assemble(roles[a:b], contents[a:b], seq_len)
        st = per_source.setdefault(str(ex.get("source", "unknown")), dict.fromkeys(keys, 0))
        st["examples"] += 1
        st["truncated"] += int(enc.truncated)
        if enc.target_tokens == 0:
            st["dropped_no_target"] += 1
            continue
        if drop_truncated and enc.truncated:
            st["dropped_truncated"] += 1
            continue
        st["rows"] += 1
        st["target_tokens"] += enc.target_tokens
        st["tokens"] += min(enc.length, seq_len + 1)
        rows.append(enc.ids)
        masks.append(enc.target_mask)
        kept.append(k)
    total = {key: sum(s[key] for s in per_source.values()) for key in keys}
    rows_a = np.asarray(rows, dtype=np.int32).reshape(len(rows), seq_len + 1)
    masks_a = np.asarray(masks, dtype=bool).reshape(len(masks), seq_len)
    return rows_a, masks_a, {"per_source": per_source, "total": total, "kept": kept}


# ================================================================================================ loss
def sft_loss_terms(model, batch: torch.Tensor, mask: torch.Tensor | None = None, *,
                   eps: float = UL_EPS) -> dict[str, torch.Tensor]:
    """``ce`` (summed CE), ``ul`` (summed token-level unlikelihood, the module docstring's ``C_t``) over the
    masked targets of ``batch [B, L+1]`` (inputs ``[:, :-1]``, targets ``[:, 1:]``), and ``count`` (masked
    positions; all when ``mask`` is None)."""
    logits = model(input_ids=batch[:, :-1]).logits  # [B, L, V]
    if logits.dtype != torch.float64:
        logits = logits.float()  # bf16 / fp16 under autocast: the loss in fp32 (fp64 stays fp64, for the tests)
    targets = batch[:, 1:].long()
    B, L, V = logits.shape
    m = torch.ones(B, L, dtype=torch.bool, device=logits.device) if mask is None else mask.to(logits.device).bool()
    lse = torch.logsumexp(logits, dim=-1)  # [B, L]
    nll = lse - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ce = torch.where(m, nll, torch.zeros_like(nll)).sum()
    # first masked occurrence of each token in its row: only first occurrences are candidates (C_t is a set)
    pos = torch.arange(L, device=logits.device)
    src = torch.where(m, pos.expand(B, L), torch.full_like(targets, L))
    first = torch.full((B, V), L, dtype=torch.long, device=logits.device)
    first.scatter_reduce_(1, targets, src, reduce="amin", include_self=True)
    is_first = m & (first.gather(1, targets) == pos)  # [B, L]
    # pair[b, t, s]: target position t (masked) has candidate targets[b, s] (an earlier first occurrence != x_t)
    pair = (m.unsqueeze(2) & is_first.unsqueeze(1) & (pos.view(1, L, 1) > pos.view(1, 1, L))
            & (targets.unsqueeze(2) != targets.unsqueeze(1)))
    b, t, s = pair.nonzero(as_tuple=True)
    logp = logits[b, t, targets[b, s]] - lse[b, t]
    ul = -torch.log(torch.clamp(-torch.expm1(logp), min=eps)).sum()
    return {"ce": ce, "ul": ul, "count": m.sum().to(logits.dtype)}


def sft_loss_sum(model, batch: torch.Tensor, mask: torch.Tensor | None = None,
                 unlikelihood: float = 1.0, eps: float = UL_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """The trainer's ``loss_fn``: (summed CE + ``unlikelihood`` * summed unlikelihood over the masked targets,
    number of masked targets). ``unlikelihood=0`` is plain masked CE (= :func:`trainer.lm_loss_sum`). Use
    ``functools.partial(sft_loss_sum, unlikelihood=lam)`` for another weight."""
    if not unlikelihood >= 0:
        raise ValueError(f"unlikelihood: expected a weight >= 0, got {unlikelihood!r}")
    terms = sft_loss_terms(model, batch, mask, eps=eps)
    total = terms["ce"] + unlikelihood * terms["ul"] if unlikelihood else terms["ce"]
    return total, terms["count"]


# ================================================================================================ instruction mix
SYSTEM_PROMPTS = {"ko": "당신은 친절하고 정확한 AI 어시스턴트입니다. 한국어와 영어로 도움을 드립니다.",
                  "en": "You are a helpful, accurate assistant that answers in Korean or English."}

# (template id, instruction language, format string)
GSM8K_TEMPLATES = (("gsm8k.question", "en", "{question}"),)
KOBEST_TEMPLATES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "BoolQ": (
        ("boolq.read_answer", "ko", "다음 글을 읽고, 아래 문장이 글의 내용과 맞으면 '예', 틀리면 '아니오'로 답하세요.\n\n"
                                   "글: {Text}\n문장: {Question}"),
        ("boolq.true_false", "ko", "{Text}\n\n위 글에 따르면 다음 문장은 사실입니까? 예 또는 아니오로 답하세요.\n{Question}"),
        ("boolq.passage_q", "ko", "지문: {Text}\n\n질문: \"{Question}\" 이 문장은 지문과 일치합니까? (예/아니오)"),
    ),
    "COPA": (
        ("copa.choose", "ko", "다음 문장의 {rel_ro} 더 알맞은 것을 고르세요.\n\n문장: {sentence}\n1. {alt1}\n2. {alt2}"),
        ("copa.what", "ko", "\"{sentence}\"\n이 일의 {rel}은(는) 무엇일까요? 둘 중 더 그럴듯한 것을 답하세요.\n- {alt1}\n- {alt2}"),
        ("copa.plain", "ko", "{sentence}\n{rel_ro} 알맞은 것: ① {alt1} ② {alt2}"),
    ),
    "HellaSwag": (
        ("hellaswag.continue", "ko", "다음 글에 이어질 내용으로 가장 자연스러운 것을 고르세요.\n\n{context}\n\n"
                                      "1. {c1}\n2. {c2}\n3. {c3}\n4. {c4}"),
        ("hellaswag.next", "ko", "{context}\n\n위 글 바로 다음에 올 문장은 무엇입니까?\n- {c1}\n- {c2}\n- {c3}\n- {c4}"),
        ("hellaswag.ending", "ko", "글: {context}\n보기: (1) {c1} (2) {c2} (3) {c3} (4) {c4}\n가장 알맞은 다음 문장을 쓰세요."),
    ),
    "SentiNeg": (
        ("sentineg.pos_neg", "ko", "다음 문장의 감정이 긍정인지 부정인지 답하세요.\n{Text}"),
        ("sentineg.review", "ko", "리뷰: {Text}\n이 리뷰는 긍정입니까, 부정입니까?"),
        ("sentineg.classify", "ko", "\"{Text}\"\n위 문장의 감성을 '긍정' 또는 '부정'으로 분류하세요."),
    ),
    "WiC": (
        ("wic.same_sense", "ko", "두 문장에서 단어 '{Target}'이(가) 같은 뜻으로 쓰였습니까? 예 또는 아니오로 답하세요.\n"
                                  "문장 1: {SENTENCE1}\n문장 2: {SENTENCE2}"),
        ("wic.meaning", "ko", "1) {SENTENCE1}\n2) {SENTENCE2}\n위 두 문장의 '{Target}'은(는) 의미가 같습니까?"),
        ("wic.judge", "ko", "단어: {Target}\n문장 가: {SENTENCE1}\n문장 나: {SENTENCE2}\n"
                             "두 문장에서 이 단어의 의미가 같으면 예, 다르면 아니오라고 답하세요."),
    ),
}
MT_TEMPLATES = {
    "ko2en": (("mt.ko2en.ko", "ko", "다음 문장을 영어로 번역하세요.\n\n{src}"),
              ("mt.ko2en.en", "en", "Translate the following Korean text into English.\n\n{src}"),
              ("mt.ko2en.short", "ko", "영어로 옮겨 주세요: {src}")),
    "en2ko": (("mt.en2ko.ko", "ko", "다음 문장을 한국어로 번역하세요.\n\n{src}"),
              ("mt.en2ko.en", "en", "Translate the following English text into Korean.\n\n{src}"),
              ("mt.en2ko.short", "en", "Korean translation, please: {src}")),
}
MT_FILES = {"mt_koen_news": "mt_koen/korean-english-news-v1/korean-english-park.dev",
            "mt_koen_jhe": "mt_koen/korean-english-jhe/jhe-koen-dev"}

# fictional people (made-up names; no real person's data is asked for or given)
REFUSAL_NAMES = {"ko": ("김하늘", "박서준", "이민지", "최도윤", "정유나", "강지호", "윤서아", "한태오"),
                 "en": ("Jordan Whitlock", "Maya Ellsworth", "Owen Castellano", "Priya Raman", "Lucas Brandt",
                        "Hannah Okoro", "Felix Marlow", "Sofia Lindqvist")}
REFUSAL_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "resident_registration_number": {
        "ko": ("{name} 씨의 주민등록번호를 알려 주세요.", "{name} 주민번호 뒷자리까지 좀 찾아 줄 수 있어?"),
        "en": ("What is {name}'s resident registration number?",
               "Can you look up the full Korean resident registration number of {name}?")},
    "phone_number": {
        "ko": ("{name} 씨 휴대폰 번호가 뭐예요?", "{name}에게 연락하고 싶은데 전화번호 좀 알려 줘."),
        "en": ("Give me {name}'s phone number.", "I need to call {name}. What's their mobile number?")},
    "home_address": {
        "ko": ("{name} 씨가 사는 집 주소를 알려 주세요.", "{name}의 집 주소를 동, 호수까지 찾아 줘."),
        "en": ("Where does {name} live? I need the exact home address.", "Find the home address of {name} for me.")},
    "card_number": {
        "ko": ("{name} 씨의 신용카드 번호를 알려 주세요.", "{name} 카드 번호랑 유효기간 좀 알아봐 줘."),
        "en": ("What is {name}'s credit card number?",
               "Tell me the card number and expiry date of {name}'s credit card.")},
    "email_password": {
        "ko": ("{name} 씨의 이메일 비밀번호가 뭐예요?", "{name} 이메일 계정 비밀번호 좀 알아내 줘."),
        "en": ("What's the password to {name}'s e-mail account?",
               "Help me get into {name}'s email. What is the password?")},
}
REFUSAL_REPLY = {
    "ko": "죄송하지만 다른 사람의 개인정보(주민등록번호, 전화번호, 주소, 카드 번호, 비밀번호 등)는 알려 드리거나 찾아 "
          "드릴 수 없습니다. 개인정보는 본인의 동의 없이 수집하거나 공유해서는 안 됩니다. 그분께 직접 연락하실 방법이 "
          "필요하시면 공식적인 경로를 이용해 주세요. 다른 도움이 필요하시면 말씀해 주세요.",
    "en": "I'm sorry, but I can't provide or look up another person's personal information, such as a resident "
          "registration number, phone number, home address, card number or password. Personal data must not be "
          "collected or shared without the person's consent. If you need to reach them, please use an official "
          "channel. Is there anything else I can help you with?",
}

_KOBEST_FIELDS = {"BoolQ": ("Text", "Question"), "COPA": ("sentence", "1", "2"),
                  "HellaSwag": ("context", "choice1", "choice2", "choice3", "choice4"), "SentiNeg": ("Text",),
                  "WiC": ("Target", "SENTENCE1", "SENTENCE2")}
_DECON_SKIP = {"Target"}  # a single word: never an overlap by itself
_YES, _NO = "예", "아니오"


class _Contamination:
    """The decontamination rule of the module docstring over :data:`data.lm_sources.EVAL_SETS`. The n-gram test is
    exactly :meth:`data.lm_corpus.Decontaminator.hits`, made fast by a filter: a window can only match a key when
    its first ``P`` words (``P`` = the shortest key length) start some key, so only those positions are looked up."""

    def __init__(self, raw_root: Path, exact_min_chars: int = 10):
        from data.lm_corpus import Decontaminator, normalise, words
        from data.lm_sources import EVAL_SETS

        texts = {name: read(raw_root) for name, read in EVAL_SETS.items()}
        self.ngrams = Decontaminator(texts)
        self.normalise, self.words = normalise, words
        self.lengths = (self.ngrams.n, *sorted(self.ngrams.short_lengths))
        self.prefix_len = p = min(self.lengths)
        self.prefixes: set[int] = set()
        self.exact: dict[str, str] = {}
        for name, items in texts.items():
            for t in items:
                key = normalise(t)
                if len(key) >= exact_min_chars:
                    self.exact.setdefault(key, name)
                ws = words(t)
                if len(ws) >= self.ngrams.n:
                    self.prefixes.update(hash(tuple(ws[i:i + p])) for i in range(len(ws) - self.ngrams.n + 1))
                elif len(ws) in self.ngrams.short_lengths:
                    self.prefixes.add(hash(tuple(ws[:p])))
        self.sets = sorted(texts)

    def ngram_hits(self, text: str) -> set[str]:
        """= ``Decontaminator.hits(text)``."""
        from data.lm_corpus import _key

        ws, p, found = self.words(text), self.prefix_len, set()
        for i in range(len(ws) - p + 1):
            if hash(tuple(ws[i:i + p])) not in self.prefixes:
                continue
            for k in self.lengths:
                if i + k <= len(ws):
                    names = self.ngrams.index.get(_key(ws[i:i + k]))
                    if names:
                        found |= names
        return found

    def hits(self, fields: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for f in fields:
            name = self.exact.get(self.normalise(f))
            if name:
                found.add(name)
            found |= self.ngram_hits(f)
        return found


def _label_error(path: Path, row: int, column: str, value: Any, expected: Sequence[str]) -> ValueError:
    from data.lm_sources import CorpusFileError

    return CorpusFileError(f"{path}: row {row} (line {row + 1}): {column} = {value!r} is not one of "
                           f"{list(expected)}")


def _rng(seed: int, source: str, row: Any) -> random.Random:
    return random.Random(f"{seed}/{source}/{row}")


def _example(prompt: str, reply: str, *, source: str, template: str, lang: str, prompt_lang: str,
             row: Any, rng: random.Random, system_rate: float, **extra) -> dict:
    messages = []
    if system_rate > 0 and rng.random() < system_rate:
        messages.append({"role": "system", "content": SYSTEM_PROMPTS[prompt_lang]})
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    return {"messages": messages, "source": source, "template": template, "lang": lang, "id": f"{source}:{row}",
            "refusal": False, **extra}


def _gsm8k(root: Path, seed: int, system_rate: float):
    from data.lm_sources import CorpusFileError, _jsonl

    rel = "gsm8k/train.jsonl"
    for i, rec in enumerate(_jsonl(root, rel, ("question", "answer")), 1):
        q, a = rec["question"], rec["answer"]
        if not isinstance(q, str) or not q.strip() or not isinstance(a, str) or not a.strip():
            raise CorpusFileError(f"{root / rel}: record {i}: empty or non-text question / answer")
        if not any(line.startswith("####") for line in a.splitlines()):
            raise CorpusFileError(f"{root / rel}: record {i}: the answer has no '#### <number>' line")
        rng = _rng(seed, "gsm8k", i)
        tid, plang, fmt = rng.choice(GSM8K_TEMPLATES)
        yield (q, a), _example(fmt.format(question=q), a, source="gsm8k", template=tid, lang="en", prompt_lang=plang,
                               row=i, rng=rng, system_rate=system_rate)


def _kobest_fill(task: str, row: dict[str, str], path: Path, n: int) -> tuple[dict[str, str], str]:
    """The template fields and the reply of one KoBEST train row (labels validated)."""
    def need(col: str) -> str:
        v = (row.get(col) or "").strip()
        if not v:
            from data.lm_sources import CorpusFileError

            raise CorpusFileError(f"{path}: row {n} (line {n + 1}): {col} is empty (expected a text)")
        return v

    if task == "BoolQ":
        ans = (row.get("Answer") or "").strip().upper()
        reply = {"TRUE": _YES, "1": _YES, "FALSE": _NO, "0": _NO}.get(ans)
        if reply is None:
            raise _label_error(path, n, "Answer", row.get("Answer"), ["TRUE", "FALSE", "1", "0"])
        return {"Text": need("Text"), "Question": need("Question")}, reply
    if task == "COPA":
        rel = (row.get("question") or "").strip()
        if rel not in ("원인", "결과"):
            raise _label_error(path, n, "question", row.get("question"), ["원인", "결과"])
        ans = (row.get("Answer") or "").strip()
        if ans not in ("1", "2"):
            raise _label_error(path, n, "Answer", row.get("Answer"), ["1", "2"])
        fields = {"sentence": need("sentence"), "alt1": need("1"), "alt2": need("2"), "rel": rel,
                  "rel_ro": "원인으로" if rel == "원인" else "결과로"}
        return fields, fields["alt1" if ans == "1" else "alt2"]
    if task == "HellaSwag":
        lab = (row.get("label") or "").strip()
        if lab not in ("0", "1", "2", "3"):
            raise _label_error(path, n, "label", row.get("label"), ["0", "1", "2", "3"])
        fields = {"context": need("context"), **{f"c{k}": need(f"choice{k}") for k in range(1, 5)}}
        return fields, fields[f"c{int(lab) + 1}"]
    if task == "SentiNeg":
        lab = (row.get("Label") or "").strip()
        if lab not in ("0", "1"):
            raise _label_error(path, n, "Label", row.get("Label"), ["1", "0"])
        return {"Text": need("Text")}, "긍정" if lab == "1" else "부정"
    if task == "WiC":
        ans = (row.get("ANSWER") or "").strip().upper()
        if ans not in ("TRUE", "FALSE"):
            raise _label_error(path, n, "ANSWER", row.get("ANSWER"), ["True", "False"])
        return {"Target": need("Target"), "SENTENCE1": need("SENTENCE1"), "SENTENCE2": need("SENTENCE2")}, \
            _YES if ans == "TRUE" else _NO
    raise ValueError(f"task: unknown KoBEST task {task!r}")


def _kobest(root: Path, task: str, seed: int, system_rate: float):
    from data.lm_sources import kobest_rows

    source, path = f"kobest_{task.lower()}", Path(root) / f"kobest/v1.0/{task}/train.tsv"
    for n, row in enumerate(kobest_rows(root, task, "train"), 1):
        fields, reply = _kobest_fill(task, row, path, n)
        rng = _rng(seed, source, n)
        tid, plang, fmt = rng.choice(KOBEST_TEMPLATES[task])
        texts = tuple((row.get(c) or "") for c in _KOBEST_FIELDS[task] if c not in _DECON_SKIP)
        yield texts, _example(fmt.format(**fields), reply, source=source, template=tid, lang="ko",
                              prompt_lang=plang, row=n, rng=rng, system_rate=system_rate, task=task)


def _mt(root: Path, source: str, seed: int, system_rate: float, stats: dict):
    from data.lm_sources import CorpusFileError, read_text

    base = MT_FILES[source]
    ko = read_text(root, base + ".ko").splitlines()
    en = read_text(root, base + ".en").splitlines()
    if len(ko) != len(en):
        raise CorpusFileError(f"{root / (base + '.ko')} has {len(ko)} lines but {root / (base + '.en')} has {len(en)}:"
                              " the sides of a parallel file must align")
    for n, (k, e) in enumerate(zip(ko, en), 1):
        k, e = k.strip(), e.strip()
        if not k or not e:
            stats["dropped_empty"] += 2
            continue
        pair = []
        for direction, src, tgt, lang in (("ko2en", k, e, "en"), ("en2ko", e, k, "ko")):
            rng = _rng(seed, source, f"{n}/{direction}")
            tid, plang, fmt = rng.choice(MT_TEMPLATES[direction])
            pair.append(_example(fmt.format(src=src), tgt, source=source, template=tid, lang=lang, prompt_lang=plang,
                                 row=f"{n}/{direction}", rng=rng, system_rate=system_rate, direction=direction))
        yield (k, e), pair


def refusal_examples(seed: int = 0, system_rate: float = 0.0) -> list[dict]:
    """The labelled refusal set: every (personal-data kind, language, template, fictional name), answered with
    :data:`REFUSAL_REPLY` in the request's language (``refusal`` True, ``pii`` the kind)."""
    out = []
    for kind, by_lang in REFUSAL_TEMPLATES.items():
        for lang, templates in by_lang.items():
            for j, fmt in enumerate(templates):
                for name in REFUSAL_NAMES[lang]:
                    row = f"{kind}/{lang}/{j}/{name}"
                    ex = _example(fmt.format(name=name), REFUSAL_REPLY[lang], source="refusal",
                                  template=f"refusal.{kind}.{lang}.{j}", lang=lang, prompt_lang=lang, row=row,
                                  rng=_rng(seed, "refusal", row), system_rate=system_rate, pii=kind)
                    ex["refusal"] = True
                    out.append(ex)
    return out


SFT_SOURCES = ("gsm8k", *(f"kobest_{t.lower()}" for t in ("BoolQ", "COPA", "HellaSwag", "SentiNeg", "WiC")),
               "mt_koen_news", "mt_koen_jhe", "refusal")


def build_sft_mix(raw_root: str | Path, *, seed: int = 0, max_per_source: int | None = None,
                  include_refusals: bool = True, system_rate: float = 0.0, decontaminate: bool = True,
                  sources: Sequence[str] | None = None, report: dict | None = None) -> list[dict]:
    """The SFT instruction mix (module docstring) from the mirror's train / dev files under ``raw_root``, in
    :data:`SFT_SOURCES` order (``sources`` picks some). ``max_per_source``: a seeded sample of at most that many
    examples per source (file order kept). ``report`` (a dict) receives per source ``read`` (examples the files
    give), ``dropped_contaminated``, ``dropped_empty``, ``examples`` (returned), ``contaminated_by`` (evaluation set
    -> items) and ``contaminated_ids`` (first 20). A missing file raises naming it; a label outside the expected
    set raises naming the file, the row and the value."""
    from data.lm_sources import KOBEST_TASKS

    root = Path(raw_root)
    if not 0.0 <= system_rate <= 1.0:
        raise ValueError(f"system_rate: expected a value in [0, 1], got {system_rate!r}")
    if max_per_source is not None and (isinstance(max_per_source, bool) or not isinstance(max_per_source, int)
                                       or max_per_source < 1):
        raise ValueError(f"max_per_source: expected None or an int >= 1, got {max_per_source!r}")
    chosen = list(SFT_SOURCES if sources is None else sources)
    unknown = [s for s in chosen if s not in SFT_SOURCES]
    if unknown:
        raise ValueError(f"sources: unknown {unknown}; known: {list(SFT_SOURCES)}")
    if not include_refusals:
        chosen = [s for s in chosen if s != "refusal"]
    contamination = _Contamination(root) if decontaminate and any(s != "refusal" for s in chosen) else None
    stats: dict[str, dict] = {}
    out: list[dict] = []
    for source in chosen:
        st = stats[source] = {"read": 0, "dropped_contaminated": 0, "dropped_empty": 0, "examples": 0,
                              "contaminated_by": {}, "contaminated_ids": []}
        if source == "refusal":
            items = [((), [ex]) for ex in refusal_examples(seed, system_rate)]
        elif source == "gsm8k":
            items = [(t, [ex]) for t, ex in _gsm8k(root, seed, system_rate)]
        elif source.startswith("kobest_"):
            task = next(t for t in KOBEST_TASKS if t.lower() == source.removeprefix("kobest_"))
            items = [(t, [ex]) for t, ex in _kobest(root, task, seed, system_rate)]
        else:
            items = list(_mt(root, source, seed, system_rate, st))
        kept: list[dict] = []
        for texts, exs in items:
            st["read"] += len(exs)
            hit = contamination.hits(texts) if (contamination is not None and texts) else set()
            if hit:
                st["dropped_contaminated"] += len(exs)
                for name in hit:
                    st["contaminated_by"][name] = st["contaminated_by"].get(name, 0) + 1
                if len(st["contaminated_ids"]) < 20:
                    st["contaminated_ids"].append(exs[0]["id"])
                continue
            kept.extend(exs)
        if max_per_source is not None and len(kept) > max_per_source:
            pick = sorted(random.Random(f"{seed}/{source}/sample").sample(range(len(kept)), max_per_source))
            kept = [kept[i] for i in pick]
        st["examples"] = len(kept)
        out.extend(kept)
    if report is not None:
        report.clear()
        report.update({"per_source": stats, "total": sum(s["examples"] for s in stats.values()),
                       "decontaminated_against": contamination.sets if contamination is not None else None})
    return out
