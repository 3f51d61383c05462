"""The bilingual LM's pretraining corpus: PII scrubbing, exact and near-duplicate removal, decontamination.

Pipeline of :func:`build_corpus` (DVC stage ``build_lm_corpus``, :mod:`data.stages.build_lm_corpus`), in order, per
document of :data:`data.lm_sources.TRAIN_SOURCES`:

1. **empty** documents (after stripping) are dropped and counted (an empty FILE is an error, in the readers);
2. **PII scrubbing** (:func:`scrub_pii`): e-mail addresses, Korean resident registration numbers (YYMMDD-GNNNNNN
   with a valid date and a gender/century digit 1-4), phone numbers (Korean mobile 01X, Seoul 02 and area codes
   0NN, +82, and North-American ``(NNN) NNN-NNNN``), payment card numbers (13-19 digits, in groups or contiguous,
   with a major network's issuer prefix and length, passing the Luhn check: :func:`card_number`) are replaced by
   ``[EMAIL]``, ``[RRN]``, ``[PHONE]``, ``[CARD]``; counts per kind and source;
3. **exact duplicates**: the same text after NFKC, lower-casing and whitespace collapsing; the first one is kept;
4. **near duplicates** (MinHash LSH, ``datasketch``): character ``shingle``-grams of the normalised text (characters,
   not words, so Korean's variable spacing and code both work), ``num_perm`` permutations, Jaccard ``threshold``;
   only documents of at least ``near_min_chars`` characters (shorter ones are exact-deduplicated only: a MinHash of
   a 20-character review says little); the first of a near-duplicate group is kept;
5. **decontamination** (:class:`Decontaminator`): a document is removed when it shares a word ``ngram``-gram with
   any evaluation text of :data:`data.lm_sources.EVAL_SETS`, or contains a whole evaluation text shorter than
   ``ngram`` words but at least ``short_min_words`` long (NSMC-length reviews, KoBEST sentences); words = NFKC,
   lower-cased, split at every non-alphanumeric character. The overlapping documents are counted per evaluation set
   (a document can hit several) and listed (first ``report_examples`` ids per set);
6. **held-out split**: a seeded ``heldout_fraction`` of the Korean documents of ``heldout_sources`` (NSMC,
   KoCoNovel) goes to ``heldout/`` for bits-per-byte (English held-out text is WikiText-2 test, evaluation only).

The language weights (``weights``, by tokens) are validated here (a mixture that does not sum to one names the key)
and written to ``mixture.json``: the tokens of a document are only known once the tokenizer exists, so the
pretraining data stage draws documents per language to those token shares (this stage keeps every clean
document). Shards: ``train/<lang>-NNNNN.parquet`` and ``heldout/<lang>-NNNNN.parquet`` (columns ``doc_id, source,
lang, text``), written into a temporary folder renamed into place.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import Field, model_validator

from data.config import StrictConfig
from data.lm_sources import EVAL_SETS, TRAIN_SOURCES, UNAVAILABLE_EVAL_SETS, Document

LANGS = ("ko", "en", "code")


# ------------------------------------------------------------------------------------------------------ config
class LMCorpusParams(StrictConfig):
    """``data.build_lm_corpus`` of params.yaml."""

    weights: dict[str, float] = Field(default_factory=lambda: {"ko": 1 / 3, "en": 1 / 3, "code": 1 / 3})
    sources: list[str] = Field(default_factory=lambda: list(TRAIN_SOURCES), min_length=1)
    max_docs_per_source: int = Field(0, ge=0)  # 0 = all (a smaller number for quick runs and tests)
    pii: bool = True
    exact_dedup: bool = True
    near_dedup: bool = True
    near_min_chars: int = Field(50, ge=1)
    shingle: int = Field(5, ge=1)
    num_perm: int = Field(128, ge=16)
    threshold: float = Field(0.8, gt=0.0, lt=1.0)
    ngram: int = Field(13, ge=2)
    short_min_words: int = Field(8, ge=1)
    heldout_sources: list[str] = Field(default_factory=lambda: ["nsmc_raw", "koconovel"])
    heldout_fraction: float = Field(0.01, ge=0.0, lt=1.0)
    heldout_max_docs: int = Field(2000, ge=0)
    seed: int = 0
    shard_docs: int = Field(100_000, ge=1)
    report_examples: int = Field(20, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "LMCorpusParams":
        if set(self.weights) != set(LANGS):
            raise ValueError(f"weights: expected exactly the keys {list(LANGS)}, got {sorted(self.weights)}")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"weights: every weight must be >= 0, got {self.weights}")
        total = sum(self.weights.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"weights: the language weights must sum to 1 (they are shares of the tokens), "
                             f"got {total:.6g} from {self.weights}")
        unknown = [s for s in self.sources + self.heldout_sources if s not in TRAIN_SOURCES]
        if unknown:
            raise ValueError(f"sources: unknown source(s) {unknown}; known: {sorted(TRAIN_SOURCES)}")
        if self.short_min_words >= self.ngram:
            raise ValueError(f"short_min_words: must be below ngram ({self.ngram}), got {self.short_min_words}")
        return self


# ------------------------------------------------------------------------------------------------------ PII
EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w])")
RRN_RE = re.compile(r"(?<!\d)(\d{2})(\d{2})(\d{2})\s?-\s?([1-4])\d{6}(?!\d)")
PHONE_RES = (
    re.compile(r"(?<![\d+])(?:\+82[-.\s]?1[016789]|01[016789])[-.\s]?\d{3,4}[-.\s]?\d{4}(?!\d)"),  # Korean mobile
    re.compile(r"(?<![\d+])(?:\+82[-.\s]?|0)(?:2|[3-6][1-5])[-.\s)]\s?\d{3,4}[-.\s]\d{4}(?!\d)"),  # Korean landline
    re.compile(r"(?<![\d(])(?:\+1[-.\s]?)?\(\d{3}\)\s?\d{3}[-.\s]\d{4}(?!\d)"),  # North American (NNN) NNN-NNNN
    re.compile(r"(?<![\d-])(?:\+1[-.\s])?\d{3}-\d{3}-\d{4}(?![\d-])"),  # North American NNN-NNN-NNNN
)
# not inside a longer number: no digit, decimal point or dash before; no digit, decimal part or dash-digit after
CARD_RE = re.compile(r"(?<![\d.,-])(?:\d{4}([- ])\d{4}\1\d{4}\1\d{1,7}|\d{4}([- ])\d{6}\2\d{5}|\d{13,19})"
                     r"(?!\d|[.,]\d|-\d)")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _rrn(m: re.Match) -> str:
    month, day = int(m.group(2)), int(m.group(3))
    return "[RRN]" if 1 <= month <= 12 and 1 <= day <= 31 else m.group(0)


def card_number(digits: str) -> bool:
    """A payment card number: an issuer prefix and length of the major networks (Visa 4: 13/16/19 digits;
    Mastercard 51-55 and 2221-2720: 16; American Express 34/37: 15; Discover / UnionPay / JCB 6, 35: 16-19; Diners
    36/38/30: 14-16), not one repeated digit, and the Luhn check (digit junk in reviews, e.g. "0000000000000000" or
    "1234567891001", passes Luhn one time in ten)."""
    n = len(digits)
    if not 13 <= n <= 19 or len(set(digits)) == 1 or not luhn_ok(digits):
        return False
    if digits[0] == "4":
        return n in (13, 16, 19)
    if digits[:2] in ("51", "52", "53", "54", "55") or 2221 <= int(digits[:4]) <= 2720:
        return n == 16
    if digits[:2] in ("34", "37"):
        return n == 15
    if digits[0] == "6" or digits[:2] == "35":
        return 16 <= n <= 19
    if digits[:2] in ("36", "38", "30"):
        return 14 <= n <= 16
    return False


def _card(m: re.Match) -> str:
    return "[CARD]" if card_number(re.sub(r"\D", "", m.group(0))) else m.group(0)


def scrub_pii(text: str) -> tuple[str, Counter]:
    """``text`` with PII replaced, and how many of each kind were replaced."""
    counts: Counter = Counter()

    def sub(pattern: re.Pattern, repl, kind: str, s: str) -> str:
        def one(m: re.Match) -> str:
            out = repl(m) if callable(repl) else repl
            if out != m.group(0):
                counts[kind] += 1
            return out
        return pattern.sub(one, s)

    text = sub(EMAIL_RE, "[EMAIL]", "email", text)
    text = sub(RRN_RE, _rrn, "rrn", text)
    text = sub(CARD_RE, _card, "card", text)
    for pattern in PHONE_RES:
        text = sub(pattern, "[PHONE]", "phone", text)
    return text, counts


# ------------------------------------------------------------------------------------------------------ normalising
_SPACE_RE = re.compile(r"\s+")
_WORD_SPLIT_RE = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """NFKC, lower case, whitespace collapsed: the key of exact deduplication and the base of the shingles."""
    return _SPACE_RE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def words(text: str) -> list[str]:
    """Decontamination words: NFKC, lower case, split at every non-alphanumeric character."""
    return [w for w in _WORD_SPLIT_RE.split(unicodedata.normalize("NFKC", text).lower()) if w]


def _key(ws: Iterable[str]) -> bytes:
    return hashlib.blake2b("\x1f".join(ws).encode(), digest_size=12).digest()


# ------------------------------------------------------------------------------------------------------ dedup
class NearDuplicates:
    """MinHash LSH over character shingles; :meth:`seen` inserts a document and says whether a near duplicate of an
    earlier one was already there."""

    def __init__(self, num_perm: int = 128, threshold: float = 0.8, shingle: int = 5, seed: int = 1):
        from datasketch import MinHashLSH

        self.num_perm, self.shingle, self.seed = num_perm, shingle, seed
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.n = 0

    def minhash(self, normalised: str):
        from datasketch import MinHash

        k = self.shingle
        grams = {normalised[i:i + k] for i in range(max(1, len(normalised) - k + 1))}
        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch([g.encode() for g in grams])
        return m

    def seen(self, normalised: str) -> bool:
        m = self.minhash(normalised)
        if self.lsh.query(m):
            return True
        self.lsh.insert(str(self.n), m, check_duplication=False)
        self.n += 1
        return False


# ------------------------------------------------------------------------------------------------------ decontamination
class Decontaminator:
    """Word n-gram index of evaluation texts: ``hits(text)`` -> the evaluation sets the text overlaps."""

    def __init__(self, eval_texts: dict[str, list[str]], ngram: int = 13, short_min_words: int = 8):
        self.n = ngram
        self.index: dict[bytes, set[str]] = defaultdict(set)
        self.short_lengths: set[int] = set()
        self.sizes: dict[str, dict[str, int]] = {}
        for name, texts in eval_texts.items():
            grams = 0
            for text in texts:
                ws = words(text)
                if len(ws) >= ngram:
                    for i in range(len(ws) - ngram + 1):
                        self.index[_key(ws[i:i + ngram])].add(name)
                        grams += 1
                elif len(ws) >= short_min_words:
                    self.index[_key(ws)].add(name)
                    self.short_lengths.add(len(ws))
                    grams += 1
            self.sizes[name] = {"texts": len(texts), "keys": grams}

    def hits(self, text: str) -> set[str]:
        ws = words(text)
        found: set[str] = set()
        for k in (self.n, *sorted(self.short_lengths)):
            for i in range(len(ws) - k + 1):
                names = self.index.get(_key(ws[i:i + k]))
                if names:
                    found |= names
        return found


# ------------------------------------------------------------------------------------------------------ the build
def _source_stats() -> dict:
    return {"documents_read": 0, "characters_read": 0, "removed_empty": 0, "removed_exact_duplicate": 0,
            "removed_near_duplicate": 0, "removed_contaminated": 0, "pii": Counter(), "documents": 0,
            "characters": 0, "heldout_documents": 0, "heldout_characters": 0}


def clean_documents(docs: Iterable[Document], params: LMCorpusParams, decontaminator: Decontaminator | None,
                    stats: dict[str, dict], contamination: dict[str, list[str]],
                    progress=None) -> Iterator[Document]:
    """Steps 1-5 of the module docstring over ``docs`` (in order), updating ``stats`` per source and
    ``contamination`` (evaluation set -> removed document ids)."""
    exact: set[bytes] = set()
    near = NearDuplicates(params.num_perm, params.threshold, params.shingle) if params.near_dedup else None
    for doc in docs:
        st = stats.setdefault(doc.source, _source_stats())
        st["documents_read"] += 1
        st["characters_read"] += len(doc.text)
        if progress is not None:
            progress.update(1)
        text = doc.text.strip()
        if not text:
            st["removed_empty"] += 1
            continue
        if params.pii:
            text, counts = scrub_pii(text)
            st["pii"].update(counts)
        norm = normalise(text)
        if params.exact_dedup:
            key = hashlib.blake2b(norm.encode(), digest_size=16).digest()
            if key in exact:
                st["removed_exact_duplicate"] += 1
                continue
            exact.add(key)
        if near is not None and len(norm) >= params.near_min_chars and near.seen(norm):
            st["removed_near_duplicate"] += 1
            continue
        if decontaminator is not None:
            hit = decontaminator.hits(text)
            if hit:
                st["removed_contaminated"] += 1
                for name in hit:
                    contamination[name].append(doc.doc_id)
                continue
        yield Document(doc.source, doc.doc_id, doc.lang, text)


def split_heldout(docs: list[Document], params: LMCorpusParams) -> tuple[list[Document], list[Document]]:
    """A seeded held-out share of the documents of ``heldout_sources`` (at most ``heldout_max_docs``)."""
    pool = [i for i, d in enumerate(docs) if d.source in params.heldout_sources]
    k = min(int(round(len(pool) * params.heldout_fraction)), params.heldout_max_docs)
    chosen = set(random.Random(params.seed).sample(pool, k)) if k else set()
    return [d for i, d in enumerate(docs) if i not in chosen], [d for i, d in enumerate(docs) if i in chosen]


def write_shards(docs: list[Document], folder: Path, shard_docs: int) -> dict[str, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    shards = {}
    for lang in LANGS:
        rows = [d for d in docs if d.lang == lang]
        shards[lang] = 0
        for j in range(0, len(rows), shard_docs):
            part = rows[j:j + shard_docs]
            table = pa.table({"doc_id": [d.doc_id for d in part], "source": [d.source for d in part],
                              "lang": [d.lang for d in part], "text": [d.text for d in part]})
            pq.write_table(table, folder / f"{lang}-{j // shard_docs:05d}.parquet")
            shards[lang] += 1
    return shards


def read_shards(folder: str | Path, lang: str | None = None) -> list[Document]:
    """The documents of ``folder``'s shards (one language or all), in shard order."""
    import pyarrow.parquet as pq

    out = []
    for path in sorted(Path(folder).glob(f"{lang or '*'}-*.parquet")):
        t = pq.read_table(path).to_pydict()
        out += [Document(s, i, g, x) for i, s, g, x in zip(t["doc_id"], t["source"], t["lang"], t["text"])]
    return out


