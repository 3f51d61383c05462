"""Per-example scores and aggregates, computed as lm-eval 0.4.13 does (``api/task.py``, ``api/metrics.py``,
``api/group.py``, ``tasks/kobest/utils.py``).

What decides equality with lm-eval:

* ``acc``: ``np.argmax(lls) == gold`` (ties -> the lowest index); ``acc_norm``: ``np.argmax(lls / len(choice))`` with
  the length in characters of the choice *without* the target delimiter. Aggregate: ``sum(x) / len(x)``; stderr
  ``sample_stddev / sqrt(n)`` (n - 1 denominator).
* ``f1`` (KoBEST): per doc ``(gold, pred)``; aggregate ``sklearn.metrics.f1_score(golds, preds, average="macro")``
  over the evaluated docs; no stderr (lm-eval prints N/A; here ``None``).
* WikiText: per doc ``(loglikelihood, words)`` / ``(loglikelihood, bytes)`` counted on the *original* page;
  ``word_perplexity = exp(-sum(ll) / sum(words))``, ``byte_perplexity = exp(-sum(ll) / sum(bytes))``,
  ``bits_per_byte = -sum(ll) / sum(bytes) / ln 2`` (``weighted_mean``, Python sums in doc order); no stderr.
* Generation (GSM8K, BBH): each named filter pipeline of the task (``filter_list``) maps the generated string:
  ``regex`` = ``re.findall(pattern, text)``, element ``group_select``, the first non-empty group of a tuple,
  ``.strip()``, ``"[invalid]"`` when nothing matches; ``take_first`` keeps the one response. ``exact_match`` per doc
  and pipeline: every ``regexes_to_ignore`` pattern removed (``re.sub``, in order) from prediction and reference,
  then lower-cased (``ignore_case``), punctuation / digits dropped if asked, then ``==`` (HF ``evaluate``'s
  ``exact_match`` as lm-eval re-implements it). Aggregate mean and sample stderr; metric names
  ``exact_match,<filter>`` as lm-eval keys them. BBH 0-shot's ``flexible-extract`` uses four Python filters of
  ``tasks/bbh/zeroshot/utils.py`` (multiple-choice letters, yes/no maps, English number words, word sorting), ported
  here as functions of the response and its doc.
* Groups (``kobest``, ``click``, ``click_cul``, ``click_lang``, ``bbh_*``; ``weight_by_size: true``): over the group's *leaf* tasks
  that report the metric, ``sum(metric * n) / sum(n)``; stderr ``pooled_sample_stderr`` when every leaf has one.
  ``<metric>_macro`` (not lm-eval's): the unweighted mean over the leaves, which is how BBH papers average.
"""

from __future__ import annotations

import collections
import math
import re
import string
import sys
import unicodedata

import numpy as np


def mc_scores(lls: list[float], choices: list[str] | tuple[str, ...], gold: int) -> dict:
    """pred, pred_norm, acc, acc_norm of one multiple-choice doc."""
    arr = np.array(lls)
    completion_len = np.array([float(len(c)) for c in choices])
    pred = int(np.argmax(arr))
    pred_norm = int(np.argmax(arr / completion_len))
    return {"pred": pred, "pred_norm": pred_norm, "acc": 1.0 if pred == gold else 0.0,
            "acc_norm": 1.0 if pred_norm == gold else 0.0}


def mean(arr: list[float]) -> float:
    return sum(arr) / len(arr)


def mean_stderr(arr: list[float]) -> float | None:
    if len(arr) < 2:
        return None
    mu = mean(arr)
    return math.sqrt(sum([(x - mu) ** 2 for x in arr]) / (len(arr) - 1)) / math.sqrt(len(arr))


def macro_f1(golds: list[int], preds: list[int]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(golds, preds, average="macro"))


def mc_task_metrics(records: list[dict], metrics: tuple[str, ...]) -> dict:
    """Aggregate the per-doc records (``acc``, ``acc_norm``, ``gold``, ``prediction``) of one task."""
    out: dict = {}
    for m in metrics:
        if m in ("acc", "acc_norm"):
            vals = [r[m] for r in records]
            out[m] = mean(vals)
            out[f"{m}_stderr"] = mean_stderr(vals)
        elif m == "f1":
            out["f1"] = macro_f1([r["gold"] for r in records], [r["prediction"] for r in records])
            out["f1_stderr"] = None
        else:
            raise ValueError(f"unknown multiple-choice metric {m!r}")
    out["n"] = len(records)
    return out


