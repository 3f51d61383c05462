"""The harness's generation tasks (GSM8K, BBH 3-shot CoT and 0-shot) against lm-eval 0.4.13 itself.

Three layers:

* prompts: the committed ``eval_harness/prompts/bbh.json`` equals what the installed lm-eval wheel's BBH YAMLs define;
* answer extraction and scoring, without a model: every filter pipeline and ``exact_match`` of ours and lm-eval's own
  filter objects / metric on the same strings (the gold GSM8K solutions, the BBH CoT exemplars' answers, typical
  model answers for the 0-shot filters), over every task;
* generation, on a tiny random Llama (1,536 positions: the 5-shot GSM8K and 3-shot BBH contexts are left-truncated)
  with a byte-level BPE tokenizer that adds BOS: ``lm_eval.simple_evaluate`` (``hf``, batch 1) and
  ``eval_harness.evaluate`` (batched, left padding) give the same prompts, the same generated strings, the same
  extracted answers and the same metrics; and the engine stops at the stop strings where lm-eval does (a task variant
  whose stop strings the random model emits).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import mirror_dir
from tests.test_eval_agreement import _write_jsonl

pytestmark = pytest.mark.mirror

GEN_TASKS = ["gsm8k", "bbh_cot_fewshot_boolean_expressions", "bbh_cot_fewshot_date_understanding",
             "bbh_zeroshot_date_understanding", "bbh_zeroshot_object_counting"]
LIMIT = 3
STOPS = {"until": ["e", "ou"], "max_gen_toks": 40}  # strings the tiny random model emits often


def _lm_eval():
    return pytest.importorskip("lm_eval")


def _tasks_dir() -> Path:
    return Path(_lm_eval().__file__).parent / "tasks"


def _root() -> Path:
    root = mirror_dir("gsm8k").parent
    mirror_dir("bbh")
    return root


# --------------------------------------------------------------------------------------------------------- prompts
def test_bbh_prompts_are_the_wheels():
    _lm_eval()
    from eval_harness.lm_eval_prompts import OUT, extract

    committed = json.loads(OUT.read_text(encoding="utf-8"))
    assert committed == extract()
    tasks = committed["tasks"]
    assert len(tasks) == 54 and sum(t["variant"] == "bbh_cot_fewshot" for t in tasks.values()) == 27
    assert all(len(t["fewshot_samples"]) == 3 for t in tasks.values() if t["variant"] == "bbh_cot_fewshot")


def test_bbh_task_and_group_definitions():
    from eval_harness.tasks import GROUPS, TASKS, build_examples

    assert len(GROUPS["bbh_cot_fewshot"]) == len(GROUPS["bbh_zeroshot"]) == 27
    lm_group = (_tasks_dir() / "bbh" / "cot_fewshot" / "_bbh_cot_fewshot.yaml").read_text(encoding="utf-8")
    assert [n for n in GROUPS["bbh_cot_fewshot"] if f"- {n}\n" not in lm_group] == []
    root = _root()
    ex = build_examples(TASKS["bbh_cot_fewshot_date_understanding"], root, limit=1)[0]
    t = TASKS["bbh_cot_fewshot_date_understanding"]
    assert ex.context.startswith("Infer the date from context.\n\nQ: ")
    assert ex.context.count("Let's think step by step.\n") == 4 and ex.context.endswith("A: Let's think step by step.\n")
    assert ex.context.count("So the answer is ") == 3 and ex.gold == t.docs(root)[0]["target"]
    z = build_examples(TASKS["bbh_zeroshot_date_understanding"], root, limit=1)[0]
    assert z.context == "Infer the date from context.\n\nQ: " + t.docs(root)[0]["input"] + "\nA:"
    g = build_examples(TASKS["gsm8k"], root, limit=2)
    assert [e.context.count("\nAnswer: ") for e in g] == [5, 5] and g[0].context.endswith("\nAnswer:")
    assert g[0].context != g[1].context  # one Random(1234) for the task, a fresh draw per doc


# ------------------------------------------------------------------------------------ extraction and scoring only
@functools.lru_cache(maxsize=1)
def _bbh_zeroshot_utils():
    spec = importlib.util.spec_from_file_location("bbh_zs_utils", _tasks_dir() / "bbh" / "zeroshot" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    return utils


def _their_pipeline(steps: list[dict]):
    """lm-eval's filter objects for one pipeline: registry filters, or the BBH 0-shot utils classes."""
    from lm_eval.api.registry import get_filter

    utils = _bbh_zeroshot_utils()
    out = []
    for step in steps:
        kw = {k: v for k, v in step.items() if k != "function"}
        fn = step["function"]
        cls = getattr(utils, fn["!function"].split(".")[1]) if isinstance(fn, dict) else get_filter(fn)
        out.append(cls(**kw))
    return out


