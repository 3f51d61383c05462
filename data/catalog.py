"""The project's data catalog: every downloadable file with its official URL, size and sha256.

`data/catalog.yaml` is the single source of truth; this module only parses and validates it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CATALOG_PATH = Path(__file__).with_name("catalog.yaml")


class CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="path inside the dataset folder (and under DATA_MIRROR/<dataset>/)")
    url: str | None = Field(None, description="official download URL of these exact bytes (None: mirror only, see note)")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="None only where the publisher gives none (see note)")
    size: int | None = Field(None, gt=0, description="size in bytes (None: not published; the sha256 still decides)")
    note: str | None = Field(None, description="where a mirror-only file comes from")

    @model_validator(mode="after")
    def _has_a_source(self) -> "CatalogFile":
        if self.url is None and not self.note:
            raise ValueError("a file without url needs a note naming its official origin")
        if self.sha256 is None and not self.note:
            raise ValueError("a file without sha256 needs a note saying why (DVC then records the hash of what was fetched)")
        return self


class CatalogDataset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str
    license: str
    source: str
    files: list[CatalogFile]


@lru_cache(maxsize=None)
def load_catalog(path: Path = CATALOG_PATH) -> dict[str, CatalogDataset]:
    """Parse and validate the catalog; a malformed entry raises ValueError naming the dataset and field."""
    raw = yaml.safe_load(Path(path).read_text())
    catalog: dict[str, CatalogDataset] = {}
    for name, entry in raw.items():
        try:
            catalog[name] = CatalogDataset.model_validate(entry)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{path}: dataset {name!r}, field {loc}: {first['msg']}") from err
    return catalog


def dataset(name: str) -> CatalogDataset:
    catalog = load_catalog()
    if name not in catalog:
        raise KeyError(f"dataset {name!r} is not in {CATALOG_PATH} (known: {', '.join(sorted(catalog))})")
    return catalog[name]