def perplexity_metrics(lls: list[float], words: list[int], nbytes: list[int]) -> dict:
    """word_perplexity, byte_perplexity, bits_per_byte (lm-eval's ``weighted_mean`` aggregations)."""
    wm_words = sum(lls) / sum(words)
    wm_bytes = sum(lls) / sum(nbytes)
    return {"word_perplexity": math.exp(-wm_words), "byte_perplexity": math.exp(-wm_bytes),
            "bits_per_byte": -wm_bytes / math.log(2), "n": len(lls)}


def pooled_sample_stderr(stderrs: list[float], sizes: list[int]) -> float:
    pooled = sum([(size - 1) * stderr**2 * size for size, stderr in zip(sizes, stderrs)]) / (sum(sizes) - len(sizes))
    return float(np.sqrt(pooled / sum(sizes)))


def group_metrics(task_results: dict[str, dict], leaf_tasks: list[str], metrics: tuple[str, ...]) -> dict:
    """Size-weighted mean over the leaf tasks that report each metric, with the pooled stderr."""
    out: dict = {"n": sum(task_results[t]["n"] for t in leaf_tasks if t in task_results)}
    for m in metrics:
        have = [t for t in leaf_tasks if t in task_results and m in task_results[t]]
        if not have:
            continue
        values = [task_results[t][m] for t in have]
        sizes = [task_results[t]["n"] for t in have]
        out[m] = sum([v * s for v, s in zip(values, sizes)]) / sum(sizes)
        stderrs = [task_results[t].get(f"{m}_stderr") for t in have]
        out[f"{m}_stderr"] = pooled_sample_stderr(stderrs, sizes) if all(s is not None for s in stderrs) else None
        out[f"{m}_macro"] = sum(values) / len(values)
    return out


FALLBACK = "[invalid]"


def regex_filter(text: str, pattern: str, group_select: int = 0, fallback: str = FALLBACK) -> str:
    """lm-eval's ``RegexFilter`` on one response."""
    match = re.findall(pattern, text if isinstance(text, str) else "")
    if not match:
        return fallback
    match = match[group_select]
    if isinstance(match, tuple):
        match = [m for m in match if m]
        match = match[0] if match else fallback
    return match.strip()


# lm-eval 0.4.13's BBH zero-shot "flexible-extract" filters (``lm_eval/tasks/bbh/zeroshot/utils.py``), ported as
# functions of one response and its doc; the logic is lm-eval's, line for line.
_PUNCT_TBL = None