def _their_filter(pipeline, text: str, doc: dict) -> str:
    resps = [[text]]
    for f in pipeline:
        resps = f.apply(resps, [doc])
    resps = list(resps)
    return resps[0] if isinstance(resps[0], str) else resps[0][0]


def _their_exact_match(pred: str, ref: str, kwargs: dict) -> float:
    from lm_eval.api.metrics import exact_match_hf_evaluate

    return float(exact_match_hf_evaluate(predictions=[pred], references=[ref], **kwargs)["exact_match"])


def _candidates(task_name: str, doc: dict, gold: str) -> list[str]:
    """Model-like answers: the gold string itself, CoT endings, letters in several spellings, numbers in words."""
    return [gold, f" {gold}", f"Let's see. So the answer is {gold}.", f"the answer is {gold}.\n\nQ", "(B)",
            "The answer: C", "I think it is plausible", "no, it is not plausible", "Bob tells the truth.",
            "There are twenty one apples.", "#### 1,234.", "$18 per day, so 18.", "[invalid]", "",
            " ".join(reversed(doc.get("input", "List: a b").split("List:")[-1].split()))]


def test_filters_and_exact_match_agree_with_lm_eval():
    """Every task's filter pipelines and exact_match options, ours vs lm-eval's objects, on ~20k strings."""
    _lm_eval()
    from eval_harness import metrics as M
    from eval_harness.tasks import TASKS

    root = _root()
    n_pairs = 0
    for name, task in TASKS.items():
        if task.output_type != "generate_until":
            continue
        docs = task.docs(root)
        step = max(1, len(docs) // 40)
        theirs = {f: _their_pipeline(list(steps)) for f, steps in task.filters}
        for doc in docs[::step]:
            gold = task.gold(doc)
            for text in _candidates(name, doc, gold):
                for f, steps in task.filters:
                    ours = M.apply_filters(text, list(steps), doc)
                    assert ours == _their_filter(theirs[f], text, doc), (name, f, text)
                    assert M.exact_match(ours, gold, **task.metric_kwargs) == _their_exact_match(
                        ours, gold, task.metric_kwargs), (name, f, ours, gold)
                    n_pairs += 1
    assert n_pairs > 10000
    print(f"filter + exact_match pairs compared: {n_pairs}")


def test_gold_answers_score_one():
    """The reference solution as the generation: strict GSM8K extraction scores 1 on every test doc; each BBH CoT
    exemplar's own chain of thought ends in an answer that get-answer extracts and that equals the exemplar's
    final answer."""
    from eval_harness import metrics as M
    from eval_harness.tasks import TASKS

    root = _root()
    t = TASKS["gsm8k"]
    docs = t.docs(root)
    strict = dict(t.filters)["strict-match"]
    scores = [M.exact_match(M.apply_filters(" " + d["answer"], list(strict)), t.gold(d), **t.metric_kwargs)
              for d in docs]
    assert len(scores) == 1319 and sum(scores) == 1319
    flexible = dict(t.filters)["flexible-extract"]
    flex = [M.exact_match(M.apply_filters(" " + d["answer"], list(flexible)), t.gold(d), **t.metric_kwargs)
            for d in docs]
    assert sum(flex) >= 1300  # the last number of the solution is its final answer for all but a few
    n = 0
    for name, task in TASKS.items():
        if not name.startswith("bbh_cot_fewshot_"):
            continue
        (steps,) = [s for f, s in task.filters if f == "get-answer"]
        for shot in task.fewshot_samples:
            got = M.apply_filters(shot["target"], list(steps), shot)
            assert got != M.FALLBACK and shot["target"].rstrip().endswith(got + "."), (name, got)
            n += 1
    assert n == 81


def test_bbh_group_metrics_size_weighted_and_macro():
    from eval_harness.metrics import group_metrics

    res = {"a": {"n": 2, "exact_match,get-answer": 1.0, "exact_match,get-answer_stderr": 0.0},
           "b": {"n": 6, "exact_match,get-answer": 0.5, "exact_match,get-answer_stderr": 0.2236}}
    g = group_metrics(res, ["a", "b"], ("exact_match,get-answer",))
    assert g["exact_match,get-answer"] == pytest.approx((2 * 1.0 + 6 * 0.5) / 8)
    assert g["exact_match,get-answer_macro"] == pytest.approx(0.75) and g["n"] == 8


# ------------------------------------------------------------------------------------------------------ bad input
def test_bad_generation_input(tmp_path):
    from eval_harness.data import TaskDataError
    from eval_harness.tasks import TASKS, build_examples

    root = _root()
    with pytest.raises(TaskDataError, match=r"bbh_cot_fewshot_navigate: num_fewshot=4 .* 3 few-shot exemplars"):
        build_examples(TASKS["bbh_cot_fewshot_navigate"], root, num_fewshot=4)
    bad = tmp_path / "mirror"
    (bad / "gsm8k").mkdir(parents=True)
    shutil.copy(root / "gsm8k" / "train.jsonl", bad / "gsm8k" / "train.jsonl")
    (bad / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "q?", "solution": "#### 1"}) + "\n")
    with pytest.raises(TaskDataError, match=r"gsm8k: .*gsm8k/test.jsonl: line 1: field 'answer' missing"):
        build_examples(TASKS["gsm8k"], bad)
    (bad / "bbh").mkdir()
    (bad / "bbh" / "navigate.json").write_text(json.dumps({"examples": [{"input": "x"}]}))
    with pytest.raises(TaskDataError, match=r"navigate.json: example 0: field 'target' missing"):
        build_examples(TASKS["bbh_zeroshot_navigate"], bad)


