"""NLI data for DisSAN: loaders for SNLI (official jsonl or zip; InferSent s1/s2/labels layout) and SICK
(SemEval-2014 files), tokenisation, the training-split vocabulary and frozen word vectors.

Tokenisation (stated, one rule per source, PTB tokens everywhere):
- SNLI official jsonl: the leaves of ``sentence{1,2}_binary_parse`` (the official PTB tokens; the same
  tokens as the mirror's PTB-tokenised s1/s2 files);
- SNLI InferSent layout (mirror): whitespace split of the PTB-tokenised text;
- SICK and free text (the pyfunc): :func:`ptb_tokenize`, a regex version of the Penn Treebank rules
  (punctuation split off, n't / 's / 're ... as separate tokens).
Pairs whose gold label is ``-`` are dropped. Labels: entailment 0, neutral 1, contradiction 2.
Tokens are lower-cased before the vocabulary lookup when ``lowercase`` (uncased GloVe 6B).
"""

from __future__ import annotations

import io
import json
import lzma
import re
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

LABELS = ("entailment", "neutral", "contradiction")
LABEL_ID = {name: i for i, name in enumerate(LABELS)}
PAD, UNK = "<pad>", "<unk>"


class NLIFormatError(ValueError):
    """A malformed NLI file; the message names the file, line and field."""


@dataclass
class NLIPairs:
    premises: list[list[str]]
    hypotheses: list[list[str]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def label_counts(self) -> dict[str, int]:
        c = Counter(self.labels)
        return {name: c.get(i, 0) for i, name in enumerate(LABELS)}


_PTB = [
    (re.compile(r"^\""), "``"), (re.compile(r"(``)"), r" \1 "), (re.compile(r"([ (\[{<])\""), r"\1 `` "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"), (re.compile(r"\.\.\."), " ... "), (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"([^\.])(\.)([\]\)}>\"']*)\s*$"), r"\1 \2\3 "), (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "), (re.compile(r"[\]\[\(\)\{\}<>]"), r" \g<0> "), (re.compile(r"--"), " -- "),
    (re.compile(r"\""), " '' "), (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]


def ptb_tokenize(text: str) -> list[str]:
    """Penn-Treebank-style tokens of raw text (regex rules after the Treebank tokenizer's sed script)."""
    text = " " + text.strip() + " "
    for pattern, repl in _PTB:
        text = pattern.sub(repl, text)
    return text.split()


def parse_leaves(binary_parse: str) -> list[str]:
    return binary_parse.replace("(", " ").replace(")", " ").split()


def _label(raw: str, where: str) -> int | None:
    lab = raw.strip().lower()
    if lab == "-":
        return None
    if lab not in LABEL_ID:
        raise NLIFormatError(f"{where}: field gold_label is {raw!r}; expected one of {', '.join(LABELS)} or '-'")
    return LABEL_ID[lab]


def _add(out: NLIPairs, p: list[str], h: list[str], label: int | None, where: str) -> None:
    if label is None:
        return
    if not p or not h:
        raise NLIFormatError(f"{where}: empty {'premise' if not p else 'hypothesis'}; expected at least one token")
    out.premises.append(p)
    out.hypotheses.append(h)
    out.labels.append(label)


def read_snli_jsonl(lines, source: str) -> NLIPairs:
    out = NLIPairs([], [], [])
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise NLIFormatError(f"{where}: not a JSON object ({err.msg})") from err
        for field in ("gold_label", "sentence1_binary_parse", "sentence2_binary_parse"):
            if field not in rec:
                raise NLIFormatError(f"{where}: field {field} missing; expected the official SNLI 1.0 jsonl schema")
        _add(out, parse_leaves(rec["sentence1_binary_parse"]), parse_leaves(rec["sentence2_binary_parse"]), _label(rec["gold_label"], where), where)
    return out


def load_snli_jsonl(path: str | Path, split: str | None = None) -> NLIPairs:
    """Official SNLI 1.0 jsonl, or the official ``snli_1.0.zip`` with ``split`` in train / dev / test."""
    path = Path(path)
    if path.suffix == ".zip":
        if split not in ("train", "dev", "test"):
            raise ValueError(f"{path}: give split train, dev or test to read from the zip, got {split!r}")
        member = f"snli_1.0/snli_1.0_{split}.jsonl"
        with zipfile.ZipFile(path) as z, z.open(member) as f:
            return read_snli_jsonl(io.TextIOWrapper(f, encoding="utf-8"), f"{path}!{member}")
    with open(path, encoding="utf-8") as f:
        return read_snli_jsonl(f, str(path))


def load_infersent(folder: str | Path, split: str) -> NLIPairs:
    """InferSent layout: ``s1.<split>``, ``s2.<split>``, ``labels.<split>``, line i = one pair (PTB tokens)."""
    folder = Path(folder)
    files = [folder / f"{name}.{split}" for name in ("s1", "s2", "labels")]
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"{f}: missing; expected s1/s2/labels.{split} of the InferSent layout")
    s1, s2, labels = (f.read_text(encoding="utf-8").splitlines() for f in files)
    if not len(s1) == len(s2) == len(labels):
        raise NLIFormatError(f"{folder}: s1/s2/labels.{split} have {len(s1)}/{len(s2)}/{len(labels)} lines; expected equal counts")
    out = NLIPairs([], [], [])
    for n, (p, h, lab) in enumerate(zip(s1, s2, labels), 1):
        _add(out, p.split(), h.split(), _label(lab, f"{files[2]}:{n}"), f"{files[0]}:{n}")
    return out


