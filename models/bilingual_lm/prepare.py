"""The bilingual LM's data stages after the corpus: train the tokenizer, then tokenize + FIM + pack.

``tokenizer`` (DVC ``train_tokenizer@<variant>``): the tokenizer is trained on ``tokenizer.train_chars_per_lang``
characters of each language of the corpus's train shards (documents in a seeded order; whole documents), the
variant ``morpheme`` (kiwipiepy cuts) or ``plain`` (the same byte-level BPE without them, the baseline), the same
vocabulary size and text for both. Metrics (``tokenizer_metrics``): characters and bytes per token, the Hangul
byte-fallback share and round-trip failures on the spec's sets (``korean_text/``, GSM8K test questions, the CPython
standard library) and on unseen text (the corpus's Korean held-out documents, WikiText-2 test).

``pack`` (DVC ``pack_lm@<variant>``): every document the language mixture needs (``mixture.json``'s weights by
TOKENS, :func:`models.bilingual_lm.data.mixture_plan`) is encoded with the stage's tokenizer, code documents (and
text with ``pretrain.fim_text``) in FIM format at ``pretrain.fim_rate`` / ``spm_rate`` (a document's draw is seeded
by its id), each checked to decode back to its text, and packed with ``<|eos|>`` separators into rows of
``pretrain.seq_len + 1``. English and code are encoded whole; Korean (the largest part) only in its seeded order until
its share is reached. Also written: the held-out streams (Korean held-out documents; WikiText-2 test) for bits per
byte, the byte length of every vocabulary entry, the training tokens' unigram counts (the baseline), a report.

    python -m models.bilingual_lm.prepare tokenizer --params params.yaml --variant morpheme \\
        --out outputs/bilingual_lm/tokenizer/morpheme --metrics metrics/bilingual_lm/tokenizer-morpheme.json
    python -m models.bilingual_lm.prepare pack --params params.yaml --variant morpheme \\
        --out data/processed/lm_packed/morpheme --metrics metrics/bilingual_lm/pack-morpheme.json
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

LANGS = ("ko", "en", "code")


def _corpus_docs(corpus_dir: Path, part: str, lang: str):
    from data.lm_corpus import read_shards

    folder = corpus_dir / part
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not found (run the build_lm_corpus stage first)")
    return read_shards(folder, lang)


def _seeded(docs: list, seed: int, lang: str) -> list:
    order = list(range(len(docs)))
    random.Random(f"{seed}:{lang}").shuffle(order)
    return [docs[i] for i in order]


def tokenizer_training_texts(corpus_dir: Path, chars_per_lang: int, seed: int) -> tuple[list[str], dict]:
    """Whole documents of each language in a seeded order until ``chars_per_lang`` characters."""
    texts, report = [], {}
    for lang in LANGS:
        n, got = 0, 0
        for d in _seeded(_corpus_docs(corpus_dir, "train", lang), seed, lang):
            if got >= chars_per_lang:
                break
            texts.append(d.text)
            got += len(d.text)
            n += 1
        report[lang] = {"documents": n, "characters": got}
    return texts, report


def metric_texts(raw: Path, corpus_dir: Path) -> dict[str, list[str]]:
    """The tokenizer-metric sets: the spec's three plus two never seen in training."""
    import tarfile

    from data.lm_sources import read_text, wikitext2

    root = Path(raw)
    korean_text = [read_text(root, str(p.relative_to(root))) for p in sorted((root / "korean_text").glob("*/*.txt"))]
    gsm = [json.loads(line)["question"] for line in (root / "gsm8k" / "test.jsonl").read_text().splitlines() if line]
    code = []
    with tarfile.open(root / "code_corpus" / "cpython311_stdlib_py.tar.gz") as tar:
        for m in sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".py")), key=lambda m: m.name):
            data = tar.extractfile(m).read().decode("utf-8")
            if data.strip():
                code.append(data)
    heldout_ko = [d.text for d in _corpus_docs(corpus_dir, "heldout", "ko")]
    wiki = [ln for ln in wikitext2(root, "test").split("\n") if ln.strip()]
    return {"korean_text": korean_text, "korean_heldout": heldout_ko, "english_gsm8k_test_questions": gsm,
            "english_wikitext2_test": wiki, "code_cpython_stdlib": code}


