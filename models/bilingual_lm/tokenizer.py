"""Morpheme-aware byte-level BPE of the bilingual LM (spec §3.1), and the plain byte-level BPE baseline.

How a text becomes ids (the same steps at training and at inference)
--------------------------------------------------------------------
1. **Special tokens.** The literal strings of :data:`SPECIAL_TOKENS` are cut out first and become their fixed ids
   0..9 (as the Hugging Face fast tokenizer does; ``split_special_tokens=True`` treats them as plain text).
2. **Script split** (both variants). :data:`SPLIT_PATTERN`, the GPT-2 regex with its one letter class split into
   Hangul / Latin / other letters, cuts at whitespace (a single leading space stays with the following piece, as in
   GPT-2; the GPT-2 whitespace rules ``\\s+(?!\\S)|\\s+`` otherwise), at script changes (Hangul, Latin letters,
   digits, other letters, punctuation / symbols) and before the English contractions. The split is done by
   ``tokenizers``' own ``Split`` pre-tokenizer (Oniguruma), the very object serialised into ``tokenizer.json``, so
   the Python split and the saved one are identical by construction.
3. **Morpheme split** (``morpheme_aware=True`` only). Inside a Hangul run the piece is cut again at kiwipiepy
   morpheme starts (``Kiwi().tokenize``). Contracted forms have overlapping spans ('나온다' -> 나오 [0,2) + ᆫ다
   [1,3)): a token start is a cut only when it is >= the end of every earlier token of the chunk, so no cut falls
   inside an overlap ('나온다' stays whole, '했다' -> 했|다, '갔어요' -> 갔|어요). A cut is made only between two
   Hangul characters (never between the leading space and the word, never before a conjoining medial / final jamo).
   Kiwi sees the text one line at a time (lines over ``chunk_chars`` are cut at a whitespace), so memory stays
   bounded and the analysis of a line does not depend on the rest of the document; one shared ``Kiwi(num_workers=0)``
   is built lazily (it takes seconds).
4. **Encoding.** Each piece is its own BPE word: ``backend.encode_batch(pieces_per_text, is_pretokenized=True)``,
   i.e. the saved pre-tokenizer (Split + ByteLevel) runs on every piece separately (a no-op re-split: the pieces are
   its own output), then the BPE model, and the ids are concatenated in order. The plain baseline needs no Python
   step: the backend's own pipeline gives the same pieces (checked in the tests), so it is encoded directly.

All splits only cut: ``"".join(pieces) == text`` is checked for every text, and byte-level BPE over the 256-byte
alphabet then decodes losslessly.

**Training** (:func:`train_tokenizer`) feeds ``tokenizers.trainers.BpeTrainer`` exactly these pieces, each piece a
separate training string (special-token strings dropped: they are never BPE words). The trainer's word counter runs
the same pre-tokenizer on each string, so the words the merges are learned on are the words encoded at inference:
no merge crosses a cut and the training-time ids are the inference ids (proved in the tests against the trainer's
own pre-tokenizer + ``model.tokenize``).

**Saved directory** (:meth:`BilingualTokenizer.save_pretrained`): a transformers fast tokenizer (``tokenizer.json``,
``tokenizer_config.json`` with bos ``<|bos|>``, eos ``<|eos|>``, pad ``<|pad|>``, ``chat_template.jinja``) plus
:data:`METADATA_FILE` (variant, split pattern, kiwipiepy / kiwipiepy-model versions and Kiwi model type, vocabulary
size and hash). A Python pre-tokenizer cannot be serialised (spec pitfall), so ``tokenizer.json`` holds steps 1, 2
and 4 only: ``AutoTokenizer.from_pretrained(dir)`` loads and works on its own (byte-level, lossless), and for the
plain baseline its ids are the wrapper's; for a morpheme-aware tokenizer it does not cut at morphemes, so its ids
differ on Hangul text. Use :func:`load_tokenizer` (the analyser is a runtime dependency) for model inputs; it checks
the vocabulary hash and warns (``strict=True``: raises) when the installed kiwipiepy differs from the recorded one,
because another analyser version may cut differently.

No bos / eos is added unless asked (``add_bos`` / ``add_eos``); ``tokenizer.json`` has no post-processor.
The chat template renders ``<|system|>..<|end_of_turn|><|user|>..<|end_of_turn|><|assistant|>..<|end_of_turn|>``
with nothing between the turns; ``add_generation_prompt`` appends ``<|assistant|>``.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import re
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
                  "<|system|>", "<|user|>", "<|assistant|>", "<|end_of_turn|>")
(BOS_ID, EOS_ID, PAD_ID, FIM_PREFIX_ID, FIM_SUFFIX_ID, FIM_MIDDLE_ID,
 SYSTEM_ID, USER_ID, ASSISTANT_ID, END_OF_TURN_ID) = range(len(SPECIAL_TOKENS))
SPECIAL_IDS = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256 + 1  # the specials, the byte alphabet, at least one merge
CHAT_ROLES = ("system", "user", "assistant")
METADATA_FILE = "bilingual_tokenizer.json"
FORMAT_VERSION = 1
CHUNK_CHARS = 2000  # the longest text Kiwi analyses at once (a line, or a piece of a longer line)

# GPT-2's pre-tokenizer regex with \p{L} split by script: contractions, Hangul, Latin, other letters, digits,
# punctuation/symbols, whitespace. Applied with tokenizers' Split(behavior="isolated"): it only cuts.
SPLIT_PATTERN = (r"'(?:[sdmt]|ll|ve|re)"
                 r"| ?\p{Hangul}+"
                 r"| ?\p{Latin}+"
                 r"| ?(?:(?![\p{Hangul}\p{Latin}])\p{L})+"
                 r"| ?\p{N}+"
                 r"| ?[^\s\p{L}\p{N}]+"
                 r"|\s+(?!\S)|\s+")

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('unknown chat role ' ~ message['role'] ~ ' (expected system, user or assistant)') -}}"
    "{%- endif -%}"
    "{{- '<|' ~ message['role'] ~ '|>' ~ message['content'] ~ '<|end_of_turn|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)

_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
# Hangul jamo, compatibility jamo, jamo extended-A, syllables, jamo extended-B
_HANGUL_RE = re.compile("[\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7ff]")


def _is_hangul(ch: str) -> bool:
    o = ord(ch)
    return 0xAC00 <= o <= 0xD7FF or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F or 0xA960 <= o <= 0xA97F


def _is_jamo_tail(ch: str) -> bool:  # conjoining medial / final jamo: part of the syllable before it
    o = ord(ch)
    return 0x1160 <= o <= 0x11FF or 0xD7B0 <= o <= 0xD7FF


# ----------------------------------------------------------------------------------------------- validation
def _check_texts(texts: Any, name: str) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise ValueError(f"{name}: expected a sequence of str, got a single {type(texts).__name__}")
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f"{name}: expected a sequence of str, got {type(texts).__name__}") from None
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{name}[{i}]: expected str, got {type(t).__name__}")
    return texts


def _check_text(text: Any, name: str = "text") -> str:
    if not isinstance(text, str):
        raise ValueError(f"{name}: expected str, got {type(text).__name__}")
    return text


def _check_vocab_size(vocab_size: Any) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ValueError(f"vocab_size: expected an int, got {type(vocab_size).__name__}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size={vocab_size} is too small: it must be >= {MIN_VOCAB_SIZE} "
                         f"({len(SPECIAL_TOKENS)} special tokens + 256 bytes + at least one merge)")
    return vocab_size


# ----------------------------------------------------------------------------------------------- analyser
_KIWI = None
_KIWI_LOCK = threading.RLock()


def get_kiwi():
    """The one shared ``kiwipiepy.Kiwi`` (single-threaded, default model), built on first use."""
    global _KIWI
    if _KIWI is None:
        with _KIWI_LOCK:
            if _KIWI is None:
                try:
                    from kiwipiepy import Kiwi
                except ImportError as e:  # pragma: no cover - the project installs it
                    raise ImportError("a morpheme-aware tokenizer needs kiwipiepy and kiwipiepy-model") from e
                _KIWI = Kiwi(num_workers=0)
    return _KIWI


def analyser_info(build: bool = True) -> dict[str, Any]:
    """What decides the morpheme cuts: the analyser and model versions (and, with ``build``, Kiwi's model type)."""
    from importlib.metadata import PackageNotFoundError, version

    def _v(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    info: dict[str, Any] = {"analyser": "kiwipiepy", "kiwipiepy_version": _v("kiwipiepy"),
                            "kiwipiepy_model_version": _v("kiwipiepy-model"), "chunk": "line"}
    if build:
        info["kiwi_model_type"] = str(get_kiwi().model_type)
    return info


# ----------------------------------------------------------------------------------------------- pre-split
@functools.lru_cache(maxsize=8)
def _splitter(pattern: str):
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False)


def _script_spans(text: str, pattern: str) -> list[tuple[int, int]]:
    return [span for _, span in _splitter(pattern).pre_tokenize_str(text)] if text else []


def _chunks(text: str, chunk_chars: int) -> Iterable[tuple[int, int]]:
    """(start, end) of the lines of ``text`` (newline kept), lines over ``chunk_chars`` cut after a whitespace."""
    for m in re.finditer(r"[^\n]*\n|[^\n]+", text):
        a, b = m.span()
        while b - a > chunk_chars:
            window = text[a:a + chunk_chars]
            cut = max(window.rfind(" "), window.rfind("\t"))
            cut = a + cut + 1 if cut > 0 else a + chunk_chars
            yield a, cut
            a = cut
        yield a, b


def _morpheme_cuts(texts: Sequence[str], chunk_chars: int) -> list[list[int]]:
    """Sorted morpheme-start offsets per text: Kiwi token starts not inside an earlier token's span. Kiwi sees one
    chunk (a line) at a time, so only one chunk's analysis is held in memory."""
    cuts: list[list[int]] = []
    for t in texts:
        found: set[int] = set()
        if _HANGUL_RE.search(t):
            kiwi = get_kiwi()
            with _KIWI_LOCK:  # one analysis at a time (num_workers=0: single-threaded, no batch mode)
                for a, b in _chunks(t, chunk_chars):
                    if not _HANGUL_RE.search(t, a, b):
                        continue
                    end = 0
                    for tok in kiwi.tokenize(t[a:b]):
                        s = int(tok.start)
                        if s >= end and 0 < s < b - a:
                            found.add(a + s)
                        end = max(end, s + int(tok.len))
        cuts.append(sorted(found))
    return cuts


def _cut(text: str, spans: list[tuple[int, int]], cuts: list[int]) -> list[str]:
    pieces: list[str] = []
    for a, b in spans:
        start = a
        for p in cuts[bisect.bisect_right(cuts, a):bisect.bisect_left(cuts, b)]:
            if _is_hangul(text[p - 1]) and _is_hangul(text[p]) and not _is_jamo_tail(text[p]):
                pieces.append(text[start:p])
                start = p
        pieces.append(text[start:b])
    return pieces


def _check_join(pieces: list[str], text: str) -> list[str]:
    if "".join(pieces) != text:  # cannot happen: the spans tile the text; kept as a hard check
        raise RuntimeError(f"pre-split changed the text: {text[:80]!r}")
    return pieces


def pre_split_batch(texts: Sequence[str], *, morpheme_aware: bool = True, chunk_chars: int = CHUNK_CHARS,
                    pattern: str = SPLIT_PATTERN) -> list[list[str]]:
    """Pieces of each text (whitespace / script split, plus morpheme cuts inside Hangul runs when
    ``morpheme_aware``); ``"".join(pieces) == text`` for every text. Special-token strings are not treated here
    (see :meth:`BilingualTokenizer.pieces`)."""
    texts = _check_texts(texts, "texts")
    spans = [_script_spans(t, pattern) for t in texts]
    if not morpheme_aware:
        return [_check_join([t[a:b] for a, b in s], t) for t, s in zip(texts, spans)]
    cuts = _morpheme_cuts(texts, chunk_chars)
    return [_check_join(_cut(t, s, c), t) for t, s, c in zip(texts, spans, cuts)]


def pre_split(text: str, *, morpheme_aware: bool = True, chunk_chars: int = CHUNK_CHARS,
              pattern: str = SPLIT_PATTERN) -> list[str]:
    """:func:`pre_split_batch` of one text."""
    return pre_split_batch([_check_text(text)], morpheme_aware=morpheme_aware, chunk_chars=chunk_chars,
                           pattern=pattern)[0]


def _segment_batch(texts: Sequence[str], *, morpheme_aware: bool, chunk_chars: int, pattern: str,
                   split_special_tokens: bool) -> list[list[str]]:
    """Pieces per text with each special-token string as its own piece (unless ``split_special_tokens``)."""
    if split_special_tokens:
        return pre_split_batch(texts, morpheme_aware=morpheme_aware, chunk_chars=chunk_chars, pattern=pattern)
    segs: list[list[tuple[bool, str]]] = []
    plain: list[str] = []
    for t in texts:
        parts, pos = [], 0
        for m in _SPECIAL_RE.finditer(t):
            if m.start() > pos:
                parts.append((False, t[pos:m.start()]))
                plain.append(t[pos:m.start()])
            parts.append((True, m.group()))
            pos = m.end()
        if pos < len(t) or not parts:
            parts.append((False, t[pos:]))
            plain.append(t[pos:])
        segs.append(parts)
    split = iter(pre_split_batch(plain, morpheme_aware=morpheme_aware, chunk_chars=chunk_chars, pattern=pattern))
    out = []
    for t, parts in zip(texts, segs):
        pieces: list[str] = []
        for special, s in parts:
            pieces.extend([s] if special else next(split))
        out.append(_check_join(pieces, t))
    return out


# ----------------------------------------------------------------------------------------------- byte tables
@functools.lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode`` (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def vocab_hash(backend) -> str:
    """sha256 of the vocabulary, the merges and the added tokens of a ``tokenizers.Tokenizer``."""
    blob = json.loads(backend.to_str())
    model = blob["model"]
    payload = {
        "type": model.get("type"),
        "vocab": sorted(model["vocab"].items(), key=lambda kv: kv[1]),
        "merges": [m.split(" ") if isinstance(m, str) else list(m) for m in model.get("merges", [])],
        "added": [[t["id"], t["content"], bool(t.get("special"))] for t in blob.get("added_tokens", [])],
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")).hexdigest()


def _saved_pattern(backend) -> str | None:
    """The Split regex inside a saved tokenizer's pre-tokenizer (None if there is none)."""
    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "Split" and isinstance(node.get("pattern"), dict) and "Regex" in node["pattern"]:
                return node["pattern"]["Regex"]
            for v in node.values():
                r = walk(v)
                if r is not None:
                    return r
        elif isinstance(node, list):
            for v in node:
                r = walk(v)
                if r is not None:
                    return r
        return None

    return walk(json.loads(backend.to_str()).get("pre_tokenizer"))


# ----------------------------------------------------------------------------------------------- tokenizer
def _new_backend(pattern: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def _hf_from_backend(backend):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=SPECIAL_TOKENS[BOS_ID],
                                   eos_token=SPECIAL_TOKENS[EOS_ID], pad_token=SPECIAL_TOKENS[PAD_ID],
                                   extra_special_tokens=list(SPECIAL_TOKENS[3:]), clean_up_tokenization_spaces=False,
                                   chat_template=CHAT_TEMPLATE)


def _check_special_ids(backend, where: str) -> None:
    got = {t: backend.token_to_id(t) for t in SPECIAL_TOKENS}
    if any(got[t] != i for t, i in SPECIAL_IDS.items()):
        raise ValueError(f"{where}: the special tokens must have ids 0..{len(SPECIAL_TOKENS) - 1} in the order "
                         f"{list(SPECIAL_TOKENS)}; got {got}")


def check_messages(messages: Any, where: str = "messages") -> list[Mapping[str, Any]]:
    """A conversation: a non-empty sequence of ``{'role', 'content'}`` dicts with a role of :data:`CHAT_ROLES` and
    str content; anything else raises ``ValueError`` naming the turn (the chat template and SFT both use it)."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ValueError(f"{where}: expected a sequence of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError(f"{where}: the conversation is empty")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"{where}[{i}]: expected a dict with 'role' and 'content', got {m!r}")
        if m["role"] not in CHAT_ROLES:
            raise ValueError(f"{where}[{i}]: unknown chat role {m['role']!r} in turn {i} "
                             f"(expected one of {', '.join(CHAT_ROLES)})")
        if not isinstance(m["content"], str):
            raise ValueError(f"{where}[{i}]['content']: expected str, got {type(m['content']).__name__}")
    return list(messages)


class BilingualTokenizer:
    """The trained / loaded tokenizer: ``hf`` (a ``PreTrainedTokenizerFast``), its ``backend``
    (``tokenizers.Tokenizer``) and the Python pre-split that the morpheme-aware variant needs at inference."""

    def __init__(self, hf, metadata: Mapping[str, Any]):
        self.hf = hf
        self.backend = hf.backend_tokenizer
        self.metadata = dict(metadata)
        self.morpheme_aware = bool(self.metadata["morpheme_aware"])
        self.pattern = str(self.metadata["split_pattern"])
        self.chunk_chars = int(self.metadata.get("chunk_chars", CHUNK_CHARS))
        _check_special_ids(self.backend, "tokenizer")
        self._token_bytes: list[bytes] | None = None

    # ---- properties
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    # the names the model / data code reads from a Hugging Face tokenizer
    bos_id = bos_token_id = BOS_ID
    eos_id = eos_token_id = EOS_ID
    pad_id = pad_token_id = PAD_ID

    def __len__(self) -> int:
        return self.vocab_size

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        return self.hf.convert_tokens_to_ids(tokens)

    def __repr__(self) -> str:
        kind = "morpheme-aware" if self.morpheme_aware else "plain"
        return f"BilingualTokenizer({kind}, vocab_size={self.vocab_size})"

    # ---- encoding
    def pieces_batch(self, texts: Sequence[str], *, split_special_tokens: bool = False) -> list[list[str]]:
        """The BPE words of each text (special-token strings as their own pieces)."""
        return _segment_batch(_check_texts(texts, "texts"), morpheme_aware=self.morpheme_aware,
                              chunk_chars=self.chunk_chars, pattern=self.pattern,
                              split_special_tokens=split_special_tokens)

    def pieces(self, text: str, *, split_special_tokens: bool = False) -> list[str]:
        return self.pieces_batch([_check_text(text)], split_special_tokens=split_special_tokens)[0]

    def encode_pieces_batch(self, piece_lists: Sequence[Sequence[str]]) -> list[list[int]]:
        """Ids of already pre-split texts: each piece its own word, ids concatenated in order."""
        nonempty = [i for i, p in enumerate(piece_lists) if len(p)]
        out: list[list[int]] = [[] for _ in piece_lists]
        if nonempty:
            encs = self.backend.encode_batch([list(piece_lists[i]) for i in nonempty], is_pretokenized=True,
                                             add_special_tokens=False)
            for i, e in zip(nonempty, encs):
                out[i] = list(e.ids)
        return out

    def encode_batch(self, texts: Sequence[str], *, add_bos: bool = False, add_eos: bool = False,
                     split_special_tokens: bool = False) -> list[list[int]]:
        texts = _check_texts(texts, "texts")
        if self.morpheme_aware or split_special_tokens:
            ids = self.encode_pieces_batch(self.pieces_batch(texts, split_special_tokens=split_special_tokens))
        else:  # the backend's own pipeline gives the same pieces (tests: test_plain_wrapper_equals_autotokenizer)
            ids = [list(e.ids) for e in self.backend.encode_batch(texts, add_special_tokens=False)] if texts else []
        head, tail = [BOS_ID] if add_bos else [], [EOS_ID] if add_eos else []
        return [head + i + tail for i in ids] if (head or tail) else ids

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False,
               split_special_tokens: bool = False) -> list[int]:
        return self.encode_batch([_check_text(text)], add_bos=add_bos, add_eos=add_eos,
                                 split_special_tokens=split_special_tokens)[0]

    def __call__(self, text: str | Sequence[str], *, add_bos: bool = False, add_eos: bool = False,
                 padding: bool = False, split_special_tokens: bool = False) -> dict[str, list]:
        """``{"input_ids", "attention_mask"}`` for one text (flat lists) or a batch (lists of lists; ``padding``
        right-pads with ``<|pad|>`` to the longest)."""
        single = isinstance(text, str)
        ids = self.encode_batch([text] if single else text, add_bos=add_bos, add_eos=add_eos,
                                split_special_tokens=split_special_tokens)
        mask = [[1] * len(i) for i in ids]
        if padding and ids:
            n = max(len(i) for i in ids)
            mask = [m + [0] * (n - len(m)) for m in mask]
            ids = [i + [PAD_ID] * (n - len(i)) for i in ids]
        if single:
            return {"input_ids": ids[0], "attention_mask": mask[0]}
        return {"input_ids": ids, "attention_mask": mask}

    # ---- decoding
    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Sequence[Sequence[int]], *, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(i, skip_special_tokens=skip_special_tokens) for i in batch]

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (a special token: its UTF-8 string)."""
        if self._token_bytes is None:
            u2b = _unicode_to_byte()
            table = []
            for i in range(self.vocab_size):
                tok = self.backend.id_to_token(i)
                table.append(tok.encode("utf-8") if i < len(SPECIAL_TOKENS) else bytes(u2b[c] for c in tok))
            self._token_bytes = table
        return self._token_bytes[int(token_id)]

    # ---- chat
    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
                            tokenize: bool = False) -> str | list[int]:
        """The conversation rendered by the saved Jinja template (roles system / user / assistant); with
        ``tokenize`` its ids (the role tokens as special ids)."""
        messages = check_messages(messages)
        text = self.hf.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                           add_generation_prompt=add_generation_prompt)
        return self.encode(text) if tokenize else text

    # ---- persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(d))
        meta = dict(self.metadata, vocab_size=self.vocab_size, vocab_sha256=vocab_hash(self.backend))
        (d / METADATA_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return d


def _metadata(*, morpheme_aware: bool, pattern: str, chunk_chars: int, requested: int | None,
              min_frequency: int | None, backend) -> dict[str, Any]:
    import tokenizers

    return {
        "format_version": FORMAT_VERSION,
        "morpheme_aware": morpheme_aware,
        "split_pattern": pattern,
        "chunk_chars": chunk_chars,
        "analyser": analyser_info() if morpheme_aware else None,
        "special_tokens": list(SPECIAL_TOKENS),
        "requested_vocab_size": requested,
        "vocab_size": backend.get_vocab_size(with_added_tokens=True),
        "vocab_sha256": vocab_hash(backend),
        "min_frequency": min_frequency,
        "tokenizers_version": tokenizers.__version__,
    }


def train_tokenizer(texts: Sequence[str], vocab_size: int, *, morpheme_aware: bool = True, min_frequency: int = 2,
                    batch_size: int = 1000, chunk_chars: int = CHUNK_CHARS) -> BilingualTokenizer:
    """Train the byte-level BPE on ``texts`` (their pieces, see the module docstring): ids 0..9 the special tokens,
    then the 256 bytes, then the merges up to ``vocab_size`` (fewer when the corpus runs out of pairs seen
    ``min_frequency`` times; ``metadata['vocab_size']`` is the real size). ``morpheme_aware=False`` trains the plain
    baseline (same code, no Kiwi)."""
    from tokenizers import pre_tokenizers, trainers

    texts = _check_texts(texts, "texts")
    if not any(texts):
        raise ValueError(f"texts: the training corpus is empty ({len(texts)} texts, none with a character)")
    _check_vocab_size(vocab_size)
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 0:
        raise ValueError(f"min_frequency: expected an int >= 0, got {min_frequency!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    backend = _new_backend(SPLIT_PATTERN)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)

    def batches():
        for i in range(0, len(texts), batch_size):
            for pieces in _segment_batch(texts[i:i + batch_size], morpheme_aware=morpheme_aware,
                                         chunk_chars=chunk_chars, pattern=SPLIT_PATTERN, split_special_tokens=False):
                words = [p for p in pieces if p not in SPECIAL_IDS]
                if words:
                    yield words

    backend.train_from_iterator(batches(), trainer, length=len(texts))
    _check_special_ids(backend, "trained tokenizer")
    hf = _hf_from_backend(backend)
    meta = _metadata(morpheme_aware=morpheme_aware, pattern=SPLIT_PATTERN, chunk_chars=chunk_chars,
                     requested=vocab_size, min_frequency=min_frequency, backend=hf.backend_tokenizer)
    return BilingualTokenizer(hf, meta)


def load_tokenizer(directory: str | Path, *, strict: bool = False) -> BilingualTokenizer:
    """Load a directory written by :meth:`BilingualTokenizer.save_pretrained`. Raises ValueError when there is no
    ``tokenizer.json``, when the vocabulary hash or the split pattern differ from :data:`METADATA_FILE`, or (with
    ``strict``) when the installed kiwipiepy differs from the recorded one (otherwise a warning). A directory without
    :data:`METADATA_FILE` loads as a plain byte-level BPE, with a warning."""
    from transformers import AutoTokenizer

    d = Path(directory)
    if not (d / "tokenizer.json").is_file():
        raise ValueError(f"directory: {d} has no tokenizer.json (not a saved tokenizer)")
    hf = AutoTokenizer.from_pretrained(str(d))
    if getattr(hf, "backend_tokenizer", None) is None:
        raise ValueError(f"directory: {d}/tokenizer.json did not load as a fast tokenizer ({type(hf).__name__})")
    backend = hf.backend_tokenizer
    saved_pattern = _saved_pattern(backend)
    meta_path = d / METADATA_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
        got = vocab_hash(backend)
        if meta.get("vocab_sha256") != got:
            raise ValueError(f"{meta_path}: vocab_sha256 {meta.get('vocab_sha256')} does not match "
                             f"{d / 'tokenizer.json'} ({got}): the files come from different tokenizers")
        if saved_pattern is not None and meta.get("split_pattern") != saved_pattern:
            raise ValueError(f"{meta_path}: split_pattern differs from the Split regex in {d / 'tokenizer.json'}")
        if meta.get("morpheme_aware"):
            recorded = meta.get("analyser") or {}
            now = analyser_info(build=False)
            diff = {k: (recorded.get(k), now[k]) for k in ("kiwipiepy_version", "kiwipiepy_model_version")
                    if recorded.get(k) != now[k]}
            if diff:
                msg = (f"{meta_path}: the tokenizer was trained with a different analyser {diff} "
                       "(recorded, installed); morpheme cuts and so ids may differ from the training-time ids")
                if strict:
                    raise ValueError(msg)
                warnings.warn(msg, stacklevel=2)
    else:
        warnings.warn(f"{d} has no {METADATA_FILE}: loading it as a plain byte-level BPE (no morpheme split)",
                      stacklevel=2)
        meta = _metadata(morpheme_aware=False, pattern=saved_pattern or SPLIT_PATTERN, chunk_chars=CHUNK_CHARS,
                         requested=None, min_frequency=None, backend=backend)
    return BilingualTokenizer(hf, meta)


# ----------------------------------------------------------------------------------------------- metrics
_SYLLABLE_RE = re.compile("[\uac00-\ud7a3]")


def tokenizer_metrics(tokenizer: BilingualTokenizer, corpora: Mapping[str, Sequence[str]],
                      batch_size: int = 256) -> dict[str, dict[str, Any]]:
    """Per corpus name: ``texts``, ``chars``, ``bytes`` (UTF-8), ``tokens``, ``chars_per_token``,
    ``bytes_per_token``, ``hangul_syllables`` (U+AC00..U+D7A3), ``hangul_split_syllables`` (syllables covered by a
    token whose bytes are not valid UTF-8 on their own, i.e. split into raw byte tokens),
    ``hangul_byte_fallback_share`` (their share; None without Hangul) and ``roundtrip_failures`` (texts with
    ``decode(encode(x)) != x``)."""
    if not isinstance(corpora, Mapping):
        raise ValueError(f"corpora: expected a dict of name -> list of texts, got {type(corpora).__name__}")
    valid_cache: dict[int, bool] = {}

    def valid(tid: int) -> bool:
        v = valid_cache.get(tid)
        if v is None:
            try:
                tokenizer.token_bytes(tid).decode("utf-8")
                v = True
            except UnicodeDecodeError:
                v = False
            valid_cache[tid] = v
        return v

    out: dict[str, dict[str, Any]] = {}
    for name, texts in corpora.items():
        texts = _check_texts(texts, f"corpora[{name!r}]")
        n_chars = n_bytes = n_tokens = n_syl = n_split = failures = 0
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            for text, ids in zip(chunk, tokenizer.encode_batch(chunk)):
                data = text.encode("utf-8")
                n_chars += len(text)
                n_bytes += len(data)
                n_tokens += len(ids)
                if tokenizer.decode(ids) != text:
                    failures += 1
                if not _SYLLABLE_RE.search(text):
                    continue
                bad = bytearray(len(data) + 1)
                pos = 0
                for tid in ids:
                    n = len(tokenizer.token_bytes(tid))
                    if not valid(tid):
                        bad[pos:pos + n] = b"\x01" * n
                    pos += n
                off, prev = 0, 0
                for m in _SYLLABLE_RE.finditer(text):
                    off += len(text[prev:m.start()].encode("utf-8"))
                    n_syl += 1
                    if bad[off] or bad[off + 1] or bad[off + 2]:
                        n_split += 1
                    off += 3
                    prev = m.end()
        out[name] = {
            "texts": len(texts), "chars": n_chars, "bytes": n_bytes, "tokens": n_tokens,
            "chars_per_token": n_chars / n_tokens if n_tokens else None,
            "bytes_per_token": n_bytes / n_tokens if n_tokens else None,
            "hangul_syllables": n_syl, "hangul_split_syllables": n_split,
            "hangul_byte_fallback_share": n_split / n_syl if n_syl else None,
            "roundtrip_failures": failures,
        }
    return out
