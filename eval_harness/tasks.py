"""Task registry: lm-eval 0.4.13's prompts, choices, targets, delimiters, few-shot defaults and metrics, on the mirror.

``TASKS`` is a plain dict name -> :class:`Task`; ``GROUPS`` names lm-eval's groups (``kobest``, ``click``,
``click_cul``, ``click_lang``) and their direct members. The prompt functions below are copied verbatim from the
installed wheel (``lm_eval/tasks/kobest/utils.py``, ``tasks/click/click_{cul,lang}/utils.py``,
``tasks/wikitext/preprocess_wikitext.py``) and the YAML templates (``"{{paragraph}} 질문: {{question}} 답변: "``) are
written out as f-strings.

What decides equality with lm-eval (``api/task.py`` of the wheel):

* context = description (``""``) + for each shot ``doc_to_text(shot) + target_delimiter + answer + fewshot_delimiter``
  + ``doc_to_text(doc)``; it never ends with the target delimiter.
* each choice is scored as the continuation ``target_delimiter + choice`` (``" "`` for every task here); the engine
  then moves the context's trailing whitespace into the continuation (``_encode_pair``).
* gold: an int target is an index, a string target is ``choices.index(target)``; ``"{{label}}"`` renders to digits
  that lm-eval turns back into an int.
* few-shot (KoBEST and CLIcK default to 0 shots): one ``random.Random(seed)`` per task (seed 1234 like
  ``simple_evaluate``'s ``fewshot_random_seed``), ``rnd.sample(pool, k)`` called once per eval doc in eval-doc order;
  KoBEST draws from ``train``; CLIcK's few-shot split is its test split, so it samples ``k + 1`` and drops the eval
  doc (``ContextSampler.sample``). ``limit`` takes the first N eval docs after ``process_docs``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from eval_harness.data import (TaskDataError, bbh_docs, click_docs, compression_texts, gsm8k_docs, humaneval_docs,
                               kobest_docs, mt_docs, wikitext_docs)


class UnknownTaskError(KeyError):
    """A task or group name that the registry does not have."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


# ------------------------------------------------------------------------------------------- lm-eval prompt functions
def copa_doc_to_text(doc: dict) -> str:
    connector = {"원인": " 왜냐하면", "결과": " 그래서"}[doc["question"].strip()]
    return f"""{doc["premise"]} {connector}"""  # premise + " " + " 그래서": two spaces, as lm-eval


def copa_doc_to_target(doc: dict) -> str:
    correct_choice = doc["alternative_1"] if doc["label"] == 0 else doc["alternative_2"]
    return f"""{correct_choice}"""


def copa_doc_to_choice(doc: dict) -> list[str]:
    return [f"""{doc["alternative_1"]}""", f"""{doc["alternative_2"]}"""]


def sentineg_doc_to_text(doc: dict) -> str:
    return f"""문장: {doc["sentence"]} 긍부정:"""


def wic_doc_to_text(doc: dict) -> str:
    return f"""문장1: {doc["context_1"]} 문장2: {doc["context_2"]} 두 문장에서 {doc["word"]}가 같은 뜻으로 쓰였나?"""


def boolq_doc_to_text(doc: dict) -> str:
    return f"{doc['paragraph']} 질문: {doc['question']} 답변: "  # YAML template; ends with a space


def hellaswag_process_docs(docs: list[dict]) -> list[dict]:
    return [{**d, "query": f"""문장: {d["context"]}""",
             "choices": [d["ending_1"], d["ending_2"], d["ending_3"], d["ending_4"]], "gold": int(d["label"])}
            for d in docs]