def load_sick(path: str | Path) -> NLIPairs:
    """SemEval-2014 SICK file: pair_ID, sentence_A, sentence_B, relatedness_score, entailment_judgment
    (tab-separated; a header line is skipped if present)."""
    path = Path(path)
    out = NLIPairs([], [], [])
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or (n == 1 and line.startswith("pair_ID")):
            continue
        cols = line.split("\t")
        if len(cols) < 5:
            raise NLIFormatError(f"{path}:{n}: {len(cols)} tab-separated fields; expected 5 (pair_ID, sentence_A, sentence_B, relatedness_score, entailment_judgment)")
        _add(out, ptb_tokenize(cols[1]), ptb_tokenize(cols[2]), _label(cols[4], f"{path}:{n}"), f"{path}:{n}")
    return out


SICK_FILES = {"train": "SICK_train.txt", "dev": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}


def load_splits(dataset: str, raw_dir: str | Path) -> dict[str, NLIPairs]:
    """train / dev / test pairs. SICK: train / trial (selection) / test. SNLI: the official zip when
    present (all three splits), else the mirror's dev and test only (no train split)."""
    raw = Path(raw_dir)
    if dataset == "sick":
        return {split: load_sick(raw / "sick" / "semeval2014_splits" / name) for split, name in SICK_FILES.items()}
    if dataset == "snli":
        zipped = raw / "snli_official" / "snli_1.0.zip"
        if zipped.exists():
            return {split: load_snli_jsonl(zipped, split) for split in ("train", "dev", "test")}
        folder = raw / "snli" / "esnli_infersent_format"
        return {split: load_infersent(folder, split) for split in ("dev", "test")}
    raise ValueError(f"unknown NLI dataset {dataset!r}; expected sick or snli")


class Vocab:
    """Word -> id from the training split (0 = <pad>, 1 = <unk>)."""

    def __init__(self, words: list[str], lowercase: bool):
        self.itos = [PAD, UNK, *words]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.lowercase = lowercase

    @classmethod
    def build(cls, pairs: NLIPairs, lowercase: bool, min_count: int = 1) -> "Vocab":
        norm = (lambda t: t.lower()) if lowercase else (lambda t: t)  # noqa: E731
        counts = Counter(norm(t) for sent in pairs.premises + pairs.hypotheses for t in sent)
        return cls(sorted(w for w, c in counts.items() if c >= min_count), lowercase)

    def __len__(self) -> int:
        return len(self.itos)

    def ids(self, tokens: list[str]) -> list[int]:
        return [self.stoi.get(t.lower() if self.lowercase else t, 1) for t in tokens]

    def oov_rate(self, pairs: NLIPairs) -> float:
        toks = [t for sent in pairs.premises + pairs.hypotheses for t in sent]
        return sum(1 for i in self.ids(toks) if i == 1) / max(len(toks), 1)