# -------------------------------------------------------------------------------------- generation vs lm-eval
@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    lm_eval = _lm_eval()
    from lm_eval.tasks import TaskManager

    from eval_harness.evaluate import evaluate
    from eval_harness.tasks import TASKS
    from eval_harness.tiny import build_tiny_lm

    root = _root()
    base = tmp_path_factory.mktemp("gen")
    texts = [d["question"] + " " + d["answer"] for d in TASKS["gsm8k"].load(root, "train")[:300]]
    for t in GEN_TASKS:
        if t != "gsm8k":
            texts += [d["input"] for d in TASKS[t].docs(root)[:40]]
    model_dir = build_tiny_lm(base / "model", texts, vocab_size=600, max_position_embeddings=1536)

    ydir, cache = base / "tasks", str(base / "hf_cache")
    ydir.mkdir()
    files = {s: _write_jsonl(base / "data" / "gsm8k" / f"{s}.jsonl", TASKS["gsm8k"].load(root, s))
             for s in ("train", "test")}
    local = {"dataset_path": "json", "dataset_name": None, "tag": [],
             "dataset_kwargs": {"data_files": files, "cache_dir": cache}}
    (ydir / "gsm8k_local.yaml").write_text(json.dumps({
        "include": str(_tasks_dir() / "gsm8k" / "gsm8k.yaml"), "task": "gsm8k_local", **local}), encoding="utf-8")
    (ydir / "gsm8k_stops_local.yaml").write_text(json.dumps({
        "include": str(_tasks_dir() / "gsm8k" / "gsm8k.yaml"), "task": "gsm8k_stops_local", **local,
        "num_fewshot": 0, "generation_kwargs": {**STOPS, "do_sample": False}}), encoding="utf-8")
    for t in GEN_TASKS:
        if t == "gsm8k":
            continue
        f = _write_jsonl(base / "data" / t / "test.jsonl", TASKS[t].docs(root))
        (ydir / f"{t}_local.yaml").write_text(json.dumps({
            "include": str(_tasks_dir() / TASKS[t].lm_eval_yaml), "task": f"{t}_local", "dataset_path": "json",
            "dataset_name": None, "dataset_kwargs": {"data_files": {"test": f}, "cache_dir": cache}}),
            encoding="utf-8")

    os.environ["HF_DATASETS_OFFLINE"] = "1"
    tm = TaskManager(include_path=str(ydir))
    theirs = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(model_dir), "dtype": "float32"}, device="cpu", batch_size=1,
        tasks=[f"{t}_local" for t in GEN_TASKS] + ["gsm8k_stops_local"], limit=LIMIT, log_samples=True,
        task_manager=tm, bootstrap_iters=100)
    ours = evaluate(model_dir, GEN_TASKS, data_root=root, limit=LIMIT, batch_size=4, out_dir=base / "out")
    return {"theirs": theirs, "ours": ours, "model_dir": model_dir, "root": root, "out": base / "out"}