def click_get_context(doc: dict) -> str:
    ctx = doc["paragraph"]
    q = doc["question"]
    opt = doc["choices"]
    if ctx:
        res = f"주어진 맥락을 천천히 읽고, 질문에 대한 적절한 정답을 A, B, C, D 중에 골라 알파벳 하나로 답하시오.\n\n맥락: {ctx}\n질문: {q}\n보기:\nA:{opt[0]}, B: {opt[1]}, C: {opt[2]}, D: {opt[3]}\n정답:"  # noqa: E501
    else:
        res = f"주어진 질문을 천천히 읽고, 적절한 정답을 A, B, C, D 중에 골라 알파벳 하나로 답하시오.\n\n질문: {q}\n보기:\nA:{opt[0]}, B: {opt[1]}, C: {opt[2]}, D: {opt[3]}\n정답:"  # noqa: E501
    return res


def click_get_target(doc: dict) -> str:
    ans = doc["answer"]
    if "CSAT" in doc["id"]:
        return ["A", "B", "C", "D", "E"][doc["choices"].index(ans)]
    return ["A", "B", "C", "D"][doc["choices"].index(ans)]


def click_get_choices(doc: dict) -> list[str]:
    if "CSAT" in doc["id"]:
        return ["A", "B", "C", "D", "E"]
    return ["A", "B", "C", "D"]


def _q(ex: dict) -> bool:
    return "대화" in ex["question"] or "발화" in ex["question"] or "질의" in ex["question"]


CLICK_FILTERS: dict[str, Callable[[dict], bool]] = {
    "click_cul_economy": lambda ex: "economy" in ex["id"].lower(),
    "click_cul_geography": lambda ex: "geography" in ex["id"].lower(),
    "click_cul_history": lambda ex: "KHB" in ex["id"] or "history" in ex["id"].lower(),
    "click_cul_law": lambda ex: "law" in ex["id"].lower() or "PSAT" in ex["id"],
    "click_cul_politics": lambda ex: "politics" in ex["id"].lower(),
    "click_cul_kpop": lambda ex: "popular" in ex["id"].lower(),
    "click_cul_society": lambda ex: "society" in ex["id"].lower(),
    "click_cul_tradition": lambda ex: "tradition" in ex["id"].lower(),
    "click_lang_text": lambda ex: "CSAT_korean_22" in ex["id"]
    or ("CSAT_korean_23" in ex["id"] and int(ex["id"].split("_")[-1]) < 35)
    or ("TK" in ex["id"] and int(ex["id"].split("_")[-1]) > 4),
    "click_lang_grammar": lambda ex: ("CSAT_korean" in ex["id"]
                                      and (int(ex["id"].split("_")[2]) < 21 and int(ex["id"].split("_")[3]) > 10))
    or ("Kedu_1" in ex["id"] and (ex["id"].split("_")[1] != "16" or not _q(ex)))
    or ("TK" in ex["id"] and int(ex["id"].split("_")[-1]) < 5),
    "click_lang_function": lambda ex: ("CSAT_korean" in ex["id"]
                                       and (int(ex["id"].split("_")[-1]) > 34
                                            or (int(ex["id"].split("_")[2]) < 21
                                                and int(ex["id"].split("_")[3]) < 11)))
    or ("Kedu_16" in ex["id"] and _q(ex)) or "PSE_korean" in ex["id"],
}


def wikitext_detokenizer(doc: dict) -> str:
    string = doc["page"]
    # contractions
    string = string.replace("s '", "s'")
    string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
    # number separators
    string = string.replace(" @-@ ", "-")
    string = string.replace(" @,@ ", ",")
    string = string.replace(" @.@ ", ".")
    # punctuation
    string = string.replace(" : ", ": ")
    string = string.replace(" ; ", "; ")
    string = string.replace(" . ", ". ")
    string = string.replace(" ! ", "! ")
    string = string.replace(" ? ", "? ")
    string = string.replace(" , ", ", ")
    # double brackets
    string = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", string)
    string = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", string)
    string = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", string)
    string = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', string)
    string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
    # miscellaneous
    string = string.replace("= = = =", "====")
    string = string.replace("= = =", "===")
    string = string.replace("= =", "==")
    string = string.replace(" " + chr(176) + " ", chr(176))
    string = string.replace(" \n", "\n")
    string = string.replace("\n ", "\n")
    string = string.replace(" N ", " 1 ")
    string = string.replace(" 's", "'s")
    return string


