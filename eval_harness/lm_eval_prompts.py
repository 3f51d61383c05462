"""Write ``eval_harness/prompts/bbh.json`` from the installed lm-eval 0.4.13 task files (the harness reads only the JSON).

BIG-Bench Hard's chain-of-thought exemplars (``cot-prompts/`` of suzgunmirac/BIG-Bench-Hard, MIT) are not in the data
mirror; lm-eval 0.4.13 (MIT) carries all 27 inline in ``lm_eval/tasks/bbh/cot_fewshot/<task>.yaml``. This script copies,
for each task, what those YAMLs and their templates define: the description, ``doc_to_text``, the 3 ``first_n``
exemplars, the target/few-shot delimiters, the generation settings, the answer filter and the exact-match options, for
the 3-shot CoT variant (``bbh_cot_fewshot_*``) and the 0-shot variant (``bbh_zeroshot_*``). ``tests/test_eval_generation.py``
checks the committed file against the installed wheel, so a drift is a test failure, not a silent change of prompts.

    python -m eval_harness.lm_eval_prompts          # rewrite the JSON
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

OUT = Path(__file__).with_name("prompts") / "bbh.json"
VARIANTS = {"cot_fewshot": "bbh_cot_fewshot", "zeroshot": "bbh_zeroshot"}


def lm_eval_tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("lm-eval is not installed (pip install lm-eval==0.4.13: the source of the BBH prompts)")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: {"!function": loader.construct_scalar(node)})


def _load(path: Path) -> dict:
    d = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - SafeLoader + one tag
    if "include" in d:
        base = _load(path.parent / d.pop("include"))
        base.update(d)
        d = base
    return d


def extract() -> dict:
    root = lm_eval_tasks_dir() / "bbh"
    out: dict = {"source": "lm-eval 0.4.13 lm_eval/tasks/bbh/{cot_fewshot,zeroshot}/*.yaml", "tasks": {}}
    for folder, prefix in VARIANTS.items():
        for path in sorted((root / folder).glob("*.yaml")):
            if path.name.startswith("_"):
                continue
            d = _load(path)
            fs = d.get("fewshot_config") or {}
            out["tasks"][d["task"]] = {
                "variant": prefix, "subtask": d["dataset_name"], "description": d.get("description", ""),
                "doc_to_text": d["doc_to_text"], "doc_to_target": d["doc_to_target"],
                "target_delimiter": d.get("target_delimiter", " "), "fewshot_delimiter": d.get("fewshot_delimiter", "\n\n"),
                "num_fewshot": d.get("num_fewshot", 0), "fewshot_sampler": fs.get("sampler"),
                "fewshot_samples": fs.get("samples", []), "generation_kwargs": d["generation_kwargs"],
                "filter_list": d.get("filter_list", []), "metric_list": d["metric_list"],
            }
    return out


def main() -> None:
    from data.atomic import atomic_write_text

    obj = extract()
    atomic_write_text(OUT, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")
    print(f"{OUT}: {len(obj['tasks'])} tasks")


if __name__ == "__main__":
    main()
