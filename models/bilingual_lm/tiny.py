"""The bilingual LM's tiny preset (tests, the contract test): a SYNTHETIC corpus in the corpus stage's layout, the raw
files the SFT mix and the held-out English text read (in the mirror's layout, a few rows each), a plain byte-level
BPE of 300 tokens trained on it, the packed rows, and the ``tiny`` model preset with a few optimiser steps."""

from __future__ import annotations

import json
import random
from pathlib import Path

KO = ["대한민국은 민주공화국이다", "모든 국민은 법 앞에 평등하다", "이 영화 정말 재미있다", "배우들의 연기가 좋았다",
      "오늘은 날씨가 맑고 따뜻하다", "우리는 도서관에서 책을 읽었다", "한국어 문장을 여러 개 만든다", "시장에서 사과를 샀다"]
EN = ["The quick brown fox jumps over the lazy dog.", "It was the best of times, it was the worst of times.",
      "We hold these truths to be self-evident.", "Call me Ishmael.", "Tom has 3 apples and buys 4 more."]
CODE = ["def add(a, b):\n    return a + b\n", "class Point:\n    def __init__(self, x, y):\n        self.x = x\n",
        "for i in range(10):\n    print(i * i)\n", "import os\n\npath = os.path.join('a', 'b')\n"]


def _raw(root: Path) -> None:
    """Mirror-layout files with a few synthetic rows: the SFT sources (train splits, MT dev) and WikiText-2 test."""
    (root / "gsm8k").mkdir(parents=True, exist_ok=True)
    (root / "gsm8k" / "train.jsonl").write_text("".join(
        json.dumps({"question": f"Tom has {i} apples and buys {i + 1} more. How many apples?",
                    "answer": f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}"}) + "\n" for i in range(6)))
    kb = root / "kobest" / "v1.0"
    tables = {
        "BoolQ": ("ID\tText\tQuestion\tAnswer", ["1\t대한민국은 민주공화국이다.\t대한민국은 공화국인가?\t1",
                                                 "2\t사과는 과일이다.\t사과는 채소인가?\t0"]),
        "COPA": ("ID\tsentence\tquestion\t1\t2\tAnswer", ["1\t비가 왔다.\t결과\t우산을 폈다.\t모자를 벗었다.\t1",
                                                         "2\t배가 아팠다.\t원인\t많이 먹었다.\t잠을 잤다.\t1"]),
        "HellaSwag": ("context\tchoice1\tchoice2\tchoice3\tchoice4\tlabel",
                      ["여자가 요리를 한다.\t냄비에 물을 붓는다.\t하늘을 난다.\t차를 판다.\t노래를 부른다.\t0"]),
        "SentiNeg": ("ID\tLabel_origin\tText_origin\tLabel\tText\tCategory_neg",
                     ["1\t0\t별로다\t1\t별로가 아니다\t1", "2\t1\t좋다\t0\t좋지 않다\t1"]),
        "WiC": ("ID\tTarget\tSENTENCE1\tDictionary 1\tLink 1\tSENTENCE2\tDictionary 2\tLink2\tANSWER",
                ["1\t배\t[배]가 아프다.\t1\tx\t[배]를 탔다.\t2\tx\tFalse"]),
    }
    for task, (header, rows) in tables.items():
        (kb / task).mkdir(parents=True, exist_ok=True)
        (kb / task / "train.tsv").write_text("\n".join([header, *rows]) + "\n")
    for folder, stem in (("korean-english-news-v1", "korean-english-park.dev"), ("korean-english-jhe", "jhe-koen-dev")):
        d = root / "mt_koen" / folder
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{stem}.ko").write_text("\n".join(KO[:3]) + "\n")
        (d / f"{stem}.en").write_text("\n".join(["The Republic of Korea is a democratic republic.",
                                                 "All citizens are equal before the law.",
                                                 "This movie is really fun."]) + "\n")
    wt = root / "english_corpus" / "wikitext2_valid_test"
    wt.mkdir(parents=True, exist_ok=True)
    (wt / "wiki.test.tokens").write_text("\n".join(f" = Section {i} = \n {EN[i % len(EN)]} " for i in range(40)) + "\n")


def _corpus(root: Path) -> None:
    from data.lm_corpus import write_shards
    from data.lm_sources import Document

    rng = random.Random(0)
    train, held = [], []
    for i in range(120):
        train.append(Document("synthetic", f"ko_{i}", "ko", " ".join(rng.sample(KO, 3)) + "."))
        train.append(Document("synthetic", f"en_{i}", "en", " ".join(rng.sample(EN, 2))))
        train.append(Document("synthetic", f"code_{i}", "code", "".join(rng.sample(CODE, 2))))
    for i in range(20):
        held.append(Document("synthetic", f"ko_held_{i}", "ko", " ".join(rng.sample(KO, 4)) + "."))
    write_shards(train, root / "train", 100)
    write_shards(held, root / "heldout", 100)
    (root / "mixture.json").write_text(json.dumps({"weights": {"ko": 1 / 3, "en": 1 / 3, "code": 1 / 3}}))


def tiny(root: Path) -> dict:
    from models.bilingual_lm.config import BilingualLMConfig
    from models.bilingual_lm.prepare import pack_corpus
    from models.bilingual_lm.tokenizer import train_tokenizer

    root = Path(root)
    raw, corpus = root / "raw", root / "corpus"
    _raw(raw)
    _corpus(corpus)
    loop = dict(seq_len=32, global_batch=4, micro_batch=2, max_steps=6, lr=3e-3, warmup_steps=1, checkpoint_every=3,
                eval_every=3, log_every=3, torch_threads=1, device="cpu", checkpoint_dir=str(root / "checkpoints"))
    section = {
        "run": "tiny", "outputs_root": str(root / "outputs"),
        "data": {"corpus_dir": str(corpus), "raw_dir": str(raw), "packed_dir": str(root / "packed")},
        "tokenizer": {"variant": "plain", "vocab_size": 300, "min_frequency": 1, "train_chars_per_lang": 5000,
                      "dir": str(root / "tokenizer")},
        "model": {"preset": "tiny", "norm": "pre_ln"},
        "pretrain": {**loop, "fim_rate": 0.5},
        "sft": {**loop, "seq_len": 96, "max_steps": 4, "unlikelihood": 1.0, "decontaminate": False},
        "eval": {"heldout_max_tokens": 2000, "batch": 4, "prompts": ["대한민국은"], "chats": ["What is 1 + 1?"],
                 "max_new_tokens": 4},
        "outputs": {"metrics_dir": str(root / "metrics"), "plots_dir": str(root / "plots")},
        "registry": {"model_name": "bilingual_lm", "experiment": "bilingual_lm-tiny",
                     "gate_metric": "heldout_bpb_mean", "gate_mode": "min"},
    }
    cfg = BilingualLMConfig.model_validate(section)
    from data.lm_corpus import read_shards

    texts = [d.text for d in read_shards(corpus / "train")]
    train_tokenizer(texts, 300, morpheme_aware=False, min_frequency=1).save_pretrained(cfg.tokenizer_dir())
    pack_corpus(cfg, "plain", Path(cfg.packed_dir()), progress=False)
    return section