def build_tokenizer(cfg, variant: str, out: Path) -> dict:
    from data.atomic import atomic_directory
    from models.bilingual_lm.tokenizer import train_tokenizer, tokenizer_metrics

    t = cfg.tokenizer
    corpus = Path(cfg.data.corpus_dir)
    texts, sample = tokenizer_training_texts(corpus, t.train_chars_per_lang, t.seed)
    t0 = time.perf_counter()
    tok = train_tokenizer(texts, t.vocab_size, morpheme_aware=variant == "morpheme", min_frequency=t.min_frequency)
    print(f"tokenizer {variant}: trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    with atomic_directory(out) as tmp:
        tok.save_pretrained(tmp)
    metrics = tokenizer_metrics(tok, metric_texts(Path(cfg.data.raw_dir), corpus))
    # no times in the metrics file: the same computation rewrites the same bytes
    return {"variant": variant, "vocab_size": tok.vocab_size, "vocab_sha256": tok.metadata["vocab_sha256"],
            "training_text": sample, "sets": metrics,
            "roundtrip_failures": sum(m["roundtrip_failures"] for m in metrics.values())}


# ------------------------------------------------------------------------------------------------------ pack
def _encode_docs(tok, docs: list, fim_on: bool, p, fim_ids) -> tuple[list[list[int]], dict]:
    """Ids of each document (FIM-formatted where drawn), checked to decode back to the document."""
    from models.bilingual_lm.data import apply_fim, fim_restore

    out, formats, failures = [], {"plain": 0, "psm": 0, "spm": 0}, 0
    # special-token strings inside a document are text, not control tokens
    plain_ids = tok.encode_batch([d.text for d in docs], split_special_tokens=True) if not fim_on else None
    encode = functools.partial(tok.encode, split_special_tokens=True)
    for i, d in enumerate(docs):
        if fim_on:
            ids, fmt = apply_fim(d.text, encode, fim_ids, random.Random(f"fim:{p.init_seed}:{d.doc_id}"),
                                 fim_rate=p.fim_rate, spm_rate=p.spm_rate)
            back = fim_restore(ids, fim_ids, tok.decode)
        else:
            ids, fmt = plain_ids[i], "plain"
            back = tok.decode(ids)
        failures += back != d.text
        formats[fmt] += 1
        out.append(ids)
    return out, {"formats": formats, "roundtrip_failures": failures}


def pack_corpus(cfg, variant: str, out: Path, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    from data.atomic import atomic_directory, atomic_write_json
    from data.lm_sources import wikitext2
    from models.bilingual_lm.data import FimIds, mixture_plan, pack
    from models.bilingual_lm.tokenizer import load_tokenizer

    p = cfg.pretrain
    corpus = Path(cfg.data.corpus_dir)
    mixture = json.loads((corpus / "mixture.json").read_text())
    weights = mixture["weights"]
    tok = load_tokenizer(cfg.tokenizer_dir(variant), strict=True)
    fim_ids = FimIds.from_tokenizer(tok)
    encoded: dict[str, list[list[int]]] = {}
    reports: dict[str, dict] = {}
    docs_by_lang = {lang: _seeded(_corpus_docs(corpus, "train", lang), p.init_seed, lang) for lang in LANGS}

    def encode(lang: str, docs: list) -> None:
        fim_on = (lang == "code" or p.fim_text) and p.fim_rate > 0
        ids, rep = [], {"formats": {"plain": 0, "psm": 0, "spm": 0}, "roundtrip_failures": 0}
        for j in tqdm(range(0, len(docs), 512), desc=f"encode {lang}", disable=not progress):
            part, r = _encode_docs(tok, docs[j:j + 512], fim_on, p, fim_ids)
            ids += part
            rep["roundtrip_failures"] += r["roundtrip_failures"]
            for k, v in r["formats"].items():
                rep["formats"][k] += v
        encoded.setdefault(lang, []).extend(ids)
        prev = reports.get(lang, {"formats": {"plain": 0, "psm": 0, "spm": 0}, "roundtrip_failures": 0})
        reports[lang] = {"formats": {k: prev["formats"][k] + rep["formats"][k] for k in rep["formats"]},
                         "roundtrip_failures": prev["roundtrip_failures"] + rep["roundtrip_failures"]}

    live = [lang for lang in LANGS if weights[lang] > 0]
    whole = [lang for lang in live if lang != "ko"] or live
    for lang in whole:
        encode(lang, docs_by_lang[lang])
    if "ko" in live and "ko" not in whole:
        # Korean only as far as its share needs: the others' tokens fix the total (unless Korean binds)
        total = min(p.max_repeat * sum(map(len, encoded[lang])) / weights[lang] for lang in whole)
        budget = weights["ko"] * total / p.max_repeat
        ko_docs, got, j = docs_by_lang["ko"], 0, 0
        while j < len(ko_docs) and got < budget:
            step = ko_docs[j:j + 4096]
            before = len(encoded.get("ko", []))
            encode("ko", step)
            for ids in encoded["ko"][before:]:
                got += len(ids)
            j += len(step)
        reports["ko"]["documents_encoded"] = j
    counts = {lang: [len(x) for x in encoded.get(lang, [])] for lang in LANGS}
    plan, mix = mixture_plan(counts, weights, seed=p.init_seed, max_repeat=p.max_repeat)
    stream_docs = [encoded[lang][i] for lang in LANGS for i in plan[lang]]
    rows, packing = pack(stream_docs, tok.eos_token_id, p.seq_len)
    unigram = np.bincount(rows.reshape(-1), minlength=tok.vocab_size).astype(np.int64)
    token_bytes = np.array([len(tok.token_bytes(i)) if i >= 10 else 0 for i in range(tok.vocab_size)], dtype=np.int64)
    heldout = {}
    ko_held = [d.text for d in _corpus_docs(corpus, "heldout", "ko")]
    en_held = [wikitext2(Path(cfg.data.raw_dir), "test")]
    for name, texts in (("ko", ko_held), ("en", en_held)):
        ids: list[int] = []
        for t_ids in tok.encode_batch(texts, split_special_tokens=True):
            ids += t_ids + [tok.eos_token_id]
            if len(ids) >= cfg.eval.heldout_max_tokens:
                break
        heldout[name] = np.asarray(ids[:cfg.eval.heldout_max_tokens], dtype=np.int32)
    with atomic_directory(out) as tmp:
        np.save(tmp / "rows.npy", rows)
        np.save(tmp / "unigram_counts.npy", unigram)
        np.save(tmp / "token_bytes.npy", token_bytes)
        for name, arr in heldout.items():
            np.save(tmp / f"heldout_{name}.npy", arr)
        report = {"variant": variant, "seq_len": p.seq_len, "rows": int(rows.shape[0]), "packing": packing,
                  "mixture": mix, "encoding": reports, "heldout_tokens": {k: int(len(v)) for k, v in heldout.items()},
                  "vocab_size": tok.vocab_size, "tokenizer_sha256": tok.metadata["vocab_sha256"]}
        atomic_write_json(tmp / "report.json", report)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["tokenizer", "pack"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--variant", choices=["morpheme", "plain"], required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    args = ap.parse_args(argv)
    import yaml

    from data.atomic import atomic_write_json
    from data.config import ConfigError
    from data.lm_sources import CorpusFileError
    from data.config import load_section
    from models.bilingual_lm.config import BilingualLMConfig

    try:
        overrides = {}
        for item in args.overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
            overrides[key] = yaml.safe_load(value)
        # the config class directly (not the flow's ModelSpec): this stage depends on config.py alone
        cfg = load_section(BilingualLMConfig, "bilingual_lm", args.params, {**overrides, "tokenizer.variant": args.variant})
        t0 = time.perf_counter()
        result = build_tokenizer(cfg, args.variant, args.out) if args.what == "tokenizer" else \
            pack_corpus(cfg, args.variant, args.out)
    except (ConfigError, CorpusFileError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    atomic_write_json(args.metrics, result)
    print(f"{args.what} {args.variant} -> {args.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