def wikitext_counts(doc: dict) -> tuple[int, int]:
    """(words, bytes) of the *original* page, as lm-eval's ``process_results`` counts them."""
    return len(re.split(r"\s+", doc["page"])), len(doc["page"].encode("utf-8"))


# ------------------------------------------------------------------------------------------------------ task objects
def _label(doc: dict) -> int:
    return int(doc["label"])


@dataclass(frozen=True)
class Task:
    """One evaluation task. ``load(root, split)`` returns the raw (HF-schema) docs; ``process_docs`` maps them."""

    name: str
    output_type: str  # "multiple_choice" | "loglikelihood_rolling" | "generate_until"
    load: Callable[[Path, str], list[dict]]
    test_split: str
    metrics: tuple[str, ...]
    lm_eval_yaml: str  # the task YAML in lm_eval/tasks/ whose prompts these are
    fewshot_split: str | None = None
    process_docs: Callable[[list[dict]], list[dict]] = field(default=lambda docs: docs)
    doc_to_text: Callable[[dict], str] | None = None
    doc_to_choice: Callable[[dict], list[str]] | None = None
    doc_to_target: Callable[[dict], int | str] | None = None
    num_fewshot: int = 0
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    description: str = ""
    # generate_until: lm-eval's generation_kwargs, filter_list ([(name, [steps])]) and exact_match options; a fixed
    # list of few-shot exemplars (sampler first_n) instead of draws from fewshot_split
    generation_kwargs: dict | None = None
    filters: tuple = ()
    metric_kwargs: dict = field(default_factory=dict)
    fewshot_samples: tuple = ()
    repeats: int = 1  # generations per doc (lm-eval's ``repeats``; humaneval_64: 64 samples for pass@k)

    def docs(self, root: Path, split: str | None = None) -> list[dict]:
        return self.process_docs(self.load(Path(root), split or self.test_split))

    def gold(self, doc: dict) -> int | str:
        target = self.doc_to_target(doc)
        if self.output_type == "generate_until":
            return target
        return target if isinstance(target, int) else self.doc_to_choice(doc).index(target)


@dataclass(frozen=True)
class Example:
    """One eval doc turned into requests: the context and the choices (multiple choice) or the scored text."""

    task: str
    doc_id: int
    doc: dict
    context: str
    choices: tuple[str, ...] = ()
    gold: int | str = -1  # generate_until: the reference string
    text: str = ""  # loglikelihood_rolling: the scored (detokenized) string
    generation_kwargs: dict | None = None

    def requests(self, target_delimiter: str = " ") -> list[tuple[str, str]]:
        if self.generation_kwargs is not None:
            return [(self.context, json.dumps(self.generation_kwargs, sort_keys=True))]
        return [(self.context, f"{target_delimiter}{c}") for c in self.choices]


def _kobest(name: str, text, choice, target, metrics=("acc", "f1"), process=None) -> Task:
    return Task(name=name, output_type="multiple_choice", load=partial(kobest_docs, name), test_split="test",
                fewshot_split="train", metrics=metrics, lm_eval_yaml=f"kobest/{name}.yaml", doc_to_text=text,
                doc_to_choice=choice, doc_to_target=target, **({"process_docs": process} if process else {}))


def _click_load(name: str, root: Path, split: str) -> list[dict]:
    if split != "train":
        raise TaskDataError(f"{name}: CLIcK has one split, 'train' (got {split!r})")
    return click_docs(name, root)


