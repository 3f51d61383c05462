"""MultimodalSum batches from the review tables (``data/review_schema.py``), spec §3.1 / §3.3 and the official
``src/{text_pretrain,img_pretrain,table_pretrain,multimodal_train,test,data_utils,bart-review}.py``.

Reading. :class:`ReviewCorpus` reads every folder of ``data.folders`` with :func:`data.review_schema.read_tables`
(which checks the four files, their columns, types, ids, splits, and refuses an entity without reviews, naming the
file, the entity and the field) and then checks what this model needs, before any training starts, with errors that
also name the file, entity and field (:class:`~data.review_schema.ReviewDataError`): ratings all present or all
absent per entity, a table that fits ``model.table_schema`` (the source), and, when photos are used, that every
photo file exists and decodes. Only ``reviews.parquet``, ``entities.parquet`` and ``images.parquet`` are read for
training; ``references.parquet`` is read only by :meth:`ReviewCorpus.eval_entities` (dev/test scoring).

Which entities. Training units are the entities of ``data.train_splits`` (``val_fraction`` > 0 holds out that share
of them, a seeded draw, for the validation loss; otherwise ``data.val_splits`` are the validation entities).
An entity with fewer than ``data.train_reviews`` reviews cannot give a leave-one-out sample: it is left out and
counted (:attr:`ReviewCorpus.skipped`). The BPE tokenizer sees :meth:`ReviewCorpus.tokenizer_texts`: the reviews of
the training entities only.

Leave-one-out (steps 1 and 3). Each epoch, ``train_reviews`` (9) reviews are sampled per entity without replacement
(``numpy.random.RandomState`` seeded by (order_seed, epoch), so a resumed run draws the same); validation draws once
with ``RandomState(val_seed = 7)`` per entity, which reproduces pandas' ``groupby(..).sample(9, random_state=7)``
of the official code for the same review order. The model's ``leave_one_out_loss`` then makes review i the target
of the other 8 with delta = rating_i - mean(rating of the others); entities without ratings (the gold sets) get
ratings 0, i.e. delta = 0. Reviews are BPE-encoded to ``max_review_tokens`` (130) with <s> </s> and stripped
``[1:-1]`` (:meth:`~models.multimodalsum.tokenizer.ReviewTokenizer.stripped`), padded to 128 (``pad_to_max``) or to
the batch maximum.

Photos (spec §2.2): train = RandomResizedCrop + RandomRotation(5) + horizontal flip + ColorJitter(0.3, 0.3, 0.3,
0.1) + ImageNet normalisation; dev/test and validation = Resize + CenterCrop (torchvision, global torch RNG, which
the recipe seeds per epoch). Up to ``images.max_per_entity[source]`` photos per entity (the first ones of
``images.parquet``), padded with zero images and a False mask. Tables: :func:`models.multimodalsum.modeling.
build_table_batch` of the entity's ``entities.parquet`` row (None where ``has_table`` is False: alpha = 0).

Steps 2a / 2b rows: every entity with photos (2a) / a table (2b), ``rows_per_entity`` sampled reviews, each its own
row (the official ``ImgDataset`` / ``TableDataset``), delta = 0.

Step 0 (denoising, official ``bart-review.py``): every training review of at least ``min_chunk_chars`` characters is
one chunk of at most ``chunk_tokens`` (128) BPE tokens, ``</s>`` at the first padding position: the labels. The
encoder input is the same review with its sentences permuted (``permute_ratio`` 1.0 = all; a regex sentence split
replaces NLTK punkt, which needs a download) and re-encoded, then text-infilled (:func:`text_infill`: 30% of the
positions masked in spans of Poisson(3) length, each span one ``<mask>``, zero-length spans become inserted
``<mask>`` tokens, the last position never masked, as the official collator). Decoder input = ``<s>`` + labels
shifted right.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.review_schema import (AMAZON_ONLY, COMMON_TABLE, ENTITIES_SCHEMA, HOURS_COLUMNS, HOURS_RE, YELP_ONLY,
                                ReviewDataError, read_tables)
from models.multimodalsum.modeling import HoursClusters, TableBatch, build_table_batch, fit_hours_clusters
from models.multimodalsum.tokenizer import EOS, PAD, ReviewTokenizer

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SCHEMA_SOURCES = {"yelp": ("yelp", "synthetic"), "amazon": ("amazon",)}  # entity sources each table schema reads
SCHEMA_COLUMNS = {"yelp": (*COMMON_TABLE, *YELP_ONLY), "amazon": (*COMMON_TABLE, *AMAZON_ONLY)}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Entity:
    """One business / product as the model sees it (references only for dev/test entities, see ``eval_entities``)."""

    entity_id: str
    source: str
    split: str
    dataset: str
    row: int | None
    reviews: list[str]
    ratings: list[float] | None  # None: the entity's reviews have no rating (delta = 0)
    table: dict[str, Any] | None  # the metadata fields of entities.parquet; None = no table
    photos: list[Path] = field(default_factory=list)
    references: list[str] = field(default_factory=list)

    @property
    def has_photos(self) -> bool:
        return bool(self.photos)


def mixed_seed(*values: int) -> int:
    return int(np.random.SeedSequence([int(v) % 2**32 for v in values]).generate_state(1)[0])


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def training_files_digest(folders: Sequence[str]) -> dict[str, str]:
    """sha256 (16 hex) of the files training reads (never references.parquet): part of the checkpoint key, so
    rebuilt data starts a fresh fit."""
    out = {}
    for folder in folders:
        for name in ("entities.parquet", "reviews.parquet", "images.parquet"):
            p = Path(folder) / name
            out[f"{folder}/{name}"] = file_digest(p) if p.is_file() else "missing"
    return out


# ------------------------------------------------------------------------------------------------------- reading
class ReviewCorpus:
    """The entities of the configured folders, checked for this model (module docstring)."""

    def __init__(self, data_cfg, modalities, table_schema: str = "yelp", check_photos: bool = True):
        self.cfg = data_cfg
        self.modalities = modalities
        self.table_schema = table_schema
        self.entities: list[Entity] = []
        self.skipped: dict[str, int] = {}
        self.folders: dict[str, Path] = {}
        self._tables = {}
        seen: dict[str, str] = {}
        for folder in data_cfg.folders:
            tables = read_tables(folder)
            name = tables.meta["dataset"]
            if name in self.folders:
                raise ReviewDataError(f"{folder}: metadata.dataset: {name!r} is also the dataset of {self.folders[name]}")
            self.folders[name] = Path(folder)
            self._tables[name] = tables
            for ent in self._read_entities(tables, name):
                if ent.entity_id in seen:
                    raise ReviewDataError(f"{folder}/entities.parquet: entity {ent.entity_id!r}: entity_id: also in {seen[ent.entity_id]}")
                seen[ent.entity_id] = folder
                self.entities.append(ent)
        self.synthetic = any(t.meta["synthetic"] for t in self._tables.values())
        self._train, self._val = self._partition()
        if check_photos and modalities.images:
            self.check_photos([*self._train, *self._val, *self._split(data_cfg.dev_split), *self._split(data_cfg.test_split)])

    # ---- reading one folder
    def _read_entities(self, tables, dataset: str) -> list[Entity]:
        folder = tables.folder
        ent_rows = tables.entities.to_pylist()
        reviews: dict[str, list[tuple[int, str, float | None]]] = {}
        cols = tables.reviews.select(["entity_id", "position", "text", "rating"]).to_pydict()
        for eid, pos, text, rating in zip(cols["entity_id"], cols["position"], cols["text"], cols["rating"]):
            reviews.setdefault(eid, []).append((pos, text, rating))
        photos: dict[str, list[Path]] = {}
        root = tables.image_root()
        for img in tables.images.select(["entity_id", "path"]).to_pylist():
            photos.setdefault(img["entity_id"], []).append(root / img["path"])
        out = []
        for i, row in enumerate(ent_rows):
            eid = row["entity_id"]
            revs = sorted(reviews[eid])  # read_tables refuses an entity without reviews
            ratings = [r for _, _, r in revs]
            if any(r is None for r in ratings) and not all(r is None for r in ratings):
                k = ratings.index(None)
                raise ReviewDataError(f"{folder / 'reviews.parquet'}: entity {eid!r} (review at position {revs[k][0]}): "
                                      "rating: null while other reviews of the entity have one (all or none)")
            table = None
            if row["has_table"]:
                if self.modalities.table and row["source"] not in SCHEMA_SOURCES[self.table_schema]:
                    raise ReviewDataError(f"{folder / 'entities.parquet'}: entity {eid!r} (row {i}): source: "
                                          f"{row['source']!r} does not fit model.table_schema {self.table_schema!r}")
                table = {k: row[k] for k in SCHEMA_COLUMNS["amazon" if row["source"] == "amazon" else "yelp"]}
            out.append(Entity(entity_id=eid, source=row["source"], split=row["split"], dataset=dataset, row=row["row"],
                              reviews=[t for _, t, _ in revs],
                              ratings=None if ratings[0] is None else [float(r) for r in ratings],
                              table=table, photos=photos.get(eid, [])))
        return out

    def _split(self, split: str) -> list[Entity]:
        return [e for e in self.entities if e.split == split]

    def _partition(self) -> tuple[list[Entity], list[Entity]]:
        c = self.cfg
        train = [e for e in self.entities if e.split in c.train_splits]
        if c.val_fraction > 0:
            rng = np.random.RandomState(mixed_seed(c.split_seed, 7919))
            order = rng.permutation(len(train))
            n_val = max(1, int(round(len(train) * c.val_fraction)))
            held = set(order[:n_val].tolist())
            val = [e for i, e in enumerate(train) if i in held]
            train = [e for i, e in enumerate(train) if i not in held]
        else:
            val = [e for e in self.entities if e.split in c.val_splits]
        out = []
        for name, ents in (("train", train), ("val", val)):
            usable = [e for e in ents if len(e.reviews) >= c.train_reviews]
            self.skipped[f"{name}_fewer_than_train_reviews"] = len(ents) - len(usable)
            if not usable:
                where = ", ".join(c.folders)
                raise ReviewDataError(f"{where}: no {name} entity with at least data.train_reviews = {c.train_reviews} "
                                      f"reviews (splits {c.train_splits if name == 'train' else c.val_splits or 'held out'}; "
                                      f"{len(ents)} entities before the rule)")
            out.append(usable)
        return out[0], out[1]

    def check_photos(self, entities: Sequence[Entity]) -> None:
        """Every photo of ``entities`` exists and decodes (PIL ``load``), else a ReviewDataError naming it."""
        from PIL import Image

        for e in entities:
            for p in e.photos:
                try:
                    with Image.open(p) as im:
                        im.load()
                except (OSError, ValueError) as err:
                    raise ReviewDataError(f"{self.folders[e.dataset] / 'images.parquet'}: entity {e.entity_id!r}: path: "
                                          f"{p} does not decode as an image ({err})") from None

    # ---- views
    @property
    def train(self) -> list[Entity]:
        return self._train

    @property
    def val(self) -> list[Entity]:
        return self._val

    def tokenizer_texts(self) -> list[str]:
        """The texts the BPE tokenizer is trained on: the reviews of the training entities, nothing else."""
        return [r for e in self._train for r in e.reviews]

    def eval_entities(self, split: str, dataset: str, limit: int = 0) -> list[Entity]:
        """The ``split`` entities of one dataset, in official row order, with their references (for scoring only)."""
        from data.review_schema import entity_texts

        tables = self._tables[dataset]
        by_id = {e.entity_id: e for e in self.entities if e.dataset == dataset and e.split == split}
        out = []
        for et in entity_texts(tables, split):
            e = by_id[et.entity_id]
            if not et.references:
                raise ReviewDataError(f"{self.folders[dataset] / 'references.parquet'}: entity {e.entity_id!r}: text: no "
                                      f"reference summary for a {split} entity")
            out.append(Entity(**{**e.__dict__, "references": list(et.references)}))
        return out[:limit] if limit else out

    def datasets(self) -> list[str]:
        return list(self.folders)

    def hours_strings(self) -> list[str]:
        return [e.table[c] for e in self._train if e.table for c in HOURS_COLUMNS if e.table.get(c)]


def fit_hours(strings: Sequence[str], ks: Sequence[int], coverage: float) -> HoursClusters | None:
    """The opening-hours clusters of the training tables (official K-means + silhouette, modeling.fit_hours_clusters).
    [reconstruction] with too few distinct strings for any K in ``ks`` (e.g. the synthetic set's 3 slots), every
    distinct string is its own cluster (at most 4: the encoder's one-hot)."""
    if not strings:
        return None
    try:
        return fit_hours_clusters(strings, ks=tuple(ks), coverage=coverage)
    except ValueError:
        from models.multimodalsum.modeling import hours_to_coordinate

        uniq = sorted(set(strings))
        if len(uniq) > 4:
            raise
        return HoursClusters(centers=np.asarray([hours_to_coordinate(s) for s in uniq], dtype=np.float64), scores={})


# ------------------------------------------------------------------------------------------------------ metadata
def _describe(t) -> str:
    import pyarrow as pa

    if t == pa.string():
        return "a string"
    if t == pa.bool_():
        return "a boolean (true/false)"
    if t == pa.float64():
        return "a finite number"
    if t == pa.list_(pa.string()):
        return "a list of strings"
    return "a list of lists of strings"


def _value_ok(v, t) -> bool:
    import pyarrow as pa

    if t == pa.string():
        return isinstance(v, str)
    if t == pa.bool_():
        return isinstance(v, bool)
    if t == pa.float64():
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    if t == pa.list_(pa.string()):
        return isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)
    return isinstance(v, (list, tuple)) and all(isinstance(p, (list, tuple)) and all(isinstance(x, str) for x in p) for p in v)


def check_metadata(meta: Mapping[str, Any], schema: str, where: str) -> dict[str, Any]:
    """A metadata dict (a served request, keys as the columns of ``entities.parquet``) checked for ``schema``:
    unknown keys and values of the wrong type raise ``ValueError`` naming ``where`` and the field."""
    if not isinstance(meta, Mapping):
        raise ValueError(f"{where}: field 'metadata': expected an object of table fields, got {type(meta).__name__}")
    allowed = SCHEMA_COLUMNS[schema]
    out = {}
    for key, value in meta.items():
        if key not in allowed:
            raise ValueError(f"{where}: field 'metadata.{key}': not a {schema} table field (known: {', '.join(allowed)})")
        if value is None:
            continue
        t = ENTITIES_SCHEMA.field(key).type
        if not _value_ok(value, t):
            raise ValueError(f"{where}: field 'metadata.{key}': value {value!r}; expected {_describe(t)}")
        if key in HOURS_COLUMNS and not HOURS_RE.match(value):
            raise ValueError(f"{where}: field 'metadata.{key}': value {value!r}; expected 'HH:MM-HH:MM'")
        if key == "avg_rating" and not 0 <= float(value) <= 5:
            raise ValueError(f"{where}: field 'metadata.avg_rating': value {value!r}; expected a number from 0 to 5")
        out[key] = value
    return out


# -------------------------------------------------------------------------------------------------------- images
class PhotoLoader:
    """Photos as normalised tensors; decoded RGB images are cached up to ``cache_bytes`` (every epoch reads them again;
    the synthetic set fits, a real photo collection is decoded from disk each time beyond that)."""

    def __init__(self, images_cfg, train: bool, cache_bytes: int = 256 << 20):
        from torchvision import transforms as T

        c = images_cfg
        norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        if train:
            steps = [T.RandomResizedCrop(c.size) if c.random_resized_crop else T.Compose([T.Resize(c.size), T.CenterCrop(c.size)])]
            if c.rotation:
                steps.append(T.RandomRotation(c.rotation))
            if c.hflip:
                steps.append(T.RandomHorizontalFlip())
            if any(c.color_jitter):
                b, ct, s, h = c.color_jitter
                steps.append(T.ColorJitter(brightness=b, contrast=ct, saturation=s, hue=h))
            self.transform = T.Compose([*steps, *norm])
        else:
            self.transform = T.Compose([T.Resize(c.size), T.CenterCrop(c.size), *norm])
        self.size = c.size
        self.max_per_entity = dict(c.max_per_entity)
        self._cache: dict[str, Any] = {}
        self._room = cache_bytes

    def _open(self, path: Path):
        from PIL import Image

        key = str(path)
        img = self._cache.get(key)
        if img is None:
            with Image.open(path) as im:
                img = im.convert("RGB")
            size = img.width * img.height * 3
            if size <= self._room:
                self._cache[key] = img
                self._room -= size
        return img

    def limit(self, source: str) -> int:
        return int(self.max_per_entity.get(source, 10))

    def batch(self, entities: Sequence[Entity]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, P, 3, S, S] photos + [B, P] mask; P = the largest per-source limit in the batch."""
        p = max(1, max(self.limit(e.source) for e in entities))
        images = torch.zeros(len(entities), p, 3, self.size, self.size)
        mask = torch.zeros(len(entities), p, dtype=torch.bool)
        for b, e in enumerate(entities):
            for j, path in enumerate(e.photos[: min(p, self.limit(e.source))]):
                images[b, j] = self.transform(self._open(path))
                mask[b, j] = True
        return images, mask


# ------------------------------------------------------------------------------------------------------- batches
def pad_rows(rows: Sequence[Sequence[int]], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, W] ids padded with <pad> and the [N, W] mask of the real tokens (W = width or the longest row, >= 1)."""
    w = width if width is not None else max(1, max((len(r) for r in rows), default=1))
    ids = torch.full((len(rows), w), PAD, dtype=torch.long)
    mask = torch.zeros(len(rows), w, dtype=torch.bool)
    for i, r in enumerate(rows):
        r = list(r)[:w]
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids, mask


@dataclass
class ReviewBatch:
    """A batch of entities: ``review_ids [B, R, L]`` (+ mask), ``ratings [B, R]``, photos, table."""

    review_ids: torch.Tensor
    review_mask: torch.Tensor
    ratings: torch.Tensor
    images: torch.Tensor | None
    image_mask: torch.Tensor | None
    table: TableBatch | None
    entity_ids: list[str]

    def to(self, device) -> "ReviewBatch":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return ReviewBatch(self.review_ids.to(device), self.review_mask.to(device), self.ratings.to(device),
                           mv(self.images), mv(self.image_mask), None if self.table is None else self.table.to(device),
                           self.entity_ids)


@dataclass
class PivotBatch:
    """Steps 2a / 2b: ``labels [B, L]`` (one review per row) and the row entity's photos or table."""

    labels: torch.Tensor
    images: torch.Tensor | None
    image_mask: torch.Tensor | None
    table: TableBatch | None

    def to(self, device) -> "PivotBatch":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PivotBatch(self.labels.to(device), mv(self.images), mv(self.image_mask),
                          None if self.table is None else self.table.to(device))


class Batcher:
    """Turns entities (and sampled review indices) into model batches for one run's settings."""

    def __init__(self, cfg, tokenizer: ReviewTokenizer, hours: HoursClusters | None, train: bool,
                 text_only: bool = False):
        self.cfg = cfg
        self.tok = tokenizer
        self.hours = hours
        self.photos = PhotoLoader(cfg.images, train=train) if cfg.modalities.images and not text_only else None
        self.use_table = cfg.modalities.table and not text_only

    def _table(self, entities: Sequence[Entity]) -> TableBatch | None:
        if not self.use_table:
            return None
        return build_table_batch([e.table for e in entities], self.cfg.model.table_schema, self.tok, PAD, self.hours)

    def reviews(self, entities: Sequence[Entity], picks: Sequence[Sequence[int]], max_tokens: Sequence[int],
                pad_to_max: bool, with_images: bool = True, with_table: bool = True) -> ReviewBatch:
        r = max(len(p) for p in picks)
        rows, ratings = [], torch.zeros(len(entities), r)
        for b, (e, p) in enumerate(zip(entities, picks)):
            ids = [self.tok.stripped(e.reviews[i], max_tokens[b]) for i in p]
            rows.append(ids + [[]] * (r - len(ids)))
            if e.ratings is not None:
                ratings[b, : len(p)] = torch.tensor([e.ratings[i] for i in p])
        width = max(m - 2 for m in max_tokens) if pad_to_max else None
        ids, mask = pad_rows([row for rs in rows for row in rs], width)
        ids, mask = ids.view(len(entities), r, -1), mask.view(len(entities), r, -1)
        images = image_mask = None
        if self.photos is not None and with_images:
            images, image_mask = self.photos.batch(entities)
        table = self._table(entities) if with_table else None
        return ReviewBatch(ids, mask, ratings, images, image_mask, table, [e.entity_id for e in entities])

    def loo(self, entities: Sequence[Entity], picks: Sequence[Sequence[int]]) -> ReviewBatch:
        """Steps 1 / 3: the sampled reviews at the training length."""
        c = self.cfg.data
        return self.reviews(entities, picks, [c.max_review_tokens] * len(entities), c.pad_to_max)

    def evaluation(self, entities: Sequence[Entity], with_modalities: bool = True) -> ReviewBatch:
        """Dev/test: all input reviews (position order) at the per-source test length, delta = 0."""
        c = self.cfg.data
        lengths = [c.test_review_tokens.get(e.source, c.max_review_tokens) for e in entities]
        return self.reviews(entities, [list(range(len(e.reviews))) for e in entities], lengths, pad_to_max=False,
                            with_images=with_modalities, with_table=with_modalities)

    def pivot(self, rows: Sequence[tuple[Entity, int]], modality: str) -> PivotBatch:
        c = self.cfg.data
        labels, _ = pad_rows([self.tok.stripped(e.reviews[i], c.max_review_tokens) for e, i in rows],
                             c.max_review_tokens - 2 if c.pad_to_max else None)
        ents = [e for e, _ in rows]
        if modality == "image":
            images, mask = self.photos.batch(ents)
            return PivotBatch(labels, images, mask, None)
        return PivotBatch(labels, None, None, self._table(ents))


# ------------------------------------------------------------------------------------------------------ sampling
def loo_picks(entities: Sequence[Entity], k: int, rs: np.random.RandomState | None, val_seed: int | None = None
              ) -> list[list[int]]:
    """``k`` distinct review indices per entity: from ``rs`` (training), or ``RandomState(val_seed)`` afresh per
    entity (validation; pandas ``sample(k, random_state=7)`` per group)."""
    out = []
    for e in entities:
        gen = np.random.RandomState(val_seed) if rs is None else rs
        out.append([int(i) for i in gen.choice(len(e.reviews), size=k, replace=False)])
    return out


def epoch_loo(entities: Sequence[Entity], k: int, seed: int, epoch: int) -> list[tuple[Entity, list[int]]]:
    """One training epoch of leave-one-out samples, in a shuffled entity order (both from (seed, epoch))."""
    rs = np.random.RandomState(mixed_seed(seed, epoch, 1))
    picks = loo_picks(entities, k, rs)
    order = rs.permutation(len(entities))
    return [(entities[i], picks[i]) for i in order]


def pivot_rows(entities: Sequence[Entity], per_entity: int, rs: np.random.RandomState | None,
               val_seed: int | None = None) -> list[tuple[Entity, int]]:
    rows = []
    for e in entities:
        gen = np.random.RandomState(val_seed) if rs is None else rs
        k = min(per_entity, len(e.reviews))
        rows += [(e, int(i)) for i in gen.choice(len(e.reviews), size=k, replace=False)]
    if rs is not None:
        rows = [rows[i] for i in rs.permutation(len(rows))]
    return rows


def batches(items: Sequence, batch_size: int, drop_last: bool = True) -> list[list]:
    """Consecutive batches; the official training loaders drop the last partial batch (kept when it is the only one)."""
    full = [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
    if drop_last and len(full) > 1 and len(full[-1]) < batch_size:
        full = full[:-1]
    return full


# ----------------------------------------------------------------------------------------------------- denoising
def poisson_probs(lam: float) -> np.ndarray:
    """Poisson(lam) probabilities for k = 0, 1, .. until one falls below 1e-7 (the official span distribution)."""
    ps, p, k = [], math.exp(-lam), 0
    while k < 128:
        ps.append(p)
        if p < 1e-7:
            break
        k += 1
        p = p * lam / k
    ps = np.asarray(ps)
    return ps / ps.sum()


def text_infill(tokens: Sequence[int], ratio: float, span_probs: np.ndarray, mask_id: int,
                rng: np.random.RandomState, max_len: int) -> list[int]:
    """BART text infilling as the official collator (every token a word start except the last; ``ceil((n-1) *
    ratio)`` positions covered by spans; each span becomes one ``<mask>``; zero-length spans are ``<mask>``
    insertions at random inner positions, capped at ``max_len``)."""
    toks = list(tokens)
    n = len(toks)
    if n < 2 or ratio <= 0:
        return toks
    num = math.ceil((n - 1) * ratio)
    lengths: list[int] = []
    while sum(lengths) < num:
        lengths.append(int(rng.choice(len(span_probs), p=span_probs)))
    lengths[-1] -= sum(lengths) - num
    spans = [length for length in lengths if length > 0]
    inserts = len(lengths) - len(spans)
    if spans:
        starts = rng.choice(n - 1, size=len(spans), replace=False)
        keep = [True] * n
        for s, length in zip(starts.tolist(), spans):
            toks[s] = mask_id
            for j in range(s + 1, min(s + length, n - 1)):
                keep[j] = False
        toks = [t for t, k in zip(toks, keep) if k]
    if inserts and len(toks) < max_len:
        m = min(inserts, max_len - len(toks))
        total = len(toks) + m
        where = set((rng.permutation(total - 2)[:m] + 1).tolist()) if total > 2 else set()
        it = iter(toks)
        toks = [mask_id if i in where else next(it) for i in range(total)]
    return toks[:max_len]


def permute_sentences(text: str, ratio: float, rng: np.random.RandomState) -> str:
    sents = [s for s in _SENTENCE_END.split(text.strip()) if s]
    n = len(sents)
    if n < 2 or ratio <= 0:
        return text
    k = math.ceil(n * ratio)
    subs = rng.permutation(n)[:k]
    order = np.arange(n)
    order[subs] = subs[rng.permutation(k)]
    return " ".join(sents[i] for i in order)


class DenoiseData:
    """Step 0: the training (or validation) reviews as chunks, noised afresh from (seed, epoch)."""

    def __init__(self, texts: Sequence[str], tok: ReviewTokenizer, cfg):
        d = cfg.data
        self.texts = [t for t in texts if len(t) >= d.min_chunk_chars and not t.isspace()]
        if not self.texts:
            raise ReviewDataError(f"{', '.join(d.folders)}: no review of at least data.min_chunk_chars characters for step 0")
        self.tok, self.block, self.cfg = tok, d.chunk_tokens, cfg.denoise
        self.labels = [tok.stripped(t, self.block + 2) for t in self.texts]
        self.span_probs = poisson_probs(cfg.denoise.poisson_lambda)

    def __len__(self) -> int:
        return len(self.texts)

    def noised(self, i: int, rng: np.random.RandomState) -> list[int]:
        text = permute_sentences(self.texts[i], self.cfg.permute_ratio, rng) if self.cfg.permute_ratio > 0 else self.texts[i]
        ids = self.tok.stripped(text, self.block + 2)
        return text_infill(ids, self.cfg.mask_ratio, self.span_probs, self.tok.mask_id, rng, self.block)

    def batch(self, index: Sequence[int], rng: np.random.RandomState, pad_to_max: bool) -> dict[str, torch.Tensor]:
        width = self.block if pad_to_max else None
        inputs, in_mask = pad_rows([self.noised(i, rng) for i in index], width)
        labels, _ = pad_rows([self.labels[i] for i in index], width)
        dec = torch.cat([torch.zeros(len(index), 1, dtype=torch.long), labels[:, :-1]], 1)  # <s> + labels shifted
        return {"input_ids": inputs, "attention_mask": in_mask, "decoder_input_ids": dec, "labels": labels}


__all__ = ["Entity", "ReviewCorpus", "Batcher", "ReviewBatch", "PivotBatch", "DenoiseData", "EOS", "PAD", "batches",
           "check_metadata", "epoch_loo", "fit_hours", "loo_picks", "pivot_rows", "text_infill", "training_files_digest"]