def build_corpus(raw_root: str | Path, out: str | Path, params: LMCorpusParams, progress: bool = True) -> dict:
    """Read, clean, split and write the corpus (``out`` replaced atomically); return the statistics (DVC metrics)."""
    from tqdm.auto import tqdm

    from data.atomic import atomic_directory, atomic_write_json

    raw_root = Path(raw_root)
    eval_texts = {name: read(raw_root) for name, read in EVAL_SETS.items()}
    decontaminator = Decontaminator(eval_texts, params.ngram, params.short_min_words)
    stats: dict[str, dict] = {}
    contamination: dict[str, list[str]] = defaultdict(list)

    def documents() -> Iterator[Document]:
        for name in params.sources:
            reader = TRAIN_SOURCES[name]
            it = reader(raw_root, params.max_docs_per_source) if name == "nsmc_raw" else reader(raw_root)
            for i, doc in enumerate(it):
                if params.max_docs_per_source and i >= params.max_docs_per_source:
                    break
                yield doc

    bar = tqdm(desc="corpus: clean", unit="doc", disable=not progress)
    kept = list(clean_documents(documents(), params, decontaminator, stats, contamination, bar))
    bar.close()
    train, heldout = split_heldout(kept, params)
    for d in heldout:
        stats[d.source]["heldout_documents"] += 1
        stats[d.source]["heldout_characters"] += len(d.text)
    for d in train:
        stats[d.source]["documents"] += 1
        stats[d.source]["characters"] += len(d.text)
    langs = {lang: {"documents": sum(1 for d in train if d.lang == lang),
                    "characters": sum(len(d.text) for d in train if d.lang == lang),
                    "bytes": sum(len(d.text.encode()) for d in train if d.lang == lang),
                    "heldout_documents": sum(1 for d in heldout if d.lang == lang)} for lang in LANGS}
    report = {"eval_sets": {name: {**decontaminator.sizes[name], "overlapping_documents": len(contamination[name]),
                                   "examples": contamination[name][:params.report_examples]}
                            for name in EVAL_SETS},
              "unavailable": UNAVAILABLE_EVAL_SETS, "ngram": params.ngram, "short_min_words": params.short_min_words}
    per_source = {s: {**{k: v for k, v in st.items() if k != "pii"}, "pii": dict(sorted(st["pii"].items()))}
                  for s, st in stats.items()}
    pii_total = Counter()
    for st in stats.values():
        pii_total.update(st["pii"])
    with atomic_directory(out) as tmp:
        shards = {"train": write_shards(train, tmp / "train", params.shard_docs),
                  "heldout": write_shards(heldout, tmp / "heldout", params.shard_docs)}
        atomic_write_json(tmp / "mixture.json", {"weights": params.weights, "by": "tokens",
                                                  "note": "applied by the pretraining data stage once tokens are known"})
        atomic_write_json(tmp / "decontamination.json", report)
    return {"sources": per_source, "languages": langs, "shards": shards, "pii_replaced": dict(sorted(pii_total.items())),
            "decontamination": {name: r["overlapping_documents"] for name, r in report["eval_sets"].items()},
            "documents": len(train), "heldout_documents": len(heldout)}