def _click(name: str) -> Task:
    kind = "cul" if name.startswith("click_cul") else "lang"
    keep = CLICK_FILTERS[name]
    return Task(name=name, output_type="multiple_choice", load=partial(_click_load, name), test_split="train",
                fewshot_split="train", metrics=("acc", "acc_norm"),
                lm_eval_yaml=f"click/click_{kind}/{name}.yaml", process_docs=lambda docs: [d for d in docs if keep(d)],
                doc_to_text=click_get_context, doc_to_choice=click_get_choices, doc_to_target=click_get_target)


TASKS: dict[str, Task] = {
    "kobest_boolq": _kobest("kobest_boolq", boolq_doc_to_text, lambda d: ["아니오", "예"], _label),
    "kobest_copa": _kobest("kobest_copa", copa_doc_to_text, copa_doc_to_choice, copa_doc_to_target),
    "kobest_hellaswag": _kobest("kobest_hellaswag", lambda d: d["query"], lambda d: d["choices"], _label,
                                metrics=("acc", "acc_norm", "f1"), process=hellaswag_process_docs),
    "kobest_sentineg": _kobest("kobest_sentineg", sentineg_doc_to_text, lambda d: ["부정", "긍정"], _label),
    "kobest_wic": _kobest("kobest_wic", wic_doc_to_text, lambda d: ["아니오", "예"], _label),
    **{n: _click(n) for n in CLICK_FILTERS},
    "wikitext": Task(name="wikitext", output_type="loglikelihood_rolling", load=partial(wikitext_docs, "wikitext"),
                     test_split="test", metrics=("word_perplexity", "byte_perplexity", "bits_per_byte"),
                     lm_eval_yaml="wikitext/wikitext.yaml", doc_to_target=wikitext_detokenizer),
}

# ------------------------------------------------------------------------------------------------ generation tasks
_JINJA = None


def render(template: str, doc: dict) -> str:
    """lm-eval's ``apply_template``: Jinja2 with ``StrictUndefined`` and ``keep_trailing_newline=True``."""
    global _JINJA
    if _JINJA is None:
        from jinja2 import BaseLoader, Environment, StrictUndefined

        _JINJA = Environment(loader=BaseLoader, undefined=StrictUndefined, keep_trailing_newline=True)
    return _JINJA.from_string(template).render(**doc)


def _target(template: str, doc: dict) -> str:
    out = render(template, doc)
    if len(out) >= 2 and out[0] == "[" and out[-1] == "]":  # lm-eval would literal_eval it; no task here has one
        raise TaskDataError(f"target {out!r} looks like a list: lm-eval would parse it, which is not reproduced")
    return out