def _their_samples(theirs: dict, task: str) -> dict[str, list[dict]]:
    """lm-eval logs one sample per (doc, filter): {filter: [samples by doc_id]}."""
    by_filter: dict[str, list[dict]] = {}
    for s in theirs["samples"][f"{task}_local"]:
        by_filter.setdefault(s["filter"], []).append(s)
    return {f: sorted(v, key=lambda s: s["doc_id"]) for f, v in by_filter.items()}


@pytest.mark.parametrize("task", GEN_TASKS)
def test_generation_agrees(gen, task):
    from eval_harness.tasks import TASKS

    theirs, ours = _their_samples(gen["theirs"], task), gen["ours"]["samples"][task]
    assert set(theirs) == {f for f, _ in TASKS[task].filters}
    for f, ts in theirs.items():
        assert len(ts) == len(ours) == LIMIT
        for t, o in zip(ts, ours):
            assert t["arguments"][0][0] == o["prompt"]  # identical prompt strings
            assert t["resps"][0][0] == o["generation"], (task, o["doc_id"])  # identical generated strings
            assert t["filtered_resps"][0] == o["filtered"][f], (task, f, o["doc_id"])
            assert t["target"] == o["gold"]
            assert float(t["exact_match"]) == o["exact_match"][f]
        res_t, res_o = gen["theirs"]["results"][f"{task}_local"], gen["ours"]["results"][task]
        assert res_o[f"exact_match,{f}"] == pytest.approx(res_t[f"exact_match,{f}"], abs=1e-12)
        assert res_o[f"exact_match,{f}_stderr"] == pytest.approx(res_t[f"exact_match_stderr,{f}"], abs=1e-12)


def test_generation_exercised_truncation(gen):
    """The contexts really are longer than max_length - max_gen_toks (so left truncation decided the inputs)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gen["model_dir"]))
    gsm = [len(tok.encode(r["prompt"])) for r in gen["ours"]["samples"]["gsm8k"]]
    cot = [len(tok.encode(r["prompt"])) for r in gen["ours"]["samples"]["bbh_cot_fewshot_date_understanding"]]
    assert min(gsm) > 1536 - 256 and min(cot) > 1536 - 1024
    assert tok.encode("x")[0] == tok.bos_token_id


def test_stop_sequences_agree(gen):
    """Stop strings that the random model emits: the engine cuts where lm-eval cuts, batched and at batch 1."""
    from eval_harness.engine import LMScorer

    samples = _their_samples(gen["theirs"], "gsm8k_stops")["strict-match"]
    reqs = [(s["arguments"][0][0], dict(s["arguments"][0][1])) for s in samples]
    theirs = [s["resps"][0][0] for s in samples]
    assert all("e" not in t and "ou" not in t for t in theirs)
    uncut = LMScorer.from_pretrained(gen["model_dir"], batch_size=1).generate_until(
        [(c, {"until": [], "max_gen_toks": 40}) for c, _ in reqs])
    assert all(u.startswith(t) for t, u in zip(theirs, uncut))
    assert sum(len(t) < len(u) for t, u in zip(theirs, uncut)) >= 2  # the stops did cut
    for bs in (1, 4):
        got = LMScorer.from_pretrained(gen["model_dir"], batch_size=bs).generate_until(reqs)
        assert got == theirs, bs


def test_generation_records_written(gen):
    out = gen["out"]
    recs = [json.loads(x) for x in (out / "samples_gsm8k.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(recs) == LIMIT
    assert {"prompt", "generation_kwargs", "generation", "filtered", "gold", "exact_match"} <= set(recs[0])
    assert set(recs[0]["filtered"]) == {"strict-match", "flexible-extract"}
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| gsm8k | 3 |" in md and "exact_match,strict-match" in md
