"""The catalog: every model the pipeline runs, one line each (model name -> the module that declares it).

Explicit on purpose: nothing registers itself by being imported. Adding a model = writing ``models/<name>/`` (its
``pipeline.py`` exports ``MODEL``, a :class:`models.common.contract.ModelSpec`) and one line here; the contract
test (tests/test_contract.py) then checks it like the others.
"""

from __future__ import annotations

import importlib

from models.common.contract import ModelSpec

CATALOG: dict[str, str] = {
    "melu": "models.melu.pipeline",
    "seqrec": "models.seqrec.pipeline",
    "dissan": "models.dissan.pipeline",
    "egtr": "models.egtr.pipeline",
    "multimodalsum": "models.multimodalsum.pipeline",
    "bilingual_lm": "models.bilingual_lm.pipeline",
}


def names() -> list[str]:
    return list(CATALOG)


def get(name: str) -> ModelSpec:
    if name not in CATALOG:
        raise KeyError(f"model {name!r} is not in the catalog (models/catalog.py); expected one of {names()}")
    spec = importlib.import_module(CATALOG[name]).MODEL
    if spec.name != name:
        raise ValueError(f"{CATALOG[name]}.MODEL is named {spec.name!r}, catalogued as {name!r}")
    return spec
