"""Readers of the mirror's text folders for the bilingual LM: training documents and evaluation texts.

One place that knows the layout of every folder (as the download stages copy them to ``data/raw/<dataset>``):
the corpus stage (:mod:`data.lm_corpus`) reads the training sources and the evaluation texts it decontaminates
against; the evaluation harness reads the same evaluation files. Every text file is decoded as strict UTF-8 (an
undecodable byte raises :class:`CorpusFileError` naming the file and the byte offset) unless the file is listed in
:data:`ENCODINGS` (nine English files of the mirror: Latin-1 or cp950); an empty file is an error too. A document is ``Document(source, doc_id, lang, text)``; ``lang`` is ``ko``, ``en`` or ``code``.

Training sources (:data:`TRAIN_SOURCES`) and what a document is:

==================  ======================================================  =====  =========================
source              files (under the raw root)                              lang   document
==================  ======================================================  =====  =========================
nsmc_raw            korean_corpus/nsmc_raw/nsmc_raw_reviews.part*.tsv.gz    ko     one review
koconovel           korean_corpus/koconovel/*.text.jsonl                    ko     one chunk (``doc_id``)
korean_text         korean_text/kolaw/*.txt, korean_text/kobill/*.txt       ko     one file
kobest_train        kobest/v1.0/<task>/train.tsv                            ko     one item as plain text
gutenberg           english_corpus/nltk_gutenberg/*.txt                     en     paragraphs up to ~4,000 chars
tinyshakespeare     english_corpus/tinyshakespeare/input.txt                en     paragraphs up to ~4,000 chars
addresses           english_corpus/nltk_{inaugural,state_union}/*.txt       en     one address
gsm8k_train         gsm8k/train.jsonl                                       en     question + worked answer
cpython_stdlib      code_corpus/cpython311_stdlib_py.tar.gz                 code   one ``.py`` file
==================  ======================================================  =====  =========================

Evaluation-only text (KorQuAD, KLUE dev, KorNLI / KorSTS, WikiText-2) is never a training source; the held-out
English perplexity text is WikiText-2 test (:func:`wikitext2`). The decontamination sets are :data:`EVAL_SETS`
(spec §5: KoBEST / CLIcK / GSM8K / BBH / HumanEval test text, the MT test sets, WikiText-2 test). NSMC's official
test reviews are not in the mirror (only the crawl they were sampled from), so they cannot be checked: recorded as
unavailable by the corpus stage.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# files of the mirror that are not UTF-8, with their real encoding (path relative to the raw root; found by decoding
# every text file strictly: NLTK's copies of two Gutenberg books are Latin-1, six addresses were saved as Big5/cp950
# with curly quotes and dashes, and one holds Latin-1 "1/2 cent" signs)
ENCODINGS = {
    "english_corpus/nltk_gutenberg/shakespeare-caesar.txt": "iso-8859-1",
    "english_corpus/nltk_gutenberg/chesterton-ball.txt": "iso-8859-1",
    "english_corpus/nltk_state_union/1954-Eisenhower.txt": "iso-8859-1",
    **{f"english_corpus/{rel}.txt": "cp950" for rel in (
        "nltk_inaugural/2005-Bush", "nltk_state_union/1970-Nixon", "nltk_state_union/1971-Nixon",
        "nltk_state_union/1972-Nixon", "nltk_state_union/1973-Nixon", "nltk_state_union/1974-Nixon")},
}
KOBEST_TASKS = ("BoolQ", "COPA", "HellaSwag", "SentiNeg", "WiC")
CHUNK_CHARS = 4000


class CorpusFileError(ValueError):
    """A corpus or evaluation file is missing, empty, not decodable or not in its expected layout."""


@dataclass(frozen=True)
class Document:
    source: str
    doc_id: str
    lang: str
    text: str


# ------------------------------------------------------------------------------------------------ file access
def decode(data: bytes, name: str, encoding: str = "utf-8") -> str:
    """``data`` as text; strict, so a bad byte names the file and its offset. Empty -> error."""
    if not data.strip():
        raise CorpusFileError(f"{name}: the file is empty (expected {encoding} text)")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise CorpusFileError(f"{name}: not valid {encoding} at byte {err.start} ({data[err.start:err.start + 4]!r}); "
                              f"list its real encoding in data.lm_sources.ENCODINGS if it is known") from None


def read_text(root: Path, rel: str) -> str:
    path = Path(root) / rel
    if not path.is_file():
        raise CorpusFileError(f"{path}: not found (run the download stage of its dataset)")
    data = path.read_bytes()
    if rel.endswith(".gz"):
        data = gzip.decompress(data)
    text = decode(data, str(path), ENCODINGS.get(rel, "utf-8"))
    return text.replace("\r\n", "\n").lstrip("\ufeff")


def _glob(root: Path, pattern: str) -> list[str]:
    files = sorted(str(p.relative_to(root)) for p in Path(root).glob(pattern) if p.is_file())
    if not files:
        raise CorpusFileError(f"{Path(root) / pattern}: no file matches (run the download stage of its dataset)")
    return files


def _tsv(root: Path, rel: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    text = read_text(root, rel)
    rows = list(csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
    missing = [c for c in columns if rows and c not in rows[0]]
    if not rows or missing:
        raise CorpusFileError(f"{Path(root) / rel}: expected TSV columns {list(columns)}, "
                              f"missing {missing or 'every row'}")
    return rows


def _jsonl(root: Path, rel: str, fields: tuple[str, ...]) -> list[dict]:
    out = []
    for i, line in enumerate(read_text(root, rel).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusFileError(f"{Path(root) / rel}: line {i}: not JSON ({err.msg})") from None
        missing = [f for f in fields if f not in rec]
        if missing:
            raise CorpusFileError(f"{Path(root) / rel}: line {i}: missing field(s) {missing}")
        out.append(rec)
    return out


def paragraphs(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    """Consecutive blank-line paragraphs joined into chunks of at most ``max_chars`` (a longer paragraph is its own
    chunk); stripped, non-empty."""
    chunks, cur, size = [], [], 0
    for para in (p.strip() for p in text.split("\n\n")):
        if not para:
            continue
        if cur and size + len(para) + 2 > max_chars:
            chunks.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(para)
        size += len(para) + 2
    if cur:
        chunks.append("\n\n".join(cur))
    return chunks


# ------------------------------------------------------------------------------------------------ KoBEST items
def kobest_rows(root: Path, task: str, split: str) -> list[dict[str, str]]:
    columns = {"BoolQ": ("Text", "Question", "Answer"), "COPA": ("sentence", "question", "1", "2", "Answer"),
               "HellaSwag": ("context", "choice1", "choice2", "choice3", "choice4", "label"),
               "SentiNeg": ("Text", "Label"), "WiC": ("Target", "SENTENCE1", "SENTENCE2", "ANSWER")}[task]
    return _tsv(root, f"kobest/v1.0/{task}/{split}.tsv", columns)


def kobest_text(task: str, row: dict[str, str]) -> str:
    """The natural text of a KoBEST item (the correct alternative / ending where there are several)."""
    if task == "BoolQ":
        return f"{row['Text']}\n{row['Question']}"
    if task == "COPA":
        return f"{row['sentence']}\n{row[str(row['Answer']).strip()]}" if row["Answer"].strip() in ("1", "2") \
            else f"{row['sentence']}\n{row['1']}\n{row['2']}"
    if task == "HellaSwag":
        label = row["label"].strip()
        end = row.get(f"choice{int(label) + 1}", "") if label.isdigit() else ""
        return f"{row['context']} {end}".strip()
    if task == "SentiNeg":
        return row["Text"]
    return f"{row['SENTENCE1']}\n{row['SENTENCE2']}"


# ------------------------------------------------------------------------------------------------ training sources
def nsmc_raw(root: Path, max_docs: int = 0) -> Iterator[Document]:
    n = 0
    for rel in _glob(root, "korean_corpus/nsmc_raw/nsmc_raw_reviews.part*.tsv.gz"):
        for row in _tsv(root, rel, ("review_id", "movie_id", "review")):
            if max_docs and n >= max_docs:
                return
            n += 1
            yield Document("nsmc_raw", f"nsmc_{row['review_id']}", "ko", row["review"] or "")


def koconovel(root: Path) -> Iterator[Document]:
    for rel in _glob(root, "korean_corpus/koconovel/*.text.jsonl"):
        for rec in _jsonl(root, rel, ("doc_id", "text")):
            yield Document("koconovel", f"koconovel_{Path(rel).name.split('.')[0]}_{rec['doc_id']}", "ko", rec["text"])


def korean_text(root: Path) -> Iterator[Document]:
    for rel in _glob(root, "korean_text/*/*.txt"):
        yield Document("korean_text", f"korean_text_{Path(rel).parent.name}_{Path(rel).stem}", "ko",
                       read_text(root, rel).strip())


def kobest_train(root: Path) -> Iterator[Document]:
    for task in KOBEST_TASKS:
        for i, row in enumerate(kobest_rows(root, task, "train")):
            yield Document("kobest_train", f"kobest_{task}_train_{i}", "ko", kobest_text(task, row))


def _chunked(root: Path, rels: list[str], source: str) -> Iterator[Document]:
    for rel in rels:
        for j, chunk in enumerate(paragraphs(read_text(root, rel))):
            yield Document(source, f"{source}_{Path(rel).stem}_{j}", "en", chunk)


def gutenberg(root: Path) -> Iterator[Document]:
    return _chunked(root, [r for r in _glob(root, "english_corpus/nltk_gutenberg/*.txt")], "gutenberg")


def tinyshakespeare(root: Path) -> Iterator[Document]:
    return _chunked(root, ["english_corpus/tinyshakespeare/input.txt"], "tinyshakespeare")


def addresses(root: Path) -> Iterator[Document]:
    for folder in ("nltk_inaugural", "nltk_state_union"):
        for rel in _glob(root, f"english_corpus/{folder}/*.txt"):
            yield Document("addresses", f"{folder}_{Path(rel).stem}", "en", read_text(root, rel).strip())


def gsm8k_train(root: Path) -> Iterator[Document]:
    for i, rec in enumerate(_jsonl(root, "gsm8k/train.jsonl", ("question", "answer"))):
        yield Document("gsm8k_train", f"gsm8k_train_{i}", "en", f"{rec['question']}\n{rec['answer']}")


def cpython_stdlib(root: Path) -> Iterator[Document]:
    rel = "code_corpus/cpython311_stdlib_py.tar.gz"
    path = Path(root) / rel
    if not path.is_file():
        raise CorpusFileError(f"{path}: not found (run the download stage of code_corpus)")
    with tarfile.open(path, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".py")), key=lambda m: m.name)
        if not members:
            raise CorpusFileError(f"{path}: no .py file in the archive")
        for m in members:
            data = tar.extractfile(m).read()
            name = f"{path}:{m.name}"
            if not data.strip():  # empty __init__.py files are ordinary: skip, not an error
                continue
            yield Document("cpython_stdlib", f"cpython_{m.name.removeprefix('./')}", "code", decode(data, name))


TRAIN_SOURCES: dict[str, Callable[..., Iterator[Document]]] = {
    "nsmc_raw": nsmc_raw, "koconovel": koconovel, "korean_text": korean_text, "kobest_train": kobest_train,
    "gutenberg": gutenberg, "tinyshakespeare": tinyshakespeare, "addresses": addresses, "gsm8k_train": gsm8k_train,
    "cpython_stdlib": cpython_stdlib,
}
# evaluation-only folders: never read as training text (a test checks TRAIN_SOURCES against them)
EVALUATION_ONLY = ("korean_corpus/korquad_v1_dev", "korean_corpus/klue_dev", "korean_corpus/kornlu",
                   "english_corpus/wikitext2_valid_test")


# ------------------------------------------------------------------------------------------------ evaluation text
def wikitext2(root: Path, split: str = "test") -> str:
    return read_text(root, f"english_corpus/wikitext2_valid_test/wiki.{split}.tokens")


def _kobest_test(task: str) -> Callable[[Path], list[str]]:
    def read(root: Path) -> list[str]:
        out = []
        for row in kobest_rows(root, task, "test"):
            out += [v for k, v in row.items() if k not in ("ID", "Answer", "label", "Label", "Label_origin",
                                                             "Category_neg", "ANSWER", "Link 1", "Link2",
                                                             "Dictionary 1", "Dictionary 2", "question") and v]
        return out
    return read


def _click(root: Path) -> list[str]:
    out = []
    for rel in _glob(root, "click/Dataset/**/*.json"):
        try:
            items = json.loads(read_text(root, rel))
        except json.JSONDecodeError as err:
            raise CorpusFileError(f"{Path(root) / rel}: not JSON ({err.msg})") from None
        for it in items:
            out += [it.get("paragraph") or "", it.get("question") or "", *[str(c) for c in it.get("choices") or []]]
    return [t for t in out if t]


def _gsm8k_test(root: Path) -> list[str]:
    return [t for r in _jsonl(root, "gsm8k/test.jsonl", ("question", "answer")) for t in (r["question"], r["answer"])]


def _bbh(root: Path) -> list[str]:
    out = []
    for rel in _glob(root, "bbh/*.json"):
        for ex in json.loads(read_text(root, rel))["examples"]:
            out += [ex["input"], ex["target"]]
    return out


def _humaneval(root: Path) -> list[str]:
    recs = _jsonl(root, "humaneval/HumanEval.jsonl.gz", ("prompt", "canonical_solution", "test"))
    return [r["prompt"] + r["canonical_solution"] for r in recs] + [r["test"] for r in recs]


def _lines(rel: str) -> Callable[[Path], list[str]]:
    def read(root: Path) -> list[str]:
        return [ln for ln in read_text(root, rel).splitlines() if ln.strip()]
    return read


EVAL_SETS: dict[str, Callable[[Path], list[str]]] = {
    **{f"kobest_{t.lower()}_test": _kobest_test(t) for t in KOBEST_TASKS},
    "click": _click,
    "gsm8k_test": _gsm8k_test,
    "bbh": _bbh,
    "humaneval": _humaneval,
    "mt_koen_news_test_ko": _lines("mt_koen/korean-english-news-v1/korean-english-park.test.ko"),
    "mt_koen_news_test_en": _lines("mt_koen/korean-english-news-v1/korean-english-park.test.en"),
    "mt_koen_jhe_eval_ko": _lines("mt_koen/korean-english-jhe/jhe-koen-eval.ko"),
    "mt_koen_jhe_eval_en": _lines("mt_koen/korean-english-jhe/jhe-koen-eval.en"),
    "wikitext2_test": _lines("english_corpus/wikitext2_valid_test/wiki.test.tokens"),
}
UNAVAILABLE_EVAL_SETS = {"nsmc_test": "NSMC's ratings_test.txt is not in the mirror (only the raw crawl it was "
                                      "sampled from): the overlap cannot be checked"}