def read_glove(source: str | Path, words: set[str]) -> tuple[dict[str, np.ndarray], int]:
    """The vectors of ``words`` from a ``glove_6b_50d`` mirror folder (npy.xz + vocab) or a GloVe .txt/.zip."""
    source = Path(source)
    found: dict[str, np.ndarray] = {}
    if source.is_dir():
        vocab = (source / "glove.6B.50d.vocab.txt").read_text(encoding="utf-8").split("\n")
        with lzma.open(source / "glove.6B.50d.float32.npy.xz") as f:
            table = np.load(f)
        for i, w in enumerate(vocab[: len(table)]):
            if w in words and w not in found:
                found[w] = table[i]
        return found, table.shape[1]
    opener = (lambda: io.TextIOWrapper(zipfile.ZipFile(source).open(zipfile.ZipFile(source).namelist()[0]), encoding="utf-8")) \
        if source.suffix == ".zip" else (lambda: open(source, encoding="utf-8"))
    dim = 0
    with opener() as f:
        for n, line in enumerate(f, 1):
            word, _, rest = line.rstrip("\n").partition(" ")
            if word in words and word not in found:
                vec = np.asarray(rest.split(" "), dtype=np.float32)
                if dim and len(vec) != dim:
                    raise NLIFormatError(f"{source}:{n}: vector of {word!r} has {len(vec)} values; expected {dim}")
                dim = dim or len(vec)
                found[word] = vec
    if not dim:
        raise NLIFormatError(f"{source}: no vector for any vocabulary word; expected GloVe text lines 'word v1 v2 ...'")
    return found, dim


def build_vectors(vocab: Vocab, source: str | Path, oov_init: str = "uniform", seed: int = 0) -> tuple[torch.Tensor, dict]:
    """(len(vocab), dim) frozen table: GloVe rows where found, else U(-0.05, 0.05) (fixed by ``seed``) per
    word or one shared <unk> vector; row 0 (<pad>) is zero. Also returns coverage statistics."""
    found, dim = read_glove(source, set(vocab.itos[2:]))
    g = torch.Generator().manual_seed(seed)
    table = torch.empty(len(vocab), dim).uniform_(-0.05, 0.05, generator=g)
    table[0] = 0.0
    unk = table[1].clone()
    for i, w in enumerate(vocab.itos[2:], 2):
        if w in found:
            table[i] = torch.from_numpy(np.asarray(found[w], dtype=np.float32))
        elif oov_init == "shared_unk":
            table[i] = unk
    return table, {"vocab": len(vocab), "dim": dim, "with_vector": len(found), "without_vector": len(vocab) - 2 - len(found)}


def encode(pairs: NLIPairs, vocab: Vocab, max_len: int) -> dict[str, torch.Tensor]:
    """Right-padded id tensors and lengths (sentences longer than ``max_len`` are cut)."""
    def pad(sents: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [vocab.ids(s)[:max_len] for s in sents]
        n = max(len(s) for s in ids)
        out = torch.zeros(len(ids), n, dtype=torch.long)
        for r, s in enumerate(ids):
            out[r, : len(s)] = torch.as_tensor(s)
        return out, torch.as_tensor([len(s) for s in ids])

    p, pl = pad(pairs.premises)
    h, hl = pad(pairs.hypotheses)
    return {"p": p, "p_len": pl, "h": h, "h_len": hl, "y": torch.as_tensor(pairs.labels)}