def _filter_ignores(st: str, ignore_case: bool, ignore_punctuation: bool, regexes_to_ignore) -> str:
    global _PUNCT_TBL
    for pat in regexes_to_ignore or []:
        st = re.sub(pat, "", st)
    if ignore_case:
        st = st.lower()
    if ignore_punctuation:
        if _PUNCT_TBL is None:
            _PUNCT_TBL = dict.fromkeys(i for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P"))
        st = st.translate(_PUNCT_TBL)
    return st


def _find_match(regex, resp: str, group_select: int, convert_dict: dict | None = None):
    match = regex.findall(resp)
    if match:
        match = match[group_select]
        if isinstance(match, tuple):
            match = [m for m in match if m][0]
        match = match.strip()
        if match and match in (convert_dict or {}):
            match = convert_dict[match]
    return match


def multi_choice_regex_filter(resp: str, doc: dict, regex_pattern: str, group_select: int = 0,
                              fallback: str = FALLBACK, **ign) -> str:
    """``MultiChoiceRegexFilter``: the pattern, else a choice's text (ignores applied), else ``: <letter>``."""
    ign = {k: ign.get(k, None if k == "regexes_to_ignore" else False)
           for k in ("ignore_case", "ignore_punctuation", "regexes_to_ignore")}
    fallback_regexes, choice_to_alpha, next_alpha = [], {}, "A"
    without_paren_fallback_regexes, without_paren_to_target = [], {}
    for m in re.compile(r"\([A-Z]\)([^\n^(]*)").findall(doc["input"]):
        m = _filter_ignores(m.strip(), **ign)
        fallback_regexes.append(f"{re.escape(m)}")
        choice_to_alpha[m] = f"({next_alpha})"
        without_paren_fallback_regexes.append(next_alpha)
        without_paren_to_target[next_alpha] = f"({next_alpha})"
        next_alpha = chr(ord(next_alpha) + 1)
    fallback_regex = re.compile("|".join(sorted(fallback_regexes, key=len, reverse=True)))
    without_paren_fallback_regex = re.compile(rf":[\s]*({'|'.join(without_paren_fallback_regexes)})")
    match = _find_match(re.compile(regex_pattern), resp, group_select)
    if not match:
        match = _find_match(fallback_regex, _filter_ignores(resp, **ign), group_select, choice_to_alpha)
        if not match:
            match = _find_match(without_paren_fallback_regex, resp, group_select, without_paren_to_target)
    return match if match else fallback


def map_regex_filter(resp: str, regex_pattern_to_value: dict, group_select: int = 0, fallback: str = FALLBACK,
                     **ign) -> str:
    """``MapRegexFilter``: the first pattern (in order) that matches the whole match decides the value."""
    ign = {k: ign.get(k, None if k == "regexes_to_ignore" else False)
           for k in ("ignore_case", "ignore_punctuation", "regexes_to_ignore")}
    whole = _find_match(re.compile("|".join(regex_pattern_to_value)), _filter_ignores(resp, **ign), group_select)
    match = None
    if whole:
        for pattern, value in regex_pattern_to_value.items():
            match = _find_match(re.compile(pattern), _filter_ignores(whole, **ign), group_select)
            if match:
                match = value
                break
    if not whole or not match:
        match = fallback
    return match


_EN_NUMBER = None


def number_parse_regex_filter(resp: str, regex_pattern: str, group_select: int = 0, fallback: str = FALLBACK,
                              **_ign) -> str:
    """``NumberParseRegexFilter``: the pattern, else an English number word sequence (``word2number``)."""
    global _EN_NUMBER
    import regex
    from word2number import w2n

    if _EN_NUMBER is None:
        _EN_NUMBER = regex.compile(
            "((?:(?:zero|one|two|three|four|five|(?:twen|thir|for|fif|six|seven|nine)(?|teen|ty)|eight(?:|een|y)|ten|"
            "eleven|twelve|fourteen|hundred|thousand|(?:m|b|tr)illion)(?:zero|one|two|three|four|five|(?:twen|thir|"
            "for|fif|six|seven|nine)(?:|teen|ty)|eight(?|een|y)|ten|eleven|twelve|fourteen|hundred|thousand|(?:m|b|tr)"
            "illion|[^\\S\r\n]|,|and|&)+)?(?:zero|one|two|three|four|five|(?:twen|thir|for|fif|six|seven|nine)(?|teen|"
            "ty)|eight(?|een|y)|ten|eleven|twelve|fourteen|hundred|thousand|(?:m|b|tr)illion))")
    match = _find_match(re.compile(regex_pattern), resp, group_select)
    if not match:
        match = _find_match(_EN_NUMBER, resp.lower(), group_select)
        if match:
            match = str(w2n.word_to_num(match))
    return match if match else fallback


def word_sort_filter(resp: str, doc: dict) -> str:
    """``WordSortFilter``: the list's words in the order of their last mention in the response."""
    words = doc["input"].split("List:")[1].strip().split()
    found = re.compile("|".join([f"\\b{w}\\b" for w in words])).findall(resp)
    found.reverse()
    return " ".join(reversed(collections.OrderedDict(zip(found, [None] * len(found)))))


PY_FILTERS = {"utils.MultiChoiceRegexFilter": "multi_choice", "utils.MapRegexFilter": "map",
              "utils.NumberParseRegexFilter": "number_parse", "utils.WordSortFilter": "word_sort"}


def apply_filters(text: str, steps: list[dict], doc: dict | None = None) -> str:
    """One filter pipeline (``[{"function": "regex", ...}, {"function": "take_first"}]``) on one response; the BBH
    zero-shot ``!function`` filters read the doc."""
    for step in steps:
        fn = step["function"]
        kw = {k: v for k, v in step.items() if k != "function"}
        if isinstance(fn, dict):  # {"!function": "utils.X"} as lm-eval's YAML loader sees it unresolved
            fn = PY_FILTERS.get(fn.get("!function"), str(fn))
        text = text if isinstance(text, str) else ""
        if fn == "regex":
            text = regex_filter(text, step["regex_pattern"], step.get("group_select", 0), step.get("fallback", FALLBACK))
        elif fn == "take_first":
            pass  # one response per doc (repeats: 1)
        elif fn == "multi_choice":
            text = multi_choice_regex_filter(text, doc, **kw)
        elif fn == "map":
            text = map_regex_filter(text, **kw)
        elif fn == "number_parse":
            text = number_parse_regex_filter(text, **kw)
        elif fn == "word_sort":
            text = word_sort_filter(text, doc)
        else:
            raise ValueError(f"filter function {fn!r} is not supported (regex, take_first, {', '.join(PY_FILTERS)})")
    return text


def exact_match(prediction: str, reference: str, regexes_to_ignore: list[str] | None = None, ignore_case: bool = False,
                ignore_punctuation: bool = False, ignore_numbers: bool = False) -> float:
    """lm-eval's ``exact_match_hf_evaluate`` for one (prediction, reference) pair: 1.0 or 0.0."""
    for pat in regexes_to_ignore or []:
        prediction, reference = re.sub(pat, "", prediction), re.sub(pat, "", reference)
    if ignore_case:
        prediction, reference = prediction.lower(), reference.lower()
    if ignore_punctuation:
        table = str.maketrans("", "", string.punctuation)
        prediction, reference = prediction.translate(table), reference.translate(table)
    if ignore_numbers:
        table = str.maketrans("", "", string.digits)
        prediction, reference = prediction.translate(table), reference.translate(table)
    return float(prediction == reference)


def generation_task_metrics(records: list[dict], filter_names: list[str]) -> dict:
    """``exact_match,<filter>`` mean and stderr over the records (each has ``exact_match: {filter: 0/1}``)."""
    out: dict = {"n": len(records)}
    for f in filter_names:
        arr = [r["exact_match"][f] for r in records]
        out[f"exact_match,{f}"] = mean(arr)
        out[f"exact_match,{f}_stderr"] = mean_stderr(arr)
    return out


def bleu_tokenizer(target_lang: str) -> str:
    """sacreBLEU's tokenizer for a target language: ``13a`` for English; for Korean ``ko-mecab`` when mecab-ko is
    installed, else ``13a`` (spec 5.3: then chrF, which needs no tokenizer, is the Korean number to read); the
    signature records which one ran."""
    if target_lang != "ko":
        return "13a"
    try:
        import mecab_ko  # noqa: F401
    except ImportError:
        return "13a"
    return "ko-mecab"


def translation_metrics(predictions: list[str], references: list[str], target_lang: str) -> dict:
    """Corpus BLEU, chrF (char order 6, beta 2) and TER with sacreBLEU, one reference per segment, and their
    signatures (lm-eval's ``bleu`` / ``chrf`` / ``ter`` aggregations are the same calls with sacreBLEU's defaults)."""
    from sacrebleu.metrics import BLEU, CHRF, TER

    refs = [list(references)]
    out: dict = {"n": len(predictions)}
    for key, metric in (("bleu", BLEU(tokenize=bleu_tokenizer(target_lang))), ("chrf", CHRF()), ("ter", TER())):
        out[key] = float(metric.corpus_score(list(predictions), refs).score)
        out[f"{key}_signature"] = str(metric.get_signature())
    return out


def compression_metrics(tokenizer, sets: dict[str, list[str]]) -> dict:
    """Per set: texts, characters, UTF-8 bytes, tokens (``encode(text, add_special_tokens=False)``: content tokens,
    no BOS/EOS), characters and bytes per token, and texts whose ``decode(encode(x)) != x``."""
    out: dict = {"n": len(sets)}
    for name, texts in sets.items():
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        n_tok = sum(len(x) for x in ids)
        chars = sum(len(t) for t in texts)
        nbytes = sum(len(t.encode("utf-8")) for t in texts)
        fails = sum(tokenizer.decode(x, clean_up_tokenization_spaces=False) != t for x, t in zip(ids, texts))
        out[name] = {"texts": len(texts), "chars": chars, "bytes": nbytes, "tokens": n_tok,
                     "chars_per_token": chars / n_tok if n_tok else None,
                     "bytes_per_token": nbytes / n_tok if n_tok else None, "roundtrip_failures": fails}
    return out
