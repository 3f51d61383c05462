"""HumanEval in the harness: lm-eval 0.4.13's ``humaneval`` / ``humaneval_64`` task definitions, generation through the
engine, execution of prompt + generation + test in the sandbox, pass@1 and the unbiased pass@k.

lm-eval's own HumanEval cannot run here (its ``utils.py`` calls ``evaluate.load("code_eval")`` at import, which needs
the network), so agreement is shown on the definition (prompt, stop sequences, budget, repeats, ks read from the
wheel's YAMLs) and on the scoring path: the 164 canonical solutions, handed to :func:`eval_harness.evaluate` as if a
model had written them (with a trailing top-level ``def`` that the engine's stop rule must cut), score pass@1 = 1.0.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.conftest import mirror_dir

pytestmark = pytest.mark.mirror


def _root() -> Path:
    return mirror_dir("humaneval").parent


class CannedScorer:
    """Stands in for :class:`eval_harness.engine.LMScorer`: answers each prompt with a fixed completion (one per
    repeat, cycling), cut with the engine's own stop rule, and records the requests it got."""

    device = "cpu"
    max_length = 2048
    tokenizer = None

    def __init__(self, completions: dict[str, list[str]]):
        self.completions = completions
        self.requests: list[tuple[str, dict]] = []
        self._next: dict[str, int] = {}

    def generate_until(self, requests):
        from eval_harness.engine import cut_at_stops, normalize_gen_kwargs

        out = []
        for ctx, kw in requests:
            self.requests.append((ctx, kw))
            i = self._next.get(ctx, 0)
            self._next[ctx] = i + 1
            choices = self.completions[ctx]
            out.append(cut_at_stops(choices[i % len(choices)], normalize_gen_kwargs(kw)["until"]))
        return out


def test_task_definitions_are_lm_evals():
    yaml = pytest.importorskip("yaml")
    import lm_eval

    from eval_harness.tasks import TASKS

    d = Path(lm_eval.__file__).parent / "tasks" / "humaneval"
    loader = type("L", (yaml.SafeLoader,), {})
    loader.add_constructor("!function", lambda ld, node: ld.construct_scalar(node))
    for name in ("humaneval", "humaneval_64"):
        spec = yaml.load((d / f"{name}.yaml").read_text(), Loader=loader)
        if "include" in spec:
            spec = {**yaml.load((d / spec["include"]).read_text(), Loader=loader), **spec}
        t = TASKS[name]
        assert t.generation_kwargs == spec["generation_kwargs"]
        assert t.repeats == spec["repeats"] and t.num_fewshot == spec["num_fewshot"] == 0
        assert t.metric_kwargs["ks"] == tuple(spec["metric_list"][0]["k"])
        assert spec["doc_to_text"] == "{{prompt}}" and spec["doc_to_target"] == "{{test}}\ncheck({{entry_point}})"
        doc = {"prompt": "def f():\n", "test": "def check(c):\n    pass", "entry_point": "f"}
        assert t.doc_to_text(doc) == doc["prompt"] and t.doc_to_target(doc) == "def check(c):\n    pass\ncheck(f)"
    utils = (d / "utils.py").read_text()
    assert 'return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs)]' in utils


def test_the_164_canonical_solutions_score_pass_at_1_of_one_through_the_harness(tmp_path):
    from eval_harness.data import humaneval_docs
    from eval_harness.evaluate import evaluate

    root = _root()
    problems = humaneval_docs("humaneval", root)
    assert len(problems) == 164
    # what a model would emit: the solution, then the start of another top-level function the stop rule must cut
    canned = CannedScorer({p["prompt"]: [p["canonical_solution"] + "\n\ndef extra():\n    raise SystemExit(3)\n"]
                           for p in problems})
    out = evaluate("canned", ["humaneval"], data_root=root, scorer=canned, out_dir=tmp_path / "res")
    r = out["results"]["humaneval"]
    assert r["n"] == 164 and r["samples_per_problem"] == 1
    bad = [(x["doc"]["task_id"], x["execution"]) for x in out["samples"]["humaneval"] if x["n_correct"] != 1]
    assert bad == [] and r["pass@1"] == 1.0 and r["pass@1_stderr"] == 0.0
    assert [ctx for ctx, _ in canned.requests] == [p["prompt"] for p in problems]
    assert canned.requests[0][1]["max_gen_toks"] == 1024 and canned.requests[0][1]["do_sample"] is False
    rec = out["samples"]["humaneval"][0]
    assert rec["generation"] == problems[0]["canonical_solution"] + "\n"  # cut at "\ndef"
    assert rec["execution"][0]["status"] == "passed"
    lines = (tmp_path / "res" / "samples_humaneval.jsonl").read_text().splitlines()
    assert len(lines) == 164 and json.loads(lines[5])["execution"][0]["passed"] is True
    assert "pass@1" in (tmp_path / "res" / "results.md").read_text()