GSM8K = Task(
    name="gsm8k", output_type="generate_until", load=partial(gsm8k_docs, "gsm8k"), test_split="test",
    fewshot_split="train", metrics=("exact_match",), lm_eval_yaml="gsm8k/gsm8k.yaml",
    doc_to_text=partial(render, "Question: {{question}}\nAnswer:"), doc_to_target=partial(_target, "{{answer}}"),
    num_fewshot=5,
    generation_kwargs={"until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False, "temperature": 0.0},
    filters=(("strict-match", ({"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                               {"function": "take_first"})),
             ("flexible-extract", ({"function": "regex", "group_select": -1,
                                    "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"}, {"function": "take_first"}))),
    metric_kwargs={"ignore_case": True, "ignore_punctuation": False,
                   "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]},
)

BBH_PROMPTS = Path(__file__).with_name("prompts") / "bbh.json"


def _bbh_tasks() -> dict[str, Task]:
    """The 27 BBH tasks, 3-shot CoT (``bbh_cot_fewshot_*``) and 0-shot (``bbh_zeroshot_*``), from
    ``prompts/bbh.json`` (lm-eval 0.4.13's task YAMLs, see :mod:`eval_harness.lm_eval_prompts`), with every filter
    pipeline (the 0-shot ``flexible-extract`` ones through :data:`eval_harness.metrics.PY_FILTERS`)."""
    spec = json.loads(BBH_PROMPTS.read_text(encoding="utf-8"))["tasks"]
    out = {}
    for name, t in spec.items():
        filters = tuple((f["name"], tuple(f["filter"])) for f in t["filter_list"])
        (metric,) = t["metric_list"]
        out[name] = Task(
            name=name, output_type="generate_until", load=lambda root, split, sub=t["subtask"], n=name: bbh_docs(n, root, sub),
            test_split="test", metrics=("exact_match",), lm_eval_yaml=f"bbh/{t['variant'][4:]}/{t['subtask']}.yaml",
            doc_to_text=partial(render, t["doc_to_text"]), doc_to_target=partial(_target, t["doc_to_target"]),
            num_fewshot=t["num_fewshot"], target_delimiter=t["target_delimiter"],
            fewshot_delimiter=t["fewshot_delimiter"], description=t["description"],
            generation_kwargs=t["generation_kwargs"], filters=filters,
            metric_kwargs={k: v for k, v in metric.items() if k in ("ignore_case", "ignore_punctuation",
                                                                    "ignore_numbers", "regexes_to_ignore")},
            fewshot_samples=tuple(t["fewshot_samples"]))
    return out


BBH_TASKS = _bbh_tasks()

LANG_NAMES = {"ko": "Korean", "en": "English"}




def _mt(corpus: str, src: str, tgt: str) -> Task:
    """Korean-English translation, in lm-eval's translation-task format (``tasks/translation/utils.py`` +
    ``wmt_common_yaml``): ``"{Source} phrase: {src}\n{Target} phrase:"``, target ``" {tgt}"`` after the ``" "``
    target delimiter (so a few-shot answer follows two spaces, as lm-eval's), stop at ``"\n"``, greedy; k shots drawn
    from the dev split (lm-eval's random sampler, seed 1234); corpus sacreBLEU BLEU, chrF and TER. lm-eval has no
    Korean-English task: the format is its WMT one, the task is the project's."""
    name = f"mt_koen_{corpus}_{src}2{tgt}"
    test_split = "test" if corpus == "news" else "eval"
    return Task(
        name=name, output_type="generate_until", load=lambda root, split, n=name, c=corpus: mt_docs(n, root, c, split),
        test_split=test_split, fewshot_split="dev", metrics=("bleu", "chrf", "ter"), lm_eval_yaml="translation/wmt_common_yaml",
        doc_to_text=lambda d, s=src, t=tgt: f"{LANG_NAMES[s]} phrase: {d[s]}\n{LANG_NAMES[t]} phrase:",
        doc_to_target=lambda d, t=tgt: f" {d[t]}", num_fewshot=5,
        generation_kwargs={"until": ["\n"], "do_sample": False, "temperature": 0.0},
        metric_kwargs={"target_lang": tgt})


MT_TASKS = {t.name: t for t in (_mt(c, a, b) for c in ("news", "jhe") for a, b in (("ko", "en"), ("en", "ko")))}

HUMANEVAL_UNTIL = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


def _humaneval(name: str, repeats: int, ks: tuple[int, ...], sampling: dict) -> Task:
    """lm-eval's ``humaneval/humaneval.yaml`` (greedy, pass@1) and ``humaneval_64.yaml`` (64 samples at temperature
    0.2, top-p 0.95; pass@2..64): the prompt as the context, stop at a new top-level statement, the filter
    ``create_test`` = prompt + generation (``utils.build_predictions``), scored by executing prompt + generation +
    ``test`` + ``check(entry_point)`` in :mod:`eval_harness.sandbox` (lm-eval: ``evaluate``'s ``code_eval``, which
    runs it in a bare ``multiprocessing`` process) and the unbiased pass@k, averaged over problems."""
    return Task(
        name=name, output_type="generate_until", load=partial(humaneval_docs, name), test_split="test",
        metrics=tuple(f"pass@{k}" for k in ks), lm_eval_yaml=f"humaneval/{name}.yaml", doc_to_text=lambda d: d["prompt"],
        doc_to_target=lambda d: f"{d['test']}\ncheck({d['entry_point']})",
        generation_kwargs={"until": list(HUMANEVAL_UNTIL), "max_gen_toks": 1024, **sampling}, repeats=repeats,
        metric_kwargs={"ks": ks})


HUMANEVAL_TASKS = {"humaneval": _humaneval("humaneval", 1, (1,), {"do_sample": False}),
                   "humaneval_64": _humaneval("humaneval_64", 64, (2, 8, 16, 32, 64),
                                              {"do_sample": True, "temperature": 0.2, "top_p": 0.95})}
TASKS.update({"gsm8k": GSM8K, **BBH_TASKS, **MT_TASKS, **HUMANEVAL_TASKS})


def _chat_load(bench: str, root: Path, split: str) -> list[dict]:
    from eval_harness.chat_bench import load_questions

    return load_questions(bench, root)


# two-turn chat answers through the model's chat template; judged only when a judge endpoint is configured
# (eval_harness.chat_bench: FastChat's MT-Bench single-answer grading, LogicKor's 0-10 judge; not lm-eval tasks)
CHAT_TASKS = {
    "mt_bench": Task(name="mt_bench", output_type="chat", load=partial(_chat_load, "mt_bench"), test_split="test",
                     metrics=("turn_1", "turn_2", "overall"), lm_eval_yaml="- (FastChat llm_judge @ 0e6d3e4)"),
    "logickor": Task(name="logickor", output_type="chat", load=partial(_chat_load, "logickor"), test_split="test",
                     metrics=("single", "multi", "overall"), lm_eval_yaml="- (LogicKor @ 11c3a84)"),
}
TASKS.update(CHAT_TASKS)


def _compression_load(root: Path, split: str) -> list[dict]:
    return [{"set": name, "texts": texts} for name, texts in compression_texts("tokenizer_compression", root).items()]


# the model's tokenizer alone: characters and UTF-8 bytes per token on each set (spec 5; not an lm-eval task)
TASKS["tokenizer_compression"] = Task(
    name="tokenizer_compression", output_type="tokenizer", load=_compression_load, test_split="test",
    metrics=("chars_per_token", "bytes_per_token"), lm_eval_yaml="-")

GROUPS: dict[str, tuple[str, ...]] = {
    "kobest": ("kobest_boolq", "kobest_copa", "kobest_hellaswag", "kobest_sentineg", "kobest_wic"),
    "click_cul": tuple(n for n in CLICK_FILTERS if n.startswith("click_cul")),
    "click_lang": tuple(n for n in CLICK_FILTERS if n.startswith("click_lang")),
    "click": ("click_lang", "click_cul"),
    "bbh_cot_fewshot": tuple(n for n in BBH_TASKS if n.startswith("bbh_cot_fewshot_")),
    "bbh_zeroshot": tuple(n for n in BBH_TASKS if n.startswith("bbh_zeroshot_")),
    "mt_koen": tuple(MT_TASKS),
}
GROUP_METRICS = {"kobest": ("acc", "acc_norm", "f1"), "click": ("acc", "acc_norm"), "click_cul": ("acc", "acc_norm"),
                 "click_lang": ("acc", "acc_norm"), "bbh_cot_fewshot": ("exact_match,get-answer",),
                 "bbh_zeroshot": ("exact_match,flexible-extract", "exact_match,strict-match"),
                 "mt_koen": ("chrf", "bleu")}


def leaves(name: str) -> list[str]:
    """The leaf tasks of a task or group name, in lm-eval's member order."""
    if name in TASKS:
        return [name]
    if name in GROUPS:
        return [leaf for member in GROUPS[name] for leaf in leaves(member)]
    raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}; groups: {', '.join(GROUPS)}")


def resolve(names: list[str]) -> tuple[list[str], list[str]]:
    """(leaf tasks in first-seen order, groups asked for, with their sub-groups)."""
    tasks, groups = [], []

    def visit_group(g: str) -> None:
        for m in GROUPS[g]:
            if m in GROUPS:
                visit_group(m)
        if g not in groups:
            groups.append(g)

    for name in names:
        for leaf in leaves(name):
            if leaf not in tasks:
                tasks.append(leaf)
        if name in GROUPS:
            visit_group(name)
    return tasks, groups


# ------------------------------------------------------------------------------------------- examples and few-shot
def _fewshot_answer(task: Task, doc: dict) -> str:
    target = task.doc_to_target(doc)
    return task.doc_to_choice(doc)[target] if isinstance(target, int) else target


def build_examples(task: Task, root: Path, num_fewshot: int | None = None, seed: int = 1234,
                   limit: int | None = None) -> list[Example]:
    """The eval docs of ``task`` as :class:`Example` s, with lm-eval's few-shot contexts (see the module docstring).

    Raises:
        TaskDataError: a missing file/column/label, or ``num_fewshot`` larger than the few-shot split.
    """
    k = task.num_fewshot if num_fewshot is None else num_fewshot
    docs = task.docs(root)
    if limit is not None:
        docs = docs[:limit]
    if task.output_type in ("tokenizer", "chat"):
        if k:
            raise TaskDataError(f"{task.name}: takes no few-shot examples (num_fewshot={k})")
        if task.output_type == "chat":  # the prompt hash covers the questions' turns
            return [Example(task.name, i, d, "", text=json.dumps(d["turns"], ensure_ascii=False))
                    for i, d in enumerate(docs)]
        return [Example(task.name, i, d, "", text=d["set"]) for i, d in enumerate(docs)]
    if task.output_type == "loglikelihood_rolling":
        if k:
            raise TaskDataError(f"{task.name}: perplexity tasks take no few-shot examples (num_fewshot={k})")
        return [Example(task.name, i, d, "", text=task.doc_to_target(d)) for i, d in enumerate(docs)]
    pool: list[dict] = []
    exclude = task.fewshot_split == task.test_split
    if k and task.fewshot_samples:  # sampler first_n over the task's own exemplars
        if k > len(task.fewshot_samples):
            raise TaskDataError(f"{task.name}: num_fewshot={k} is larger than its {len(task.fewshot_samples)} "
                                f"few-shot exemplars ({BBH_PROMPTS.name})")
    elif k:
        pool = task.docs(root, task.fewshot_split)
        avail = len(pool) - (1 if exclude else 0)
        if k > avail:
            raise TaskDataError(f"{task.name}: num_fewshot={k} is larger than its few-shot split "
                                f"{task.fewshot_split!r} ({avail} docs available)")
    rnd = random.Random(seed)
    out = []
    for i, doc in enumerate(docs):
        shots: list[dict] = []
        if k and task.fewshot_samples:
            shots = list(task.fewshot_samples[:k])
        elif k:
            if exclude:
                shots = [x for x in rnd.sample(pool, k + 1) if x != doc][:k]
                if len(shots) < k:
                    shots = rnd.sample([x for x in pool if x != doc], k)
            else:
                shots = rnd.sample(pool, k)
        ctx = task.description + "".join(
            task.doc_to_text(s) + task.target_delimiter + _fewshot_answer(task, s) + task.fewshot_delimiter
            for s in shots) + task.doc_to_text(doc)
        if task.output_type == "generate_until":
            out.append(Example(task.name, i, doc, ctx, gold=task.gold(doc), generation_kwargs=task.generation_kwargs))
        else:
            out.append(Example(task.name, i, doc, ctx, tuple(task.doc_to_choice(doc)), task.gold(doc)))
    return out


def prompt_hash(examples: list[Example], target_delimiter: str = " ") -> str:
    """sha256 over every (context, continuation) request (or scored text) of the examples, in order."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.requests(target_delimiter) if ex.choices or ex.generation_kwargs is not None else [ex.text],
                            ensure_ascii=False).encode())
    return h.hexdigest()
