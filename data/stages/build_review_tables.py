"""DVC stage ``build_review_tables@<dataset>``: MultimodalSum review, image and metadata tables (``data/review_schema.py``).

Every source is written as one dataset folder of four validated parquet tables (``entities``, ``reviews``,
``references``, ``images``), renamed into place only when everything checked out; the statistics go to ``--metrics``
as JSON (DVC metrics). Parameters come from ``data.build_review_tables.<source>`` of ``--params`` (unknown keys and
wrong types are refused before anything is read).

Sources
-------

* ``yelp_gold``   the MeanSum Yelp gold set of the mirror folder ``multimodalsum_eval/`` (``--raw`` = that folder,
                  ``data/raw/multimodalsum_eval`` after ``download@multimodalsum_eval``):
                  ``data/yelp/test/summaries_0-200_cleaned.csv``, rows 0-99 = ``dev``, rows 100-199 = ``test``
                  (official ``src/test.py``); 8 input reviews + 1 reference per business. ``row`` is the row of the
                  file, so ``output/Yelp.txt`` line ``j`` belongs to the test entity with ``row == 100 + j``. The row
                  without a business id (row 156) gets the entity id ``yelp_gold_row_156``; like every gold entity
                  it has no metadata table (``has_table = False``) and no image (their Yelp photos and business
                  records are in the licence-gated Yelp Open Dataset, not the mirror), so the model sees empty
                  image and table inputs for it. The 18 review ids ``#NAME?`` (spreadsheet damage in the official
                  file) are stored as a null ``source_review_id``.
* ``amazon_gold`` the Copycat Amazon gold set of the same folder: ``data/amazon/test/dev.csv`` (28 products,
                  ``dev``) and ``test.csv`` (32, ``test``), TAB-separated despite the name, read like the official
                  ``src/test.py`` (pandas, tab, standard CSV quoting); 8 reviews ``rev1..rev8`` + 3 references
                  ``summ1..summ3``; ``row`` = row in its file = line of ``output/Amazon.txt`` for test.
* ``yelp``        the official Yelp Open Dataset layout in ``--raw``: ``yelp_academic_dataset_review.json`` and
                  ``yelp_academic_dataset_business.json`` (JSON lines), optionally ``photos.json`` +
                  ``photos/<photo_id>.jpg`` (the photo archive). Not in ``dvc.yaml`` (licence-gated, absent here).
* ``amazon``      the official Amazon 2014 (McAuley) layout in ``--raw``: ``reviews_<Category>.json.gz`` and
                  ``meta_<Category>.json.gz`` (``.json`` also accepted) for each of the ``categories`` parameter,
                  product images expected at ``images/<asin>.jpg`` (downloaded from ``imUrl`` elsewhere; a missing
                  image is counted, not fetched). Not in ``dvc.yaml`` either.
* ``synthetic``   SYNTHETIC restaurants whose reviews and summaries depend on generated photos and on their table
                  (:mod:`data.synthetic_reviews`); for CI and CPU learning checks.

The ``yelp`` / ``amazon`` converters: the Copycat + MultimodalSum preprocessing (spec §3.1)
-------------------------------------------------------------------------------------------

In this order, each rule's removals counted in the metrics (``conversion``):

1. read: Yelp reviews need ``review_id, business_id, stars, text`` (a missing key is an error); Amazon reviews
   need ``asin, reviewText, overall`` and, as the official ``read_amazon_data``, a record missing one is skipped
   and counted (``skip_incomplete_reviews``). Amazon text is HTML-unescaped. Copycat's ``clean_text`` deletes tabs
   and newlines; with ``glue_newlines: false`` (default) they become spaces instead, so the words on either side of
   a line break are not glued into one token.
2. token length: drop reviews with fewer than ``min_len`` or more than ``max_len`` tokens. The official pipeline
   tokenises with Moses (sacremoses, ``escape=False``) and counts ``split()`` tokens. ``tokenizer: moses`` does that
   and needs sacremoses; it is NOT installed in this environment, so the default is ``tokenizer: regex``, an
   approximation of Moses' English rules (:data:`TOKEN_RE`: words with inner ``-``/``.`` kept together, clitics
   ``'s 're 've 'll 'd 'm 't`` split off, every other punctuation mark its own token). Counts near the limits can
   differ from Moses by a token or two.
3. ``min_revs``: drop entities with fewer reviews left.
4. percentile: drop entities whose review count is **not below** ``np.percentile(counts, percentile)`` (Copycat
   ``Subsample`` keeps ``len(group) < perc``). For Amazon, rules 2-4 run per category file, as Copycat's subsampling
   does, and a product in several categories is kept in the first (``categories`` order) only.
5. the gold-set entities (``exclude_gold``: the ``multimodalsum_eval`` folder; business ids of
   ``summaries_0-200_cleaned.csv``, product ids of ``all.csv``) are removed, as Copycat's ``EXCLUDED_GROUP_IDS``.
6. partition: the entity ids, sorted, are shuffled with ``random.Random(seed)``; the first
   ``int(n * train_part)`` are ``train``, the rest ``val`` (Copycat cuts an unshuffled directory listing).
7. text modality (official ``text_modality_preprocessing.py``): ASCII only (``encode('ascii', 'ignore')``) and
   whitespace normalised; Amazon drops a review whose text repeats one of the product's (``drop_duplicate_texts``);
   then reviews with fewer than ``min_words`` words are dropped.
8. entities left with fewer than ``min_revs_after_text`` reviews are dropped (1: only entities left empty, which
   the schema refuses; the official code keeps the emptied files).

Tables. Yelp (``yelp_academic_dataset_business.json``): name, stars, categories (the comma-separated string split),
the 5 string-categorical and 32 boolean attributes of the official ``YELP_STR_COLS`` / ``YELP_BIN_COLS``
(values like ``"True"``, ``"u'quiet'"``, ``"{'garage': False, ...}"`` parsed with ``ast.literal_eval``; nested
Ambience / BusinessParking / GoodForMeal flattened; ``_`` -> space in NoiseLevel and Alcohol; price range 1..4 ->
cheap / average / expensive / very expensive) and the hours (``"11:0-22:0"`` -> ``"11:00-22:00"``). **Presence
rule (spec §2.3):** each field's presence rate over *all* businesses of the file is computed (for a nested
attribute, the rate of its parent key, as the official null-ratio filter runs before flattening); a field below
``attribute_min_presence`` is set to null in every entity. The rates are written to the metrics
(``attribute_presence``) and to the entities file's metadata, so a model can apply another threshold. Category-list
truncation (90th percentile) and the hours K-means clusters are table-encoder steps, left to the model.
Yelp photos: businesses with a photo count not below the ``photo_percentile`` of ``photos.json`` get no photos
(official ``_yelp_img_preprocessing``); every kept photo must exist and decode (PIL ``load``).
Amazon (``meta_<Category>.json.gz``, Python-literal lines parsed with ``ast.literal_eval`` as the official loaders
``eval`` them): title, price, brand, categories (list of paths), description (HTML tags stripped and unescaped, a
regex stand-in for the official lxml cleaner), imUrl; the average rating is the mean ``overall`` of all the product's
reviews in its category file (official ``ratings`` field, before any filtering).
Image paths are relative to ``image_root`` = the absolute ``--raw`` folder (photos are not copied), or
``--image-root``.

Any bad input (a missing file or column, a value of the wrong type, a photo that does not decode, a duplicate id)
stops with an error naming the file, the line / row / entity and the field, before anything is written.

Usage::

    python -m data.stages.build_review_tables --source yelp_gold --raw data/raw/multimodalsum_eval \\
        --out data/processed/reviews/yelp_gold --metrics metrics/review_data/yelp_gold.json
    python -m data.stages.build_review_tables --source synthetic --params params.yaml \\
        --out data/processed/reviews/synthetic --metrics metrics/review_data/synthetic.json
    # licence-gated raw data, run by hand (not in dvc.yaml):
    python -m data.stages.build_review_tables --source yelp --raw /data/yelp_open_dataset \\
        --out data/processed/reviews/yelp --metrics metrics/review_data/yelp.json
    python -m data.stages.build_review_tables --source amazon --raw /data/amazon2014 \\
        --out data/processed/reviews/amazon --metrics metrics/review_data/amazon.json
    python -m data.stages.build_review_tables --validate data/processed/reviews/yelp_gold
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import html
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from pydantic import Field, model_validator

from data.config import StrictConfig, validate
from data.review_schema import (
    HOURS_COLUMNS,
    NESTED_ATTRIBUTES,
    PRICE_RANGE,
    WEEKDAYS,
    YELP_BOOLEAN,
    YELP_CATEGORICAL,
    YELP_ONLY,
    ReviewDataError,
    dataset_stats,
    write_tables,
)

SOURCES = ("yelp_gold", "amazon_gold", "synthetic", "yelp", "amazon")
SECTION = "data.build_review_tables"
YELP_GOLD_FILE = "data/yelp/test/summaries_0-200_cleaned.csv"
AMAZON_GOLD_FILES = {"dev": "data/amazon/test/dev.csv", "test": "data/amazon/test/test.csv"}
AMAZON_GOLD_ALL = "data/amazon/test/all.csv"
YELP_DEV_ROWS = 100  # official src/test.py: iloc[:100] = dev, iloc[100:] = test
N_INPUT_REVIEWS = 8
DAMAGED_IDS = {"#NAME?"}  # spreadsheet artefacts in the official Yelp gold file
AMAZON_CATEGORIES = ["Clothing_Shoes_and_Jewelry", "Electronics", "Health_and_Personal_Care", "Home_and_Kitchen"]

# a regex stand-in for the Moses English tokenizer (see the module docstring, rule 2)
TOKEN_RE = re.compile(r"[^\W_]+(?:[-.][^\W_]+)*|'(?:s|re|ve|ll|d|m|t)\b|\.{2,}|[^\w\s]|_", re.IGNORECASE)


# --------------------------------------------------------------------------------------------------- params


class GoldParams(StrictConfig):
    """``data.build_review_tables.{yelp_gold,amazon_gold}``: the gold files fix everything; no parameters."""


class SyntheticReviewsParams(StrictConfig):
    """``data.build_review_tables.synthetic``: the arguments of :func:`data.synthetic_reviews.generate`."""

    train: int = Field(40, ge=1)
    dev: int = Field(10, ge=1)
    test: int = Field(10, ge=1)
    train_reviews: int = Field(10, ge=9)
    input_reviews: int = Field(8, ge=1)
    references: int = Field(1, ge=1)
    images_per_entity: int = Field(2, ge=1)
    image_size: int = Field(32, ge=16)
    mention_prob: float = Field(0.1, ge=0.0, le=1.0)
    seed: int = 0


class CopycatParams(StrictConfig):
    """The Copycat subsampling / partition rules and the MultimodalSum text rules shared by ``yelp`` and ``amazon``."""

    min_revs: int = Field(10, ge=1)
    min_len: int = Field(ge=0)
    max_len: int = Field(ge=1)
    percentile: float = Field(90.0, gt=0.0, le=100.0)
    train_part: float = Field(gt=0.0, le=1.0)
    min_words: int = Field(ge=0)
    min_revs_after_text: int = Field(1, ge=1)
    tokenizer: Literal["regex", "moses"] = "regex"
    glue_newlines: bool = False
    skip_incomplete_reviews: bool
    drop_duplicate_texts: bool
    exclude_gold: str | None = "data/raw/multimodalsum_eval"
    seed: int = 0

    @model_validator(mode="after")
    def _lengths(self) -> "CopycatParams":
        if self.min_len > self.max_len:
            raise ValueError(f"min_len: must be <= max_len (got {self.min_len} > {self.max_len})")
        return self


class YelpParams(CopycatParams):
    min_len: int = Field(35, ge=0)
    max_len: int = Field(100, ge=1)
    train_part: float = Field(0.9, gt=0.0, le=1.0)
    min_words: int = Field(25, ge=0)
    skip_incomplete_reviews: bool = False
    drop_duplicate_texts: bool = False
    attribute_min_presence: float = Field(0.1, ge=0.0, le=1.0)
    photo_percentile: float | None = Field(90.0, gt=0.0, le=100.0)


class AmazonParams(CopycatParams):
    min_len: int = Field(45, ge=0)
    max_len: int = Field(70, ge=1)
    train_part: float = Field(0.95, gt=0.0, le=1.0)
    min_words: int = Field(30, ge=0)
    skip_incomplete_reviews: bool = True
    drop_duplicate_texts: bool = True
    categories: list[str] = Field(default_factory=lambda: list(AMAZON_CATEGORIES), min_length=1)


PARAMS: dict[str, type[StrictConfig]] = {"yelp_gold": GoldParams, "amazon_gold": GoldParams, "synthetic": SyntheticReviewsParams,
                                         "yelp": YelpParams, "amazon": AmazonParams}


def load_params(params_path: str | Path, source: str) -> StrictConfig:
    """The validated ``data.build_review_tables.<source>`` section of ``params_path``."""
    import yaml

    params_path = Path(params_path)
    if not params_path.is_file():
        raise FileNotFoundError(f"{params_path}: not found")
    raw = yaml.safe_load(params_path.read_text()) or {}
    section = ((raw.get("data") or {}).get("build_review_tables") or {}).get(source)
    if not isinstance(section, dict):
        raise ValueError(f"{params_path}: section {SECTION}.{source} is missing")
    return validate(PARAMS[source], section, source=str(params_path), section=f"{SECTION}.{source}")


# ------------------------------------------------------------------------------------------------ helpers


def make_tokenizer(name: str) -> Callable[[str], list[str]]:
    """``regex`` (:data:`TOKEN_RE`) or ``moses`` (sacremoses ``MosesTokenizer('en').tokenize(escape=False)``)."""
    if name == "regex":
        return TOKEN_RE.findall
    if name == "moses":
        try:
            from sacremoses import MosesTokenizer
        except ImportError:
            raise ValueError("tokenizer: 'moses' needs the sacremoses package, which is not installed "
                             "(use tokenizer: regex, the documented approximation)") from None
        mt = MosesTokenizer(lang="en")
        return lambda text: mt.tokenize(text, escape=False)
    raise ValueError(f"tokenizer: expected 'regex' or 'moses', got {name!r}")


def clean_text(text: str, glue_newlines: bool) -> str:
    """Copycat ``clean_text`` (deletes tabs and newlines) or, by default, tabs and newlines -> spaces."""
    if glue_newlines:
        return text.replace("\t", "").replace("\n", "")
    return text.replace("\t", " ").replace("\n", " ")


def normalise_text(text: str) -> str:
    """MultimodalSum ``_text_preprocessing``: ASCII only, whitespace collapsed."""
    return " ".join(text.encode("ascii", "ignore").decode().split())


def _is_number(v: Any) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _json_lines(path: Path, literal: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number from 1, record) of a JSON-lines file (``literal``: Python-literal lines, ``ast.literal_eval``
    first, as the official loaders ``eval`` the Amazon 2014 files); a bad line is an error naming file and line."""
    with _open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = None
            for parse in ((ast.literal_eval, json.loads) if literal else (json.loads, ast.literal_eval)):
                try:
                    rec = parse(line)
                    break
                except (ValueError, SyntaxError, RecursionError):
                    continue
            if not isinstance(rec, dict):
                raise ReviewDataError(f"{path.name}: line {n}: not a JSON / Python-literal object")
            yield n, rec


