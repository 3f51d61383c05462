"""The one on-disk schema of MultimodalSum review collections: four parquet tables per dataset folder.

Every converter of ``data/stages/build_review_tables.py`` (and the SYNTHETIC generator
``data/synthetic_reviews.py``) writes one folder through :func:`write_tables` / :func:`write_tables_into`: records are
type-checked one by one (a clear error names the file, the entity or record and the field), turned into pyarrow
tables with the explicit schemas below, written into a temporary folder, read back and validated
(:func:`validate`), and only then renamed into place (``data.atomic.atomic_directory``). Nothing half-written stays.

Every file carries the same JSON object under the parquet key-value metadata key ``paperflows.review_schema``::

    {"schema_version": SCHEMA_VERSION, "table": "entities" | "reviews" | "references" | "images",
     "dataset": str, "synthetic": bool, "image_root": str | null, "notes": str, "extra": {...}}

``image_root`` is the folder the ``images.path`` values are relative to: relative to the dataset folder (``"."``:
the images were written inside it, as the synthetic set does) or absolute (the raw Yelp / Amazon photo folders,
which are not copied); null when there are no images. A reader refuses another ``schema_version``.

Tables (NOT NULL where marked; every other column is nullable)
----------------------------------------------------------------

``entities.parquet`` -- one row per business / product, **one schema for both sources**: common columns, then the
typed metadata-table fields of spec §2.3, each a nullable column; the fields of the other source stay null.

=========================  ===================  ==================================================================
column                     type                 meaning
=========================  ===================  ==================================================================
entity_id                  string NOT NULL      business_id / asin / ``yelp_gold_row_<n>`` / ``synthetic_...``; unique
source                     string NOT NULL      ``yelp`` | ``amazon`` | ``synthetic`` (synthetic uses the Yelp layout)
split                      string NOT NULL      ``train`` | ``val`` (Copycat partition) | ``dev`` | ``test`` (gold sets)
row                        int32                row of the entity in its official gold file (gold sets only)
category                   string               Amazon category (gold ``cat``, or the raw file's category); synthetic kind
has_table                  bool NOT NULL        the metadata table exists (False: the table columns are all null)
name                       string               Yelp ``name`` / Amazon ``title`` (the official code calls both "name")
avg_rating                 float64              Yelp ``stars`` / Amazon mean ``overall`` of the product's reviews
categories                 list<string>         Yelp categories (the comma-separated string, split)
NoiseLevel .. WiFi         string               the 4 string-categorical Yelp attributes, official normalisation
RestaurantsPriceRange2     string               ``cheap`` | ``average`` | ``expensive`` | ``very expensive`` (from 1..4)
BikeParking ..             bool (32 columns)    the official 32 boolean attributes (``YELP_BOOLEAN``); nested dicts
  GoodForMeal_lunch                             Ambience / BusinessParking / GoodForMeal are flattened ``<key>_<sub>``
hours_Monday .. Sunday     string               ``HH:MM-HH:MM`` (Yelp's ``11:0-22:0`` zero-padded)
price                      float64              Amazon price (USD)
brand                      string               Amazon brand (HTML-unescaped)
category_paths             list<list<string>>   Amazon ``categories``: a list of category paths
description                string               Amazon description (HTML tags stripped, unescaped)
image_url                  string               Amazon ``imUrl``
=========================  ===================  ==================================================================

``reviews.parquet`` -- the input reviews (for a gold set: the 8 reviews the summary was written from)

    entity_id string NOT NULL, review_id string NOT NULL (unique in the file), source_review_id string (the id in the
    source data; null where there is none or it is damaged, e.g. the ``#NAME?`` spreadsheet artefacts of the Yelp
    gold file), position int32 NOT NULL (order within the entity: the gold file's column order), split string NOT
    NULL (= the entity's split), rating float64 (null in the gold sets), text string NOT NULL (non-empty).

``references.parquet`` -- human reference summaries, kept in their own file so that a training reader of
``reviews.parquet`` can never see a reference (empty, same schema, for the self-supervised sets)

    entity_id string NOT NULL, ref_index int32 NOT NULL (Yelp ``Answer.summary`` = 0; Amazon ``summ1..3`` = 0..2),
    split string NOT NULL, text string NOT NULL. Texts are verbatim (the evaluation collapses whitespace).

``images.parquet`` -- entity_id string NOT NULL, photo_id string NOT NULL (unique), path string NOT NULL (relative
POSIX path under ``image_root``), sha256 string NOT NULL (of the file's bytes), caption string, label string
(Yelp ``photos.json``).

Checks of :func:`validate` / :func:`read_tables`: the four files exist with exactly these columns and types, the
metadata agrees across them, ids are unique, every review / reference / image names an entity of
``entities.parquet`` with the same split, **an entity without reviews is an error**, the other source's columns are
null, ``has_table`` matches the table columns, values are in range (ratings 0..5, price >= 0, the price-range
words, the hours pattern). :func:`validate` with ``check_images=True`` also opens every image path and compares its
sha256. Errors are :class:`ReviewDataError` naming the file, the entity (or record) and the field, with the
expectation.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
METADATA_KEY = b"paperflows.review_schema"
TABLES: tuple[str, ...] = ("entities", "reviews", "references", "images")
SOURCES: tuple[str, ...] = ("yelp", "amazon", "synthetic")
SPLITS: tuple[str, ...] = ("train", "val", "dev", "test")
META_KEYS: dict[str, tuple[type, ...]] = {
    "dataset": (str,), "synthetic": (bool,), "image_root": (str, type(None)), "notes": (str,), "extra": (dict,)}

# --- the Yelp table of spec §2.3 (official multimodal_preprocessing/table_modality_preprocessing.py column lists)
YELP_CATEGORICAL: tuple[str, ...] = ("NoiseLevel", "Alcohol", "RestaurantsAttire", "WiFi", "RestaurantsPriceRange2")
YELP_BOOLEAN: tuple[str, ...] = (
    "BikeParking", "BusinessAcceptsCreditCards", "ByAppointmentOnly", "Caters", "GoodForKids", "HasTV", "OutdoorSeating",
    "RestaurantsDelivery", "RestaurantsGoodForGroups", "RestaurantsReservations", "RestaurantsTakeOut", "WheelchairAccessible",
    "Ambience_casual", "Ambience_classy", "Ambience_divey", "Ambience_hipster", "Ambience_intimate", "Ambience_romantic",
    "Ambience_touristy", "Ambience_trendy", "Ambience_upscale",
    "BusinessParking_garage", "BusinessParking_lot", "BusinessParking_street", "BusinessParking_valet", "BusinessParking_validated",
    "GoodForMeal_breakfast", "GoodForMeal_brunch", "GoodForMeal_dessert", "GoodForMeal_dinner", "GoodForMeal_latenight",
    "GoodForMeal_lunch",
)
NESTED_ATTRIBUTES: tuple[str, ...] = ("Ambience", "BusinessParking", "GoodForMeal")
WEEKDAYS: tuple[str, ...] = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
HOURS_COLUMNS: tuple[str, ...] = tuple(f"hours_{d}" for d in WEEKDAYS)
PRICE_RANGE: dict[str, str] = {"1": "cheap", "2": "average", "3": "expensive", "4": "very expensive"}
HOURS_RE = re.compile(r"^([01]\d|2[0-4]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# which table columns each source may fill (the rest must be null); synthetic entities use the Yelp layout
COMMON_TABLE: tuple[str, ...] = ("name", "avg_rating")
YELP_ONLY: tuple[str, ...] = ("categories", *YELP_CATEGORICAL, *YELP_BOOLEAN, *HOURS_COLUMNS)
AMAZON_ONLY: tuple[str, ...] = ("price", "brand", "category_paths", "description", "image_url")
TABLE_COLUMNS: tuple[str, ...] = (*COMMON_TABLE, *YELP_ONLY, *AMAZON_ONLY)
SOURCE_COLUMNS: dict[str, tuple[str, ...]] = {
    "yelp": (*COMMON_TABLE, *YELP_ONLY), "synthetic": (*COMMON_TABLE, *YELP_ONLY), "amazon": (*COMMON_TABLE, *AMAZON_ONLY)}

_STR, _F64, _I32, _BOOL = pa.string(), pa.float64(), pa.int32(), pa.bool_()
_LIST_STR = pa.list_(pa.string())
_LIST_LIST_STR = pa.list_(pa.list_(pa.string()))

ENTITIES_SCHEMA = pa.schema(
    [pa.field("entity_id", _STR, nullable=False), pa.field("source", _STR, nullable=False),
     pa.field("split", _STR, nullable=False), pa.field("row", _I32), pa.field("category", _STR),
     pa.field("has_table", _BOOL, nullable=False), pa.field("name", _STR), pa.field("avg_rating", _F64),
     pa.field("categories", _LIST_STR)]
    + [pa.field(c, _STR) for c in YELP_CATEGORICAL]
    + [pa.field(c, _BOOL) for c in YELP_BOOLEAN]
    + [pa.field(c, _STR) for c in HOURS_COLUMNS]
    + [pa.field("price", _F64), pa.field("brand", _STR), pa.field("category_paths", _LIST_LIST_STR),
       pa.field("description", _STR), pa.field("image_url", _STR)]
)
REVIEWS_SCHEMA = pa.schema([
    pa.field("entity_id", _STR, nullable=False), pa.field("review_id", _STR, nullable=False),
    pa.field("source_review_id", _STR), pa.field("position", _I32, nullable=False),
    pa.field("split", _STR, nullable=False), pa.field("rating", _F64), pa.field("text", _STR, nullable=False),
])
REFERENCES_SCHEMA = pa.schema([
    pa.field("entity_id", _STR, nullable=False), pa.field("ref_index", _I32, nullable=False),
    pa.field("split", _STR, nullable=False), pa.field("text", _STR, nullable=False),
])
IMAGES_SCHEMA = pa.schema([
    pa.field("entity_id", _STR, nullable=False), pa.field("photo_id", _STR, nullable=False),
    pa.field("path", _STR, nullable=False), pa.field("sha256", _STR, nullable=False),
    pa.field("caption", _STR), pa.field("label", _STR),
])
SCHEMAS: dict[str, pa.Schema] = {"entities": ENTITIES_SCHEMA, "reviews": REVIEWS_SCHEMA,
                                 "references": REFERENCES_SCHEMA, "images": IMAGES_SCHEMA}
_KEY_FIELD = {"entities": "entity_id", "reviews": "entity_id", "references": "entity_id", "images": "entity_id"}


class ReviewDataError(ValueError):
    """A review-collection file (or a converter's input) is malformed; the message names file, entity/row and field."""


@dataclass
class ReviewTables:
    """A validated dataset folder: one pyarrow table per file and the shared metadata."""

    folder: Path
    meta: dict[str, Any]
    entities: pa.Table
    reviews: pa.Table
    references: pa.Table
    images: pa.Table
    extra: dict[str, Any] = field(default_factory=dict)

    def image_root(self) -> Path | None:
        root = self.meta.get("image_root")
        if root is None:
            return None
        return Path(root) if Path(root).is_absolute() else self.folder / root

    def to_pandas(self, table: str):
        """One table as a pandas DataFrame (list columns hold numpy arrays)."""
        return getattr(self, table).to_pandas()


# ------------------------------------------------------------------------------------------ record checks


def _describe(t: pa.DataType) -> str:
    return {str(_STR): "a string", str(_F64): "a finite number", str(_I32): "an int", str(_BOOL): "a boolean (True/False)",
            str(_LIST_STR): "a list of strings", str(_LIST_LIST_STR): "a list of lists of strings"}[str(t)]


def _type_ok(v: Any, t: pa.DataType) -> bool:
    if t == _STR:
        return isinstance(v, str)
    if t == _BOOL:
        return isinstance(v, bool)
    if t == _I32:
        return isinstance(v, int) and not isinstance(v, bool) and -2**31 <= v < 2**31
    if t == _F64:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    if t == _LIST_STR:
        return isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)
    if t == _LIST_LIST_STR:
        return isinstance(v, (list, tuple)) and all(isinstance(p, (list, tuple)) and all(isinstance(x, str) for x in p) for p in v)
    raise TypeError(t)


