"""DisSAN data: SNLI / SICK loaders on the real mirror files, tokenisation, vocabulary, frozen vectors."""

from __future__ import annotations

import json

import pytest
import torch

from models.dissan.data import (
    NLIFormatError, Vocab, build_vectors, encode, load_infersent, load_sick, load_snli_jsonl, load_splits, ptb_tokenize,
)
from tests.conftest import mirror_dir


@pytest.mark.mirror
def test_snli_dev_and_test_match_the_spec_counts():
    snli = mirror_dir("snli")
    splits = load_splits("snli", snli.parent)
    assert set(splits) == {"dev", "test"}  # no train split offline
    assert len(splits["dev"]) == 9842 and splits["dev"].label_counts() == {"entailment": 3329, "neutral": 3235, "contradiction": 3278}
    assert len(splits["test"]) == 9824 and splits["test"].label_counts() == {"entailment": 3368, "neutral": 3219, "contradiction": 3237}
    assert splits["test"].premises[0][:4] == ["This", "church", "choir", "sings"]


@pytest.mark.mirror
def test_official_jsonl_loader_gives_the_same_tokens_as_the_ptb_files():
    snli = mirror_dir("snli")
    sample = load_snli_jsonl(snli / "raw_jsonl_dev_sample" / "snli_1.0_dev.sample1288.jsonl")
    assert len(sample) == 1273  # 1,288 records, 15 with gold label '-'
    dev = load_infersent(snli / "esnli_infersent_format", "dev")
    index = {(tuple(p), tuple(h)): y for p, h, y in zip(dev.premises, dev.hypotheses, dev.labels)}
    matched = [index.get((tuple(p), tuple(h))) == y for p, h, y in zip(sample.premises, sample.hypotheses, sample.labels)]
    assert sum(matched) == 1269  # the parse leaves equal the PTB file's tokens for all but 4 pairs ...
    norm = lambda toks: "".join(toks).replace("``", '"').replace("''", '"')  # noqa: E731
    loose = {(norm(p), norm(h)): y for p, h, y in zip(dev.premises, dev.hypotheses, dev.labels)}
    # ... which differ only in how quotes and hyphenated words were split; text and labels agree for all
    assert all(loose.get((norm(p), norm(h))) == y for p, h, y in zip(sample.premises, sample.hypotheses, sample.labels))


@pytest.mark.mirror
def test_sick_splits_match_the_spec_counts():
    sick = mirror_dir("sick")
    splits = load_splits("sick", sick.parent)
    assert {k: len(v) for k, v in splits.items()} == {"train": 4500, "dev": 500, "test": 4927}
    assert splits["train"].label_counts() == {"entailment": 1299, "neutral": 2536, "contradiction": 665}
    assert splits["test"].label_counts() == {"entailment": 1414, "neutral": 2793, "contradiction": 720}


@pytest.mark.mirror
def test_glove_mirror_vectors_are_frozen_rows_and_oov_is_random_but_fixed():
    glove = mirror_dir("glove_6b_50d")
    sick = load_splits("sick", mirror_dir("sick").parent)
    vocab = Vocab.build(sick["train"], lowercase=True)
    table, stats = build_vectors(vocab, glove, seed=0)
    assert table.shape == (len(vocab), 50) and stats["with_vector"] + stats["without_vector"] == len(vocab) - 2
    assert stats["without_vector"] < 0.02 * len(vocab)
    the = table[vocab.stoi["the"]]
    assert the[:3].tolist() == pytest.approx([0.418, 0.24968, -0.41242], abs=1e-5)  # official glove.6B.50d row "the"
    assert torch.equal(table[0], torch.zeros(50)) and table[1].abs().max() <= 0.05
    again, _ = build_vectors(vocab, glove, seed=0)
    assert torch.equal(table, again)
    assert vocab.oov_rate(sick["test"]) < 0.01


def test_jsonl_drops_dash_labels_and_names_bad_fields(tmp_path):
    rec = {"gold_label": "neutral", "sentence1_binary_parse": "( ( A man ) ( sleeps . ) )", "sentence2_binary_parse": "( He rests )"}
    good = tmp_path / "d.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in [rec, {**rec, "gold_label": "-"}]) + "\n")
    pairs = load_snli_jsonl(good)
    assert pairs.premises == [["A", "man", "sleeps", "."]] and pairs.hypotheses == [["He", "rests"]] and pairs.labels == [1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rec) + "\n" + json.dumps({"gold_label": "maybe", **{k: v for k, v in rec.items() if k != "gold_label"}}) + "\n")
    with pytest.raises(NLIFormatError, match=r"bad.jsonl:2: field gold_label is 'maybe'"):
        load_snli_jsonl(bad)
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"gold_label": "neutral"}) + "\n")
    with pytest.raises(NLIFormatError, match=r"missing.jsonl:1: field sentence1_binary_parse missing"):
        load_snli_jsonl(missing)


def test_sick_loader_names_short_rows(tmp_path):
    f = tmp_path / "SICK_train.txt"
    f.write_text("1\tA dog runs\tA dog is running\t4.5\tENTAILMENT\n2\tonly two\tfields\n")
    with pytest.raises(NLIFormatError, match=r"SICK_train.txt:2: 3 tab-separated fields; expected 5"):
        load_sick(f)


def test_ptb_tokenizer_and_encoding():
    assert ptb_tokenize("A man isn't sleeping, he's running.") == ["A", "man", "is", "n't", "sleeping", ",", "he", "'s", "running", "."]
    from models.dissan.data import NLIPairs

    pairs = NLIPairs([["A", "dog", "runs"], ["A", "cat"]], [["Dogs"], ["A", "cat", "naps", "now"]], [0, 2])
    vocab = Vocab.build(pairs, lowercase=True)
    assert vocab.itos[:2] == ["<pad>", "<unk>"] and "dog" in vocab.stoi and "Dog" not in vocab.stoi
    enc = encode(pairs, vocab, max_len=3)
    assert enc["p"].shape == (2, 3) and enc["p_len"].tolist() == [3, 2] and enc["h_len"].tolist() == [1, 3]  # cut at 3
    assert enc["p"][1, 2] == 0 and vocab.ids(["Zebra"]) == [1]