def _find(raw: Path, *names: str) -> Path:
    for name in names:
        if (raw / name).is_file():
            return raw / name
    raise FileNotFoundError(f"{' or '.join(names)}: not found in {raw}")


def check_image(path: Path, where: str) -> str:
    """sha256 of an image file that exists and fully decodes (PIL ``load``); else an error naming ``where``."""
    from PIL import Image

    if not path.is_file():
        raise ReviewDataError(f"{where}: file {path} not found")
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise ReviewDataError(f"{where}: {path.name} does not decode as an image ({type(err).__name__}: {err})") from None
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ gold sets


def _read_gold_csv(path: Path, sep: str, columns: list[str]):
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8")
    for col in columns:
        if col not in df.columns:
            raise ReviewDataError(f"{path.name}: {col}: column missing (expected columns {', '.join(columns)})")
    return df


def _gold_text(fname: str, i: int, eid: str, col: str, value: str) -> str:
    if not value.strip():
        raise ReviewDataError(f"{fname}: row {i} (entity {eid!r}): {col}: empty text")
    return value


def convert_yelp_gold(raw_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """MeanSum Yelp gold set -> review tables (see the module docstring); returns the conversion notes."""
    path = Path(raw_dir) / YELP_GOLD_FILE
    rev_cols = [f"Input.original_review_{k}" for k in range(N_INPUT_REVIEWS)]
    id_cols = [f"{c}_id" for c in rev_cols]
    df = _read_gold_csv(path, ",", ["Input.business_id", *rev_cols, *id_cols, "Answer.summary"])
    entities, reviews, refs = [], [], []
    seen: dict[str, int] = {}
    no_id_rows, damaged = [], 0
    for i, rec in enumerate(df.to_dict("records")):
        bid = rec["Input.business_id"].strip()
        if not bid:
            no_id_rows.append(i)
            bid = f"yelp_gold_row_{i}"
        if bid in seen:
            raise ReviewDataError(f"{path.name}: row {i} (entity {bid!r}): Input.business_id: duplicate (first at row {seen[bid]})")
        seen[bid] = i
        split = "dev" if i < YELP_DEV_ROWS else "test"
        entities.append({"entity_id": bid, "source": "yelp", "split": split, "row": i, "has_table": False})
        for k, (tc, ic) in enumerate(zip(rev_cols, id_cols)):
            sid = rec[ic].strip()
            if not sid or sid in DAMAGED_IDS:
                damaged += 1
                sid = None
            reviews.append({"entity_id": bid, "review_id": f"{bid}_rev{k}", "source_review_id": sid, "position": k,
                            "split": split, "text": _gold_text(path.name, i, bid, tc, rec[tc])})
        refs.append({"entity_id": bid, "ref_index": 0, "split": split,
                     "text": _gold_text(path.name, i, bid, "Answer.summary", rec["Answer.summary"])})
    notes = {"rows": len(df), "dev_rows": f"0-{YELP_DEV_ROWS - 1}", "test_rows": f"{YELP_DEV_ROWS}-{len(df) - 1}",
             "rows_without_business_id": no_id_rows, "damaged_review_ids": damaged}
    meta = {"dataset": "yelp_gold", "synthetic": False, "image_root": None,
            "notes": (f"MeanSum Yelp gold set ({YELP_GOLD_FILE}, business ids fixed by MultimodalSum): rows 0-99 dev, "
                      f"100-199 test (output/Yelp.txt line j = row 100 + j); 8 input reviews + 1 reference each, verbatim. "
                      f"Rows without business id {no_id_rows} -> entity yelp_gold_row_<row>. No metadata tables or photos "
                      f"(not in the mirror): has_table False, images empty. Review ids '#NAME?' -> null source_review_id."),
            "extra": {"conversion": notes}}
    write_tables(out_dir, entities, reviews, refs, [], meta)
    return notes


def convert_amazon_gold(raw_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Copycat Amazon gold set (dev.csv 28 / test.csv 32, tab-separated) -> review tables."""
    raw_dir = Path(raw_dir)
    rev_cols = [f"rev{k}" for k in range(1, N_INPUT_REVIEWS + 1)]
    sum_cols = ["summ1", "summ2", "summ3"]
    entities, reviews, refs = [], [], []
    seen: dict[str, str] = {}
    rows = {}
    for split, rel in AMAZON_GOLD_FILES.items():
        path = raw_dir / rel
        df = _read_gold_csv(path, "\t", ["cat", "prod_id", *rev_cols, *sum_cols])
        rows[split] = len(df)
        for i, rec in enumerate(df.to_dict("records")):
            pid = rec["prod_id"].strip()
            if not pid:
                raise ReviewDataError(f"{path.name}: row {i}: prod_id: empty")
            if pid in seen:
                raise ReviewDataError(f"{path.name}: row {i} (entity {pid!r}): prod_id: duplicate (already in {seen[pid]})")
            seen[pid] = f"{path.name} row {i}"
            entities.append({"entity_id": pid, "source": "amazon", "split": split, "row": i,
                             "category": rec["cat"].strip() or None, "has_table": False})
            for k, col in enumerate(rev_cols):
                reviews.append({"entity_id": pid, "review_id": f"{pid}_rev{k}", "position": k, "split": split,
                                "text": _gold_text(path.name, i, pid, col, rec[col])})
            for k, col in enumerate(sum_cols):
                refs.append({"entity_id": pid, "ref_index": k, "split": split, "text": _gold_text(path.name, i, pid, col, rec[col])})
    notes: dict[str, Any] = {"rows": rows}
    all_path = raw_dir / AMAZON_GOLD_ALL
    if all_path.is_file():  # all.csv = dev.csv + test.csv (checked, not converted)
        all_ids = set(_read_gold_csv(all_path, "\t", ["prod_id"])["prod_id"].str.strip())
        if all_ids != set(seen):
            raise ReviewDataError(f"{all_path.name}: prod_id: the products differ from dev.csv + test.csv "
                                  f"({len(all_ids - set(seen))} only in all.csv, {len(set(seen) - all_ids)} missing)")
        notes["all_csv_is_dev_plus_test"] = True
    meta = {"dataset": "amazon_gold", "synthetic": False, "image_root": None,
            "notes": ("Copycat Amazon gold set (data/amazon/test/dev.csv 28, test.csv 32; tab-separated, pandas quoting as "
                      "the official src/test.py): 8 reviews rev1..rev8 + references summ1..summ3 (ref_index 0..2), verbatim; "
                      "row = row in its file (test: output/Amazon.txt line). No metadata tables or images (not in the "
                      "mirror): has_table False, images empty."),
            "extra": {"conversion": notes}}
    write_tables(out_dir, entities, reviews, refs, [], meta)
    return notes


# ------------------------------------------------------------------------------- Copycat subsampling + partition


@dataclass
class RawReview:
    entity_id: str
    review_id: str
    text: str  # after clean_text
    rating: float
    source_review_id: str | None = None


def _zero_counts() -> dict[str, Any]:
    return {k: 0 for k in ("reviews_read", "entities_read", "reviews_removed_too_short_tokens", "reviews_removed_too_long_tokens",
                           "entities_removed_below_min_revs", "reviews_removed_below_min_revs",
                           "entities_removed_above_percentile", "reviews_removed_above_percentile")}


def subsample(reviews: Iterable[RawReview], p: CopycatParams, tokenize: Callable[[str], list[str]]
              ) -> tuple[dict[str, list[RawReview]], dict[str, Any]]:
    """Copycat ``Subsample`` on one file: token-length filter, ``min_revs``, percentile; (groups, counts)."""
    import numpy as np

    c = _zero_counts()
    seen: set[str] = set()
    groups: dict[str, list[RawReview]] = {}
    for r in reviews:
        c["reviews_read"] += 1
        seen.add(r.entity_id)
        n = len(tokenize(r.text))
        if n < p.min_len:
            c["reviews_removed_too_short_tokens"] += 1
        elif n > p.max_len:
            c["reviews_removed_too_long_tokens"] += 1
        else:
            groups.setdefault(r.entity_id, []).append(r)
    c["entities_read"] = len(seen)
    kept = {}
    for eid, rs in groups.items():
        if len(rs) < p.min_revs:
            c["entities_removed_below_min_revs"] += 1
            c["reviews_removed_below_min_revs"] += len(rs)
        else:
            kept[eid] = rs
    c["entities_removed_below_min_revs"] += len(seen) - len(groups)  # entities with no review of a valid length
    if not kept:
        c["percentile_threshold"] = None
        return {}, c
    perc = float(np.percentile([len(rs) for rs in kept.values()], p.percentile))
    c["percentile_threshold"] = perc
    out = {}
    for eid, rs in kept.items():
        if len(rs) < perc:
            out[eid] = rs
        else:
            c["entities_removed_above_percentile"] += 1
            c["reviews_removed_above_percentile"] += len(rs)
    return out, c


def partition_and_clean(groups: dict[str, list[RawReview]], p: CopycatParams, gold_ids: set[str]
                        ) -> tuple[dict[str, str], dict[str, list[RawReview]], dict[str, Any]]:
    """Rules 5-8 of the module docstring: gold exclusion, seeded partition, text modality rules; (split per
    entity, reviews per entity with normalised text, counts)."""
    c: dict[str, Any] = {"entities_removed_gold": 0, "reviews_removed_gold": 0, "reviews_removed_duplicate_text": 0,
                         "reviews_removed_below_min_words": 0, "entities_removed_after_text_filter": 0,
                         "reviews_removed_after_text_filter": 0}
    ids = []
    for eid in sorted(groups):
        if eid in gold_ids:
            c["entities_removed_gold"] += 1
            c["reviews_removed_gold"] += len(groups[eid])
        else:
            ids.append(eid)
    random.Random(p.seed).shuffle(ids)
    n_train = int(len(ids) * p.train_part)
    split_of = {eid: ("train" if k < n_train else "val") for k, eid in enumerate(ids)}
    c["entities_partitioned"] = {"train": n_train, "val": len(ids) - n_train}
    out: dict[str, list[RawReview]] = {}
    for eid in ids:
        kept, texts = [], set()
        for r in groups[eid]:
            text = normalise_text(r.text)
            if p.drop_duplicate_texts:
                key = "".join(re.sub(r"[\x00-\x1f\x7f-\x9f]", "", r.text).split())  # official review_id from text
                if key in texts:
                    c["reviews_removed_duplicate_text"] += 1
                    continue
                texts.add(key)
            if len(text.split()) < p.min_words:
                c["reviews_removed_below_min_words"] += 1
                continue
            kept.append(RawReview(r.entity_id, r.review_id, text, r.rating, r.source_review_id))
        if len(kept) < p.min_revs_after_text:
            c["entities_removed_after_text_filter"] += 1
            c["reviews_removed_after_text_filter"] += len(kept)
            del split_of[eid]
            continue
        out[eid] = kept
    c["entities_kept"] = {s: sum(1 for v in split_of.values() if v == s) for s in ("train", "val")}
    c["reviews_kept"] = {s: sum(len(out[e]) for e, v in split_of.items() if v == s) for s in ("train", "val")}
    return split_of, out, c


def _gold_ids(p: CopycatParams, which: str) -> set[str]:
    if p.exclude_gold is None:
        return set()
    root = Path(p.exclude_gold)
    if which == "yelp":
        df = _read_gold_csv(root / YELP_GOLD_FILE, ",", ["Input.business_id"])
        return {x.strip() for x in df["Input.business_id"] if x.strip()}
    df = _read_gold_csv(root / AMAZON_GOLD_ALL, "\t", ["prod_id"])
    return {x.strip() for x in df["prod_id"] if x.strip()}


def _review_records(split_of: dict[str, str], groups: dict[str, list[RawReview]]) -> list[dict[str, Any]]:
    out = []
    for eid in sorted(groups):
        for k, r in enumerate(groups[eid]):
            out.append({"entity_id": eid, "review_id": r.review_id, "source_review_id": r.source_review_id, "position": k,
                        "split": split_of[eid], "rating": r.rating, "text": r.text})
    return out


# ----------------------------------------------------------------------------------------------------- Yelp


YELP_REVIEW_KEYS = ("review_id", "business_id", "stars", "text")
YELP_BUSINESS_KEYS = ("business_id", "name", "stars", "categories", "attributes", "hours")
_HOURS_IN = re.compile(r"^(\d{1,2}):(\d{1,2})-(\d{1,2}):(\d{1,2})$")


def _read_yelp_reviews(path: Path, p: YelpParams, counts: dict[str, Any]) -> Iterator[RawReview]:
    for n, rec in _json_lines(path):
        missing = [k for k in YELP_REVIEW_KEYS if k not in rec]
        where = f"{path.name}: line {n} (review {rec.get('review_id')!r}, entity {rec.get('business_id')!r})"
        if missing:
            if p.skip_incomplete_reviews:
                counts["reviews_skipped_incomplete"] += 1
                continue
            raise ReviewDataError(f"{where}: {missing[0]}: missing (expected the fields {', '.join(YELP_REVIEW_KEYS)})")
        for key in ("review_id", "business_id", "text"):
            if not isinstance(rec[key], str):
                raise ReviewDataError(f"{where}: {key}: expected a string, got {rec[key]!r}")
        if not _is_number(rec["stars"]):
            raise ReviewDataError(f"{where}: stars: expected a number, got {rec['stars']!r}")
        yield RawReview(rec["business_id"], rec["review_id"], clean_text(rec["text"], p.glue_newlines), float(rec["stars"]),
                        rec["review_id"])


def _basic_str(x: Any) -> Any:
    """Official ``_basic_str_preprocessing``: ``u'x'`` / ``'x'`` -> ``x``, ``'None'`` -> None."""
    if isinstance(x, str):
        x = x.strip()
        if x.startswith("u'") and x.endswith("'"):
            x = x[1:]
        if len(x) >= 2 and x.startswith("'") and x.endswith("'"):
            x = x[1:-1]
        if x == "None":
            return None
    return x


def _as_bool(v: Any, where: str) -> bool | None:
    v = _basic_str(v)
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if v in ("True", "true", 1, 1.0):
        return True
    if v in ("False", "false", 0, 0.0):
        return False
    raise ReviewDataError(f"{where}: expected a boolean ('True' / 'False' / null), got {v!r}")


def parse_yelp_business(rec: dict[str, Any], where: str) -> dict[str, Any]:
    """One ``yelp_academic_dataset_business.json`` record -> the Yelp table columns (see the module docstring)."""
    out: dict[str, Any] = {}
    if not isinstance(rec["name"], (str, type(None))):
        raise ReviewDataError(f"{where}: name: expected a string, got {rec['name']!r}")
    out["name"] = (rec["name"].strip() or None) if isinstance(rec["name"], str) else None
    if rec["stars"] is not None and not _is_number(rec["stars"]):
        raise ReviewDataError(f"{where}: stars: expected a number, got {rec['stars']!r}")
    out["avg_rating"] = None if rec["stars"] is None else float(rec["stars"])
    cats = rec["categories"]
    if isinstance(cats, str):
        cats = [c.strip() for c in cats.split(",") if c.strip()]
    elif isinstance(cats, list) and all(isinstance(c, str) for c in cats):
        cats = [c.strip() for c in cats if c.strip()]
    elif cats is not None:
        raise ReviewDataError(f"{where}: categories: expected a comma-separated string, got {cats!r}")
    out["categories"] = cats or None
    attrs = rec["attributes"]
    if attrs is None:
        attrs = {}
    if not isinstance(attrs, dict):
        raise ReviewDataError(f"{where}: attributes: expected an object, got {attrs!r}")
    for col in YELP_CATEGORICAL:
        v = _basic_str(attrs.get(col))
        if col == "RestaurantsPriceRange2" and v is not None:
            key = str(v) if isinstance(v, (str, int)) and not isinstance(v, bool) else None
            if key not in PRICE_RANGE:
                raise ReviewDataError(f"{where}: attributes.RestaurantsPriceRange2: expected 1..4, got {v!r}")
            v = PRICE_RANGE[key]
        elif v is not None:
            if not isinstance(v, str):
                raise ReviewDataError(f"{where}: attributes.{col}: expected a string, got {v!r}")
            v = v.replace("_", " ") if col in ("NoiseLevel", "Alcohol") else v
            v = v or None
        out[col] = v
    nested: dict[str, dict[str, Any]] = {}
    for parent in NESTED_ATTRIBUTES:
        v = _basic_str(attrs.get(parent)) if not isinstance(attrs.get(parent), dict) else attrs.get(parent)
        if isinstance(v, str):
            try:
                v = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                raise ReviewDataError(f"{where}: attributes.{parent}: expected a dict literal like \"{{'garage': False}}\", "
                                      f"got {v!r}") from None
        if v is not None and not isinstance(v, dict):
            raise ReviewDataError(f"{where}: attributes.{parent}: expected a dict, got {v!r}")
        nested[parent] = v
    for col in YELP_BOOLEAN:
        parent, _, sub = col.partition("_")
        if sub and parent in nested:
            d = nested[parent]
            out[col] = None if d is None else _as_bool(d.get(sub), f"{where}: attributes.{parent}.{sub}")
        else:
            out[col] = _as_bool(attrs.get(col), f"{where}: attributes.{col}")
    hours = rec["hours"]
    if hours is not None and not isinstance(hours, dict):
        raise ReviewDataError(f"{where}: hours: expected an object {{'Monday': '11:0-22:0', ...}}, got {hours!r}")
    for day, col in zip(WEEKDAYS, HOURS_COLUMNS):
        v = (hours or {}).get(day)
        if v is None:
            out[col] = None
            continue
        m = _HOURS_IN.match(v) if isinstance(v, str) else None
        if not m or int(m[1]) > 24 or int(m[3]) > 24 or int(m[2]) > 59 or int(m[4]) > 59:
            raise ReviewDataError(f"{where}: hours.{day}: expected 'H:M-H:M' (e.g. '11:0-22:0'), got {v!r}")
        out[col] = f"{int(m[1]):02d}:{int(m[2]):02d}-{int(m[3]):02d}:{int(m[4]):02d}"
    return out


def _presence_key(col: str) -> str:
    parent, _, sub = col.partition("_")
    return parent if sub and parent in NESTED_ATTRIBUTES else col


def _read_yelp_businesses(path: Path, p: YelpParams) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """All businesses' table columns + the presence rate of each field over all of them (spec §2.3)."""
    tables: dict[str, dict[str, Any]] = {}
    present: dict[str, int] = {}
    for n, rec in _json_lines(path):
        missing = [k for k in YELP_BUSINESS_KEYS if k not in rec]
        where = f"{path.name}: line {n} (entity {rec.get('business_id')!r})"
        if missing:
            raise ReviewDataError(f"{where}: {missing[0]}: missing (expected the fields {', '.join(YELP_BUSINESS_KEYS)})")
        if not isinstance(rec["business_id"], str) or not rec["business_id"]:
            raise ReviewDataError(f"{where}: business_id: expected a non-empty string, got {rec['business_id']!r}")
        if rec["business_id"] in tables:
            raise ReviewDataError(f"{where}: business_id: duplicate")
        row = parse_yelp_business(rec, where)
        tables[rec["business_id"]] = row
        keys = {_presence_key(c) for c, v in row.items() if v is not None}
        attrs = rec["attributes"] or {}
        keys |= {k for k in NESTED_ATTRIBUTES if _basic_str(attrs.get(k)) is not None}
        for k in keys:
            present[k] = present.get(k, 0) + 1
    n_total = max(1, len(tables))
    fields = sorted({_presence_key(c) for c in ("name", "avg_rating", *YELP_ONLY)})
    rates = {k: round(present.get(k, 0) / n_total, 6) for k in fields}
    return tables, rates


def convert_yelp(raw_dir: str | Path, out_dir: str | Path, p: YelpParams, image_root: str | None = None) -> dict[str, Any]:
    """Yelp Open Dataset -> review tables (train / val), the rules of the module docstring; returns the counts."""
    raw = Path(raw_dir)
    review_path = _find(raw, "yelp_academic_dataset_review.json")
    business_path = _find(raw, "yelp_academic_dataset_business.json")
    tokenize = make_tokenizer(p.tokenizer)
    gold = _gold_ids(p, "yelp")
    skipped = {"reviews_skipped_incomplete": 0}
    groups, counts = subsample(_read_yelp_reviews(review_path, p, skipped), p, tokenize)
    counts.update(skipped)
    split_of, groups, c2 = partition_and_clean(groups, p, gold)
    counts.update(c2)
    seen_ids: dict[str, str] = {}
    for eid, rs in groups.items():
        for r in rs:
            if r.review_id in seen_ids:
                raise ReviewDataError(f"{review_path.name}: review {r.review_id!r} (entity {eid!r}): review_id: duplicate "
                                      f"(also in entity {seen_ids[r.review_id]!r})")
            seen_ids[r.review_id] = eid
    tables, rates = _read_yelp_businesses(business_path, p)
    dropped = sorted(k for k, v in rates.items() if v < p.attribute_min_presence)
    counts["attribute_presence"] = rates
    counts["fields_nulled_below_presence"] = dropped
    entities = []
    counts["entities_without_business_record"] = 0
    for eid in sorted(groups):
        row = tables.get(eid)
        ent: dict[str, Any] = {"entity_id": eid, "source": "yelp", "split": split_of[eid], "has_table": False}
        if row is None:
            counts["entities_without_business_record"] += 1
        else:
            row = {c: (None if _presence_key(c) in dropped else v) for c, v in row.items()}
            ent.update(row)
            ent["has_table"] = any(v is not None for v in row.values())
        entities.append(ent)
    images, counts_img = _yelp_photos(raw, set(groups), p)
    counts.update(counts_img)
    meta = {"dataset": "yelp", "synthetic": False,
            "image_root": (image_root or str(raw.resolve())) if images else None,
            "notes": (f"Yelp Open Dataset, Copycat subsampling (min_revs {p.min_revs}, tokens {p.min_len}..{p.max_len} "
                      f"[{p.tokenizer} tokenizer], percentile {p.percentile}), seeded partition train {p.train_part} "
                      f"(seed {p.seed}), ASCII + whitespace normalisation, >= {p.min_words} words; fields present in < "
                      f"{p.attribute_min_presence} of the businesses nulled: {dropped}"),
            "extra": {"attribute_presence": rates, "attribute_min_presence": p.attribute_min_presence,
                      "fields_nulled_below_presence": dropped}}
    write_tables(out_dir, entities, _review_records(split_of, groups), [], images, meta, check_images=False)
    return counts


def _yelp_photos(raw: Path, kept: set[str], p: YelpParams) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import numpy as np

    path = raw / "photos.json"
    c: dict[str, Any] = {"photos_json_found": path.is_file(), "photos_read": 0, "photo_percentile_threshold": None,
                         "photos_dropped_popular_businesses": 0, "businesses_dropped_popular": 0, "photos_kept": 0}
    if not path.is_file():
        return [], c
    by_business: dict[str, list[dict[str, Any]]] = {}
    seen: set[str] = set()
    for n, rec in _json_lines(path):
        where = f"{path.name}: line {n} (photo {rec.get('photo_id')!r}, entity {rec.get('business_id')!r})"
        for key in ("photo_id", "business_id"):
            if key not in rec:
                raise ReviewDataError(f"{where}: {key}: missing (expected the fields photo_id, business_id, caption, label)")
            if not isinstance(rec[key], str) or not rec[key]:
                raise ReviewDataError(f"{where}: {key}: expected a non-empty string, got {rec[key]!r}")
        for key in ("caption", "label"):
            if rec.get(key) is not None and not isinstance(rec[key], str):
                raise ReviewDataError(f"{where}: {key}: expected a string, got {rec[key]!r}")
        if rec["photo_id"] in seen:
            raise ReviewDataError(f"{where}: photo_id: duplicate")
        seen.add(rec["photo_id"])
        c["photos_read"] += 1
        by_business.setdefault(rec["business_id"], []).append({**rec, "line": n})
    threshold = None
    if p.photo_percentile is not None and by_business:
        threshold = float(np.percentile([len(v) for v in by_business.values()], p.photo_percentile))
    c["photo_percentile_threshold"] = threshold
    images = []
    for bid in sorted(by_business):
        photos = by_business[bid]
        if threshold is not None and len(photos) >= threshold:
            c["businesses_dropped_popular"] += 1
            c["photos_dropped_popular_businesses"] += len(photos)
            continue
        if bid not in kept:
            continue
        for ph in photos:
            rel = f"photos/{ph['photo_id']}.jpg"
            sha = check_image(raw / rel, f"{path.name}: line {ph['line']} (photo {ph['photo_id']!r}, entity {bid!r}): photo")
            images.append({"entity_id": bid, "photo_id": ph["photo_id"], "path": rel, "sha256": sha,
                           "caption": (ph.get("caption") or None), "label": (ph.get("label") or None)})
    c["photos_kept"] = len(images)
    c["entities_with_photos"] = len({im["entity_id"] for im in images})
    return images, c


# --------------------------------------------------------------------------------------------------- Amazon


AMAZON_REVIEW_KEYS = ("asin", "reviewText", "overall")


def _read_amazon_reviews(path: Path, p: AmazonParams, counts: dict[str, Any], ratings: dict[str, list[float]]
                         ) -> Iterator[RawReview]:
    for n, rec in _json_lines(path, literal=False):
        missing = [k for k in AMAZON_REVIEW_KEYS if k not in rec]
        where = f"{path.name}: line {n} (entity {rec.get('asin')!r})"
        if missing:
            if p.skip_incomplete_reviews:
                counts["reviews_skipped_incomplete"] += 1
                continue
            raise ReviewDataError(f"{where}: {missing[0]}: missing (expected the fields {', '.join(AMAZON_REVIEW_KEYS)})")
        for key in ("asin", "reviewText"):
            if not isinstance(rec[key], str):
                raise ReviewDataError(f"{where}: {key}: expected a string, got {rec[key]!r}")
        if not _is_number(rec["overall"]):
            raise ReviewDataError(f"{where}: overall: expected a number, got {rec['overall']!r}")
        rating = float(rec["overall"])
        ratings.setdefault(rec["asin"], []).append(rating)
        text = clean_text(html.unescape(rec["reviewText"]), p.glue_newlines)
        yield RawReview(rec["asin"], f"{path.name.split('.')[0]}:{n}", text, rating)


def _clean_description(text: str) -> str | None:
    text = html.unescape(re.sub(r"<[^>]+>", " ", text)).replace("\xa0", " ")
    return " ".join(text.split()) or None


def parse_amazon_meta(rec: dict[str, Any], where: str) -> dict[str, Any]:
    """One ``meta_<Category>.json`` record -> the Amazon table columns."""
    out: dict[str, Any] = {}
    for key, col in (("title", "name"), ("brand", "brand")):
        v = rec.get(key)
        if v is not None and not isinstance(v, str):
            raise ReviewDataError(f"{where}: {key}: expected a string, got {v!r}")
        out[col] = (html.unescape(v).strip() or None) if v is not None else None
    price = rec.get("price")
    if price is not None and not (_is_number(price) and price >= 0):
        raise ReviewDataError(f"{where}: price: expected a number >= 0, got {price!r}")
    out["price"] = None if price is None else float(price)
    cats = rec.get("categories")
    if cats is not None and not (isinstance(cats, list) and all(isinstance(c, list) and all(isinstance(x, str) for x in c) for c in cats)):
        raise ReviewDataError(f"{where}: categories: expected a list of category paths (lists of strings), got {cats!r}")
    out["category_paths"] = [list(c) for c in cats] if cats else None
    desc = rec.get("description")
    if desc is not None and not isinstance(desc, str):
        raise ReviewDataError(f"{where}: description: expected a string, got {desc!r}")
    out["description"] = None if desc is None else _clean_description(desc)
    url = rec.get("imUrl")
    if url is not None and not isinstance(url, str):
        raise ReviewDataError(f"{where}: imUrl: expected a string, got {url!r}")
    out["image_url"] = url or None
    return out


def convert_amazon(raw_dir: str | Path, out_dir: str | Path, p: AmazonParams, image_root: str | None = None) -> dict[str, Any]:
    """Amazon 2014 per-category reviews + meta -> review tables (train / val); returns the counts."""
    raw = Path(raw_dir)
    tokenize = make_tokenizer(p.tokenizer)
    gold = _gold_ids(p, "amazon")
    files = {cat: (_find(raw, f"reviews_{cat}.json.gz", f"reviews_{cat}.json"), _find(raw, f"meta_{cat}.json.gz", f"meta_{cat}.json"))
             for cat in p.categories}
    counts: dict[str, Any] = {"per_category": {}, "entities_removed_duplicate_across_categories": 0,
                              "reviews_removed_duplicate_across_categories": 0}
    merged: dict[str, list[RawReview]] = {}
    category_of: dict[str, str] = {}
    avg: dict[str, float] = {}
    for cat, (rpath, _) in files.items():
        skipped = {"reviews_skipped_incomplete": 0}
        ratings: dict[str, list[float]] = {}
        groups, c = subsample(_read_amazon_reviews(rpath, p, skipped, ratings), p, tokenize)
        c.update(skipped)
        counts["per_category"][cat] = c
        for eid, rs in groups.items():
            if eid in merged:
                counts["entities_removed_duplicate_across_categories"] += 1
                counts["reviews_removed_duplicate_across_categories"] += len(rs)
                continue
            merged[eid], category_of[eid] = rs, cat
            avg[eid] = sum(ratings[eid]) / len(ratings[eid])
    for key in ("reviews_read", "entities_read", "reviews_skipped_incomplete", "reviews_removed_too_short_tokens",
                "reviews_removed_too_long_tokens", "entities_removed_below_min_revs", "reviews_removed_below_min_revs",
                "entities_removed_above_percentile", "reviews_removed_above_percentile"):
        counts[key] = sum(c[key] for c in counts["per_category"].values())
    split_of, groups, c2 = partition_and_clean(merged, p, gold)
    counts.update(c2)
    meta_rows: dict[str, dict[str, Any]] = {}
    for cat, (_, mpath) in files.items():
        for n, rec in _json_lines(mpath, literal=True):
            asin = rec.get("asin")
            if not isinstance(asin, str):
                raise ReviewDataError(f"{mpath.name}: line {n}: asin: expected a string, got {asin!r}")
            if asin in groups and category_of[asin] == cat and asin not in meta_rows:
                meta_rows[asin] = parse_amazon_meta(rec, f"{mpath.name}: line {n} (entity {asin!r})")
    entities, images = [], []
    counts.update({"entities_without_meta_record": 0, "entities_with_image_url_but_no_file": 0})
    for eid in sorted(groups):
        ent: dict[str, Any] = {"entity_id": eid, "source": "amazon", "split": split_of[eid], "category": category_of[eid],
                               "has_table": True, "avg_rating": round(avg[eid], 6)}
        row = meta_rows.get(eid)
        if row is None:
            counts["entities_without_meta_record"] += 1
        else:
            ent.update(row)
        entities.append(ent)
        rel = f"images/{eid}.jpg"
        if (raw / rel).is_file():
            sha = check_image(raw / rel, f"{rel} (entity {eid!r}): image")
            images.append({"entity_id": eid, "photo_id": eid, "path": rel, "sha256": sha})
        elif row is not None and row.get("image_url"):
            counts["entities_with_image_url_but_no_file"] += 1
    counts["images_kept"] = len(images)
    meta = {"dataset": "amazon", "synthetic": False, "image_root": (image_root or str(raw.resolve())) if images else None,
            "notes": (f"Amazon 2014 {p.categories}, Copycat subsampling per category (min_revs {p.min_revs}, tokens "
                      f"{p.min_len}..{p.max_len} [{p.tokenizer} tokenizer], percentile {p.percentile}), seeded partition "
                      f"train {p.train_part} (seed {p.seed}), ASCII + whitespace normalisation, duplicate texts dropped: "
                      f"{p.drop_duplicate_texts}, >= {p.min_words} words; avg_rating = mean overall of all the product's "
                      f"reviews; images from images/<asin>.jpg"),
            "extra": {}}
    write_tables(out_dir, entities, _review_records(split_of, groups), [], images, meta, check_images=False)
    return counts


# ------------------------------------------------------------------------------------------------------ CLI


def build(source: str, raw: Path | None, out: Path, params: StrictConfig, image_root: str | None = None) -> dict[str, Any]:
    """Run one source; return its conversion notes (counts)."""
    if source == "synthetic":
        from data.synthetic_reviews import generate

        generate(out, **params.model_dump())
        return {"generator": params.model_dump()}
    if raw is None:
        raise ValueError(f"--raw is required for --source {source}")
    if source == "yelp_gold":
        return convert_yelp_gold(raw, out)
    if source == "amazon_gold":
        return convert_amazon_gold(raw, out)
    if source == "yelp":
        return convert_yelp(raw, out, params, image_root)  # type: ignore[arg-type]
    if source == "amazon":
        return convert_amazon(raw, out, params, image_root)  # type: ignore[arg-type]
    raise ValueError(f"unknown source {source!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=SOURCES)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help=f"reads {SECTION}.<source>")
    ap.add_argument("--raw", type=Path, help="input folder of the source (not for synthetic)")
    ap.add_argument("--out", type=Path, help="dataset folder to write (replaced atomically)")
    ap.add_argument("--metrics", type=Path, help="where to write the statistics as JSON")
    ap.add_argument("--image-root", default=None, help="yelp / amazon: image_root to record instead of the absolute --raw")
    ap.add_argument("--validate", type=Path, metavar="DATASET_DIR", help="only validate an existing dataset folder")
    args = ap.parse_args(argv)
    from data.review_schema import validate as validate_folder

    if args.validate is not None:
        try:
            validate_folder(args.validate)
        except ReviewDataError as err:
            print(f"error: {args.validate}: {err}", file=sys.stderr)
            return 1
        print(f"OK {args.validate}")
        return 0
    missing = [f"--{k}" for k in ("source", "out", "metrics") if getattr(args, k) is None]
    if missing:
        ap.error(f"missing {' '.join(missing)} (or use --validate DATASET_DIR)")
    try:
        params = load_params(args.params, args.source)
        conversion = build(args.source, args.raw, args.out, params, args.image_root)
        tables = validate_folder(args.out, check_images=args.source == "synthetic")
    except (ReviewDataError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from data.atomic import atomic_write_json

    stats = dataset_stats(tables)
    atomic_write_json(args.metrics, {"source": args.source, **stats, "conversion": conversion})
    parts = ", ".join(f"{s} {v['entities']} entities/{v['reviews']} reviews/{v['references']} references/{v['images']} images"
                      for s, v in stats["splits"].items())
    print(f"{args.source} -> {args.out}: {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