def _where(fname: str, rec: dict[str, Any], i: int) -> str:
    eid = rec.get("entity_id")
    return f"{fname}: entity {eid!r} (record {i})" if isinstance(eid, str) else f"{fname}: record {i}"


def _check_records(table: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Types and NOT NULL of every record against its schema; unknown keys are errors, absent nullable keys null."""
    schema, fname = SCHEMAS[table], f"{table}.parquet"
    names = set(schema.names)
    out = []
    for i, rec in enumerate(records):
        unknown = sorted(set(rec) - names)
        if unknown:
            raise ReviewDataError(f"{_where(fname, rec, i)}: {unknown[0]}: not a column of {fname} (columns: {', '.join(schema.names)})")
        row = {}
        for f in schema:
            v = rec.get(f.name)
            if v is None:
                if not f.nullable:
                    raise ReviewDataError(f"{_where(fname, rec, i)}: {f.name}: missing (expected {_describe(f.type)}, NOT NULL)")
            elif not _type_ok(v, f.type):
                raise ReviewDataError(f"{_where(fname, rec, i)}: {f.name}: expected {_describe(f.type)}, got {v!r}")
            elif f.type == _F64:
                v = float(v)
            elif f.type in (_LIST_STR, _LIST_LIST_STR):
                v = [list(p) for p in v] if f.type == _LIST_LIST_STR else list(v)
            row[f.name] = v
        out.append(row)
    return out


def _check_meta(meta: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise ReviewDataError(f"{where}: metadata: expected an object, got {meta!r}")
    meta = {"extra": {}, **meta}
    for key, types in META_KEYS.items():
        if key not in meta:
            raise ReviewDataError(f"{where}: metadata.{key}: missing")
        if not isinstance(meta[key], types):
            raise ReviewDataError(f"{where}: metadata.{key}: expected {' or '.join(t.__name__ for t in types)}, got {meta[key]!r}")
    unknown = sorted(set(meta) - set(META_KEYS) - {"schema_version", "table"})
    if unknown:
        raise ReviewDataError(f"{where}: metadata.{unknown[0]}: unknown key (known: {', '.join(META_KEYS)})")
    return {k: meta[k] for k in META_KEYS}


# --------------------------------------------------------------------------------------------------- writing


def write_tables_into(folder: str | Path, entities: list[dict[str, Any]], reviews: list[dict[str, Any]],
                      references: list[dict[str, Any]], images: list[dict[str, Any]], meta: dict[str, Any],
                      check_images: bool = True) -> ReviewTables:
    """Write the four files into an existing ``folder`` and validate them (no atomic rename: see :func:`write_tables`)."""
    folder = Path(folder)
    meta = _check_meta(meta, "write_tables")
    records = {"entities": entities, "reviews": reviews, "references": references, "images": images}
    checked = {name: _check_records(name, list(recs)) for name, recs in records.items()}
    for name in TABLES:
        payload = json.dumps({"schema_version": SCHEMA_VERSION, "table": name, **meta}, sort_keys=True)
        table = pa.Table.from_pylist(checked[name], schema=SCHEMAS[name]).replace_schema_metadata({METADATA_KEY: payload})
        pq.write_table(table, folder / f"{name}.parquet")
    return validate(folder, check_images=check_images)


def write_tables(out_dir: str | Path, entities: list[dict[str, Any]], reviews: list[dict[str, Any]],
                 references: list[dict[str, Any]], images: list[dict[str, Any]], meta: dict[str, Any],
                 extra_files: Callable[[Path], None] | None = None, check_images: bool = True) -> Path:
    """:func:`write_tables_into` inside ``data.atomic.atomic_directory(out_dir)``: ``extra_files(tmp)`` first writes
    files that belong in the folder (the synthetic images); ``out_dir`` is replaced only when everything validated,
    and on any error the previous ``out_dir`` is left as it was."""
    from data.atomic import atomic_directory

    with atomic_directory(out_dir) as tmp:
        if extra_files is not None:
            extra_files(tmp)
        write_tables_into(tmp, entities, reviews, references, images, meta, check_images=check_images)
    return Path(out_dir)


# ------------------------------------------------------------------------------------------------ validation


def _read(folder: Path, name: str) -> tuple[pa.Table, dict[str, Any]]:
    fname = f"{name}.parquet"
    path = folder / fname
    if not path.is_file():
        raise ReviewDataError(f"{fname}: missing in {folder}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise ReviewDataError(f"{fname}: not a readable parquet file ({err})") from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ReviewDataError(f"{fname}: parquet metadata {METADATA_KEY.decode()}: missing (not written by data/review_schema.py)")
    meta = json.loads(raw)
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ReviewDataError(f"{fname}: metadata.schema_version: expected {SCHEMA_VERSION}, got {meta.get('schema_version')!r} "
                              f"(rebuild the folder with this version of data/review_schema.py)")
    if meta.get("table") != name:
        raise ReviewDataError(f"{fname}: metadata.table: expected {name!r}, got {meta.get('table')!r}")
    expected = SCHEMAS[name]
    got = {f.name: f for f in table.schema}
    for f in expected:
        if f.name not in got:
            raise ReviewDataError(f"{fname}: {f.name}: column missing (expected {f.type})")
        if not got[f.name].type.equals(f.type):
            raise ReviewDataError(f"{fname}: {f.name}: expected type {f.type}, got {got[f.name].type}")
    extra = [n for n in table.schema.names if n not in expected.names]
    if extra:
        raise ReviewDataError(f"{fname}: {extra[0]}: unknown column (schema version {SCHEMA_VERSION} has {', '.join(expected.names)})")
    table = table.select(expected.names)
    for f in expected:
        if not f.nullable and table.column(f.name).null_count:
            ids = table.column(_KEY_FIELD[name]).to_pylist()
            i = table.column(f.name).is_null().to_pylist().index(True)
            raise ReviewDataError(f"{fname}: entity {ids[i]!r} (row {i}): {f.name}: null in a NOT NULL column")
    return table, _check_meta(meta, fname)


def _check_entities(t: pa.Table) -> dict[str, tuple[str, str]]:
    fname = "entities.parquet"
    rows = t.to_pylist()
    out: dict[str, tuple[str, str]] = {}
    for i, r in enumerate(rows):
        eid = r["entity_id"]
        where = f"{fname}: entity {eid!r} (row {i})"
        if not eid:
            raise ReviewDataError(f"{fname}: row {i}: entity_id: empty")
        if eid in out:
            raise ReviewDataError(f"{where}: entity_id: duplicate (first at row {list(out).index(eid)})")
        if r["source"] not in SOURCES:
            raise ReviewDataError(f"{where}: source: expected one of {list(SOURCES)}, got {r['source']!r}")
        if r["split"] not in SPLITS:
            raise ReviewDataError(f"{where}: split: expected one of {list(SPLITS)}, got {r['split']!r}")
        if r["row"] is not None and r["row"] < 0:
            raise ReviewDataError(f"{where}: row: expected >= 0, got {r['row']}")
        allowed = SOURCE_COLUMNS[r["source"]]
        for c in TABLE_COLUMNS:
            if c not in allowed and r[c] is not None:
                raise ReviewDataError(f"{where}: {c}: must be null for source {r['source']!r} (a field of the other source), got {r[c]!r}")
        filled = [c for c in TABLE_COLUMNS if r[c] is not None]
        if not r["has_table"] and filled:
            raise ReviewDataError(f"{where}: has_table: False but {filled[0]} is set (expected every table column null)")
        if r["has_table"] and not filled:
            raise ReviewDataError(f"{where}: has_table: True but every table column is null")
        if r["avg_rating"] is not None and not 0.0 <= r["avg_rating"] <= 5.0:
            raise ReviewDataError(f"{where}: avg_rating: expected 0..5, got {r['avg_rating']}")
        if r["price"] is not None and r["price"] < 0:
            raise ReviewDataError(f"{where}: price: expected >= 0, got {r['price']}")
        if r["RestaurantsPriceRange2"] is not None and r["RestaurantsPriceRange2"] not in PRICE_RANGE.values():
            raise ReviewDataError(f"{where}: RestaurantsPriceRange2: expected one of {list(PRICE_RANGE.values())}, "
                                  f"got {r['RestaurantsPriceRange2']!r}")
        for c in HOURS_COLUMNS:
            if r[c] is not None and not HOURS_RE.match(r[c]):
                raise ReviewDataError(f"{where}: {c}: expected 'HH:MM-HH:MM', got {r[c]!r}")
        for c in ("name", "brand", *YELP_CATEGORICAL):
            if r[c] is not None and not r[c].strip():
                raise ReviewDataError(f"{where}: {c}: empty string (use null for a missing value)")
        out[eid] = (r["split"], r["source"])
    return out


def _check_children(name: str, t: pa.Table, entities: dict[str, tuple[str, str]], id_field: str | None,
                    text_field: str | None) -> list[str]:
    """Entity references, split agreement, unique ids and non-empty texts of reviews / references / images."""
    fname = f"{name}.parquet"
    eids = t.column("entity_id").to_pylist()
    splits = t.column("split").to_pylist() if "split" in t.schema.names else None
    seen: dict[str, int] = {}
    ids = t.column(id_field).to_pylist() if id_field else None
    texts = t.column(text_field).to_pylist() if text_field else None
    for i, eid in enumerate(eids):
        where = f"{fname}: entity {eid!r} (row {i})"
        if eid not in entities:
            raise ReviewDataError(f"{where}: entity_id: not an entity of entities.parquet")
        if splits is not None and splits[i] != entities[eid][0]:
            raise ReviewDataError(f"{where}: split: {splits[i]!r} differs from the entity's split {entities[eid][0]!r}")
        if ids is not None:
            if not ids[i]:
                raise ReviewDataError(f"{where}: {id_field}: empty")
            if ids[i] in seen:
                raise ReviewDataError(f"{where}: {id_field}: duplicate {ids[i]!r} (first at row {seen[ids[i]]})")
            seen[ids[i]] = i
        if texts is not None and not texts[i].strip():
            raise ReviewDataError(f"{where}: {text_field}: empty text")
    return eids


def _unique_pairs(fname: str, t: pa.Table, second: str) -> None:
    seen: set[tuple[str, int]] = set()
    for i, (eid, k) in enumerate(zip(t.column("entity_id").to_pylist(), t.column(second).to_pylist())):
        if k < 0:
            raise ReviewDataError(f"{fname}: entity {eid!r} (row {i}): {second}: expected >= 0, got {k}")
        if (eid, k) in seen:
            raise ReviewDataError(f"{fname}: entity {eid!r} (row {i}): {second}: duplicate {k} for this entity")
        seen.add((eid, k))


def validate(folder: str | Path, check_images: bool = True) -> ReviewTables:
    """Read and check a dataset folder (see the module docstring); return its tables. ``check_images`` also opens
    every image file under ``image_root`` and compares its sha256 (slow for a large photo set)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReviewDataError(f"{folder}: not a folder")
    tables, metas = {}, {}
    for name in TABLES:
        tables[name], metas[name] = _read(folder, name)
    for name in TABLES[1:]:
        for key in META_KEYS:
            if metas[name][key] != metas["entities"][key]:
                raise ReviewDataError(f"{name}.parquet: metadata.{key}: {metas[name][key]!r} differs from entities.parquet's "
                                      f"{metas['entities'][key]!r}")
    entities = _check_entities(tables["entities"])
    review_eids = _check_children("reviews", tables["reviews"], entities, "review_id", "text")
    _unique_pairs("reviews.parquet", tables["reviews"], "position")
    ratings = tables["reviews"].column("rating").to_pylist()
    for i, v in enumerate(ratings):
        if v is not None and not 0.0 <= v <= 5.0:
            raise ReviewDataError(f"reviews.parquet: entity {review_eids[i]!r} (row {i}): rating: expected 0..5, got {v}")
    _check_children("references", tables["references"], entities, None, "text")
    _unique_pairs("references.parquet", tables["references"], "ref_index")
    _check_children("images", tables["images"], entities, "photo_id", None)
    with_reviews = set(review_eids)
    for i, eid in enumerate(entities):
        if eid not in with_reviews:
            raise ReviewDataError(f"entities.parquet: entity {eid!r} (row {i}): reviews: the entity has no review in reviews.parquet")
    meta = metas["entities"]
    out = ReviewTables(folder=folder, meta=meta, extra=meta["extra"], **tables)
    _check_images(out, check_files=check_images)
    return out


def _check_images(t: ReviewTables, check_files: bool) -> None:
    fname = "images.parquet"
    rows = t.images.to_pylist()
    if rows and t.meta["image_root"] is None:
        raise ReviewDataError(f"{fname}: metadata.image_root: null but the file lists {len(rows)} images")
    root = t.image_root()
    for i, r in enumerate(rows):
        where = f"{fname}: entity {r['entity_id']!r} (row {i})"
        p = PurePosixPath(r["path"])
        if p.is_absolute() or ".." in p.parts or "\\" in r["path"] or not r["path"]:
            raise ReviewDataError(f"{where}: path: expected a relative POSIX path under image_root without '..', got {r['path']!r}")
        if not SHA256_RE.match(r["sha256"]):
            raise ReviewDataError(f"{where}: sha256: expected 64 lower-case hex digits, got {r['sha256']!r}")
        if check_files:
            f = root / r["path"]
            if not f.is_file():
                raise ReviewDataError(f"{where}: path: {f} not found")
            actual = sha256_file(f)
            if actual != r["sha256"]:
                raise ReviewDataError(f"{where}: sha256: file {f} has {actual}, the table says {r['sha256']}")


def read_tables(folder: str | Path, check_images: bool = False) -> ReviewTables:
    """The validated tables of a dataset folder (image files not re-hashed unless ``check_images``)."""
    return validate(folder, check_images=check_images)


@dataclass(frozen=True)
class EntityTexts:
    """The texts of one entity, as an evaluation reads them: input reviews in ``position`` order, references in
    ``ref_index`` order (both verbatim)."""

    entity_id: str
    row: int | None
    reviews: list[str]
    references: list[str]


def entity_texts(tables: ReviewTables, split: str) -> list[EntityTexts]:
    """The entities of one split of ``tables`` with their review and reference texts, ordered by ``row`` (the row of
    the official gold file, so a gold set's test entities line up with the lines of its official output file); entities
    without a row follow, ordered by ``entity_id``. A split without entities is a :class:`ReviewDataError`."""
    fname = tables.folder / "entities.parquet"
    if split not in SPLITS:
        raise ReviewDataError(f"{fname}: split: expected one of {list(SPLITS)}, got {split!r}")
    ent = tables.entities.select(["entity_id", "split", "row"]).to_pylist()
    rows = {e["entity_id"]: e["row"] for e in ent if e["split"] == split}
    if not rows:
        present = sorted({e["split"] for e in ent}, key=SPLITS.index)
        raise ReviewDataError(f"{fname}: split {split!r}: no entities (splits in the file: {', '.join(present) or 'none'})")

    def grouped(table: pa.Table, order: str) -> dict[str, list[str]]:
        out: dict[str, list[tuple[int, str]]] = {}
        cols = table.select(["entity_id", "split", order, "text"]).to_pydict()
        for eid, s, k, text in zip(cols["entity_id"], cols["split"], cols[order], cols["text"]):
            if s == split:
                out.setdefault(eid, []).append((k, text))
        return {eid: [t for _, t in sorted(pairs)] for eid, pairs in out.items()}

    reviews = grouped(tables.reviews, "position")
    references = grouped(tables.references, "ref_index")
    order = sorted(rows, key=lambda eid: (rows[eid] is None, rows[eid] if rows[eid] is not None else 0, eid))
    return [EntityTexts(entity_id=eid, row=rows[eid], reviews=reviews.get(eid, []), references=references.get(eid, []))
            for eid in order]


# ---------------------------------------------------------------------------------------------- statistics


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dataset_stats(tables: ReviewTables) -> dict[str, Any]:
    """Counts per split (entities, reviews, references, images, entities with a table / with images) and review
    statistics; plain ints and floats (JSON-serialisable, for DVC metrics)."""
    ent = tables.entities.to_pylist()
    split_of = {e["entity_id"]: e["split"] for e in ent}
    rev_eids = tables.reviews.column("entity_id").to_pylist()
    texts = tables.reviews.column("text").to_pylist()
    img_eids = tables.images.column("entity_id").to_pylist()
    per: dict[str, dict[str, Any]] = {}
    for s in SPLITS:
        ids = [e["entity_id"] for e in ent if e["split"] == s]
        if not ids:
            continue
        n_rev = {eid: 0 for eid in ids}
        words = 0
        for eid, text in zip(rev_eids, texts):
            if split_of[eid] == s:
                n_rev[eid] += 1
                words += len(text.split())
        total = sum(n_rev.values())
        per[s] = {
            "entities": len(ids),
            "reviews": total,
            "references": sum(1 for eid in tables.references.column("entity_id").to_pylist() if split_of[eid] == s),
            "images": sum(1 for eid in img_eids if split_of[eid] == s),
            "entities_with_images": len({eid for eid in img_eids if split_of[eid] == s}),
            "entities_with_table": sum(1 for e in ent if e["split"] == s and e["has_table"]),
            "reviews_per_entity_min": min(n_rev.values()),
            "reviews_per_entity_max": max(n_rev.values()),
            "mean_review_words": round(words / total, 2),
        }
    totals = {k: sum(p[k] for p in per.values()) for k in ("entities", "reviews", "references", "images")}
    return {"schema_version": SCHEMA_VERSION, "dataset": tables.meta["dataset"], "synthetic": tables.meta["synthetic"],
            "splits": per, "total": totals}