def test_wrong_and_hanging_completions_fail_and_pass_at_k_is_the_unbiased_estimator():
    from eval_harness.evaluate import _execute_humaneval
    from eval_harness.data import humaneval_docs
    from eval_harness.sandbox import estimate_pass_at_k

    probs = humaneval_docs("humaneval", _root())[:2]
    good = [p["canonical_solution"] for p in probs]
    # problem 0: 2 of 4 samples right (one wrong, one an infinite loop); problem 1: 1 of 4
    gens = [[good[0], "    return None\n", good[0], "    while True:\n        pass\n"],
            ["    return 0\n", good[1], "    raise ValueError\n", "    return None\n"]]
    recs = [{"doc": p, "generation": g[0], "generations": g} for p, g in zip(probs, gens)]
    res = _execute_humaneval(recs, (1, 2, 4), {"timeout_s": 3.0})
    assert [r["n_correct"] for r in recs] == [2, 1]
    assert [x["status"] for x in recs[0]["execution"]] == ["passed", "failed", "passed", "timeout"]
    assert res["samples_per_problem"] == 4
    for k in (1, 2, 4):
        want = sum(estimate_pass_at_k(4, [2, 1], k)) / 2
        assert res[f"pass@{k}"] == pytest.approx(want, abs=1e-12)
    # by hand: pass@1 = (2/4 + 1/4) / 2; pass@2 = (1 - C(2,2)/C(4,2) + 1 - C(3,2)/C(4,2)) / 2; pass@4 = 1
    assert res["pass@1"] == pytest.approx(0.375) and res["pass@2"] == pytest.approx((5 / 6 + 0.5) / 2)
    assert res["pass@4"] == 1.0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from eval_harness.data import humaneval_docs
    from eval_harness.tiny import build_tiny_lm

    torch.set_num_threads(1)
    texts = [p["prompt"] + p["canonical_solution"] for p in humaneval_docs("humaneval", _root())]
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_he"), texts, vocab_size=300, max_position_embeddings=1024)


def test_a_model_generates_and_its_samples_run_in_the_sandbox(tiny_model):
    from eval_harness.evaluate import evaluate

    out = evaluate(tiny_model, ["humaneval"], data_root=_root(), limit=3, gen_kwargs={"max_gen_toks": 12})
    recs = out["samples"]["humaneval"]
    assert len(recs) == 3 and out["config"]["gen_kwargs"] == {"max_gen_toks": 12}
    for r in recs:
        assert r["generation_kwargs"]["max_gen_toks"] == 12
        assert all(s not in r["generation"] for s in ("\nclass", "\ndef", "\n#", "\nif", "\nprint"))
        assert r["execution"][0]["status"] in ("passed", "failed", "timeout", "killed")
        assert r["pass@1"] == float(r["n_correct"])
    assert out["results"]["humaneval"]["pass@1"] == sum(r["n_correct"] for r in recs) / 3


def test_sampled_generation_repeats_with_the_seed(tiny_model):
    from eval_harness.engine import LMScorer

    kw = {"until": ["\ndef"], "max_gen_toks": 10, "do_sample": True, "temperature": 1.0, "top_p": 0.95}
    greedy = {"until": ["\ndef"], "max_gen_toks": 10, "do_sample": False}
    prompt = "def add(a, b):\n"
    a = LMScorer.from_pretrained(tiny_model, seed=7).generate_until([(prompt, kw)] * 4)
    b = LMScorer.from_pretrained(tiny_model, seed=7).generate_until([(prompt, kw)] * 4)
    c = LMScorer.from_pretrained(tiny_model, seed=8).generate_until([(prompt, kw)] * 4)
    g = LMScorer.from_pretrained(tiny_model).generate_until([(prompt, greedy)] * 4)
    assert a == b and a != c
    assert len(set(a + c)) > 1 and len(set(g)) == 1  # samples vary, greedy rows are one string


def test_bad_input_fails_before_the_model_loads(tmp_path):
    from eval_harness.data import TaskDataError
    from eval_harness.engine import normalize_gen_kwargs
    from eval_harness.evaluate import evaluate

    (tmp_path / "m").mkdir()  # passes the directory check; loading it would fail, so no check below may get that far
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match=r"humaneval: .*unsupported key\(s\) \['beam_size'\]"):
        evaluate(tmp_path / "m", ["humaneval"], data_root=_root(), gen_kwargs={"beam_size": 4})
    with pytest.raises(ValueError, match="do_sample needs a temperature above 0"):
        normalize_gen_kwargs({"do_sample": True})
    with pytest.raises(ValueError, match="a temperature above 0 needs do_sample true"):
        normalize_gen_kwargs({"temperature": 0.5})
    bad = tmp_path / "root" / "humaneval"
    bad.mkdir(parents=True)
    with gzip.open(bad / "HumanEval.jsonl.gz", "wt") as f:
        f.write(json.dumps({"task_id": "X/0", "prompt": "def f():\n", "entry_point": "f", "test": ""}) + "\n")
    with pytest.raises(TaskDataError, match=r"humaneval: .*HumanEval\.jsonl\.gz:1 \(task X/0\): missing field"
                                            r"\(s\) canonical_solution"):
        evaluate(tmp_path / "m", ["humaneval"], data_root=tmp_path / "root")


def test_cli_parses_gen_kwargs():
    from eval_harness.__main__ import parse_gen_kwargs

    assert parse_gen_kwargs("max_gen_toks=256,do_sample=false,temperature=0.0,until=x") == {
        "max_gen_toks": 256, "do_sample": False, "temperature": 0.0, "until": "x"}
    assert parse_gen_kwargs(None) is None
    with pytest.raises(ValueError, match="'oops' is not key=value"):
        parse_gen_kwargs("oops")
