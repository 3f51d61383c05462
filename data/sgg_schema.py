"""The one on-disk scene-graph (SGG) schema that every EGTR data converter writes: RelTR's COCO layout.

A dataset directory holds

* ``train.json``, ``val.json``, ``test.json`` -- COCO detection files::

      images      = [{id: int, file_name: str, height: int, width: int}, ...]
      annotations = [{id: int, image_id: int, category_id: 1..C, bbox: [x, y, w, h] (absolute pixels, floats),
                      area: w*h, iscrowd: 0, segmentation: None}, ...]
      categories  = [{id: 0, name: "__background__"}, {id: 1, name: ...}, ..., {id: C, name: ...}]  (same in all 3)

* ``rel.json`` -- ``{"train": {str(image_id): [[sub_pos, obj_pos, pred_id], ...]}, "val": {...}, "test": {...},
  "rel_categories": ["__background__", pred_1, ..., pred_P]}``. ``sub_pos``/``obj_pos`` index the image's
  annotations **in pycocotools ``COCO.getAnnIds(imgIds=[image_id])`` order** (= the order of that image's
  annotations in the file, because ``COCO.createIndex`` appends them in file order) and ``pred_id`` is 1..P.
  The writer puts a key for every image (an empty list when it has no relation), as the official EGTR loader
  (naver-ai/egtr ``data/visual_genome.py``: ``self.rel[str(image_id)]``) indexes every image; a reader treats
  a missing key as "no relations".
* ``meta.json`` -- ``{"source": str, "synthetic": bool, "image_root": str | null, "box_convention": str,
  "notes": str}`` plus an optional ``"conversion"`` object of counts (what a converter dropped or fixed).
  ``image_root`` is the images folder, relative to the dataset directory or absolute (null: no images).

The 0-based views used by the model (``SGSplit.targets``) follow EGTR's loader: ``class_labels -= 1`` (the
category id 0 is the background slot) and ``indices[-1, :] -= 1`` on the predicate ("no_relation" is 0).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPLITS: tuple[str, ...] = ("train", "val", "test")
BACKGROUND = "__background__"
BBOX_TOLERANCE = 1.0  # pixels a box may stick out of its image (integer-pixel "+1" conventions)
META_KEYS: dict[str, tuple[type, ...]] = {
    "source": (str,),
    "synthetic": (bool,),
    "image_root": (str, type(None)),
    "box_convention": (str,),
    "notes": (str,),
}


class SGDataFormatError(ValueError):
    """A scene-graph dataset file is malformed; the message names the file, the image id and the field."""


# --------------------------------------------------------------------------------------------- validation


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v))


def _validate_categories(fname: str, cats: Any) -> list[str]:
    if not isinstance(cats, list) or len(cats) < 2:
        raise SGDataFormatError(f"{fname}: categories: expected a list with '{BACKGROUND}' (id 0) and at least one class")
    names: list[str] = []
    for k, c in enumerate(cats):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            raise SGDataFormatError(f"{fname}: categories[{k}]: expected {{id: int, name: str}}, got {c!r}")
        if c["id"] != k:
            raise SGDataFormatError(f"{fname}: categories[{k}].id: ids must be 0..C in order, got {c['id']}")
        names.append(c["name"])
    if names[0] != BACKGROUND:
        raise SGDataFormatError(f"{fname}: categories[0].name: must be '{BACKGROUND}', got {names[0]!r}")
    return names[1:]


def _validate_coco(fname: str, data: Any) -> tuple[list[str], dict[int, int]]:
    """Check one split file; return (category names without background, {image_id: number of annotations})."""
    if not isinstance(data, dict):
        raise SGDataFormatError(f"{fname}: top level: expected an object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise SGDataFormatError(f"{fname}: {key}: missing or not a list")
    categories = _validate_categories(fname, data["categories"])
    n_cat = len(categories)
    sizes: dict[int, tuple[int, int]] = {}
    for k, img in enumerate(data["images"]):
        iid = img.get("id") if isinstance(img, dict) else None
        where = f"{fname}: image {iid if _is_int(iid) else '?'}: images[{k}]"
        if not isinstance(img, dict):
            raise SGDataFormatError(f"{where}: expected an object, got {type(img).__name__}")
        if not _is_int(iid):
            raise SGDataFormatError(f"{where}.id: expected an int, got {iid!r}")
        if iid in sizes:
            raise SGDataFormatError(f"{where}.id: duplicate image id {iid}")
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise SGDataFormatError(f"{where}.file_name: expected a non-empty string, got {img.get('file_name')!r}")
        for dim in ("width", "height"):
            v = img.get(dim)
            if not _is_int(v) or v <= 0:
                raise SGDataFormatError(f"{where}.{dim}: expected a positive int, got {v!r}")
        sizes[int(iid)] = (int(img["width"]), int(img["height"]))
    counts = {iid: 0 for iid in sizes}
    ann_ids: set[int] = set()
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise SGDataFormatError(f"{fname}: image ?: annotations[{k}]: expected an object, got {type(ann).__name__}")
        iid = ann.get("image_id")
        where = f"{fname}: image {iid if _is_int(iid) else '?'}: annotations[{k}]"
        if not _is_int(iid):
            raise SGDataFormatError(f"{where}.image_id: expected an int, got {iid!r}")
        if iid not in sizes:
            raise SGDataFormatError(f"{where}.image_id: image {iid} is not in images")
        aid = ann.get("id")
        if not _is_int(aid):
            raise SGDataFormatError(f"{where}.id: expected an int, got {aid!r}")
        if aid in ann_ids:
            raise SGDataFormatError(f"{where}.id: duplicate annotation id {aid}")
        ann_ids.add(int(aid))
        cid = ann.get("category_id")
        if not _is_int(cid) or not 1 <= cid <= n_cat:
            raise SGDataFormatError(f"{where}.category_id: {cid!r} is not a category id 1..{n_cat}")
        box = ann.get("bbox")
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
            raise SGDataFormatError(f"{where}.bbox: expected 4 finite numbers [x, y, w, h], got {box!r}")
        x, y, w, h = (float(v) for v in box)
        W, H = sizes[iid]
        if w <= 0:
            raise SGDataFormatError(f"{where}.bbox: width must be > 0 (got {w})")
        if h <= 0:
            raise SGDataFormatError(f"{where}.bbox: height must be > 0 (got {h})")
        if x < -BBOX_TOLERANCE or y < -BBOX_TOLERANCE:
            raise SGDataFormatError(f"{where}.bbox: top-left ({x}, {y}) is outside the image")
        if x + w > W + BBOX_TOLERANCE or y + h > H + BBOX_TOLERANCE:
            raise SGDataFormatError(
                f"{where}.bbox: box [{x}, {y}, {w}, {h}] ends at ({x + w}, {y + h}), outside the {W}x{H} image"
            )
        if not _is_number(ann.get("area")):
            raise SGDataFormatError(f"{where}.area: expected a number, got {ann.get('area')!r}")
        if ann.get("iscrowd") not in (0, 1) or isinstance(ann.get("iscrowd"), bool):
            raise SGDataFormatError(f"{where}.iscrowd: expected 0 or 1, got {ann.get('iscrowd')!r}")
        counts[iid] += 1
    return categories, counts


def _validate_rel(rel: Any, counts: dict[str, dict[int, int]]) -> list[str]:
    fname = "rel.json"
    if not isinstance(rel, dict):
        raise SGDataFormatError(f"{fname}: top level: expected an object with {', '.join(SPLITS)}, rel_categories")
    rc = rel.get("rel_categories")
    if not isinstance(rc, list) or len(rc) < 2 or not all(isinstance(n, str) for n in rc):
        raise SGDataFormatError(f"{fname}: rel_categories: expected a list of names with '{BACKGROUND}' first, got {rc!r}")
    if rc[0] != BACKGROUND:
        raise SGDataFormatError(f"{fname}: rel_categories[0]: must be '{BACKGROUND}', got {rc[0]!r}")
    n_pred = len(rc) - 1
    for split in SPLITS:
        per_image = rel.get(split)
        if not isinstance(per_image, dict):
            raise SGDataFormatError(f"{fname}: {split}: missing or not an object {{image_id: [[sub, obj, pred], ...]}}")
        n_anns = counts[split]
        for key, rels in per_image.items():
            try:
                iid = int(key)
            except (TypeError, ValueError):
                raise SGDataFormatError(f"{fname}: {split}: image {key!r}: key is not an image id") from None
            if iid not in n_anns or str(iid) != key:
                raise SGDataFormatError(f"{fname}: {split}: image {key}: not an image of {split}.json")
            where = f"{fname}: {split}: image {iid}"
            if not isinstance(rels, list):
                raise SGDataFormatError(f"{where}: relations: expected a list, got {type(rels).__name__}")
            m = n_anns[iid]
            for j, r in enumerate(rels):
                if not isinstance(r, (list, tuple)) or len(r) != 3 or not all(_is_int(v) for v in r):
                    raise SGDataFormatError(f"{where}: relation {j}: expected 3 ints [sub_pos, obj_pos, pred_id], got {r!r}")
                s, o, p = (int(v) for v in r)
                if not 0 <= s < m:
                    raise SGDataFormatError(f"{where}: relation {j}: subject position {s} out of range (image has {m} annotations)")
                if not 0 <= o < m:
                    raise SGDataFormatError(f"{where}: relation {j}: object position {o} out of range (image has {m} annotations)")
                if not 1 <= p <= n_pred:
                    raise SGDataFormatError(f"{where}: relation {j}: predicate id {p} out of range 1..{n_pred}")
                if s == o:
                    raise SGDataFormatError(f"{where}: relation {j}: subject and object are the same annotation ({s})")
    return rc[1:]


def _validate_meta(meta: Any) -> None:
    if not isinstance(meta, dict):
        raise SGDataFormatError("meta.json: top level: expected an object")
    for key, types in META_KEYS.items():
        if key not in meta:
            raise SGDataFormatError(f"meta.json: {key}: missing")
        if not isinstance(meta[key], types):
            raise SGDataFormatError(f"meta.json: {key}: expected {' or '.join(t.__name__ for t in types)}, got {meta[key]!r}")
    if "conversion" in meta and not isinstance(meta["conversion"], dict):
        raise SGDataFormatError(f"meta.json: conversion: expected an object, got {meta['conversion']!r}")


def validate_payload(coco: dict[str, Any], rel: Any, meta: Any) -> None:
    """Validate in-memory contents (``coco[split]`` = a split file's object); raise ``SGDataFormatError``."""
    counts: dict[str, dict[int, int]] = {}
    first: list[str] | None = None
    for split in SPLITS:
        if split not in coco:
            raise SGDataFormatError(f"{split}.json: missing")
        cats, counts[split] = _validate_coco(f"{split}.json", coco[split])
        if first is None:
            first = cats
        elif cats != first:
            raise SGDataFormatError(f"{split}.json: categories: differ from train.json's")
    _validate_rel(rel, counts)
    _validate_meta(meta)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise SGDataFormatError(f"{path.name}: missing in {path.parent}")
    try:
        with path.open() as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise SGDataFormatError(f"{path.name}: not valid JSON ({err})") from None


def validate_dataset(dataset_dir: str | Path) -> None:
    """Read ``{train,val,test}.json``, ``rel.json``, ``meta.json`` of ``dataset_dir`` and check the schema above.

    Checks: required keys and types; unique image ids and annotation ids per split file; annotation image ids
    exist; ``category_id`` in 1..C; bbox = 4 finite numbers, w > 0, h > 0, inside the image up to
    ``BBOX_TOLERANCE`` pixels; identical category lists; ``rel.json`` has the three splits and
    ``rel_categories`` (background first); every key an image id of that split; every relation 3 ints with
    positions inside that image's annotations (getAnnIds order), pred_id in 1..P and subject != object.
    Raises ``SGDataFormatError`` on the first problem.
    """
    d = Path(dataset_dir)
    coco = {split: _read_json(d / f"{split}.json") for split in SPLITS}
    validate_payload(coco, _read_json(d / "rel.json"), _read_json(d / "meta.json"))


# ------------------------------------------------------------------------------------------------ writing


def _normalise_split(split: str, part: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    if not isinstance(part, dict) or not isinstance(part.get("images"), list) or not isinstance(part.get("annotations"), list):
        raise SGDataFormatError(f"{split}.json: top level: splits['{split}'] must be {{'images': [...], 'annotations': [...]}}")
    images = []
    for k, img in enumerate(part["images"]):
        img = dict(img)
        if "id" not in img:
            img["id"] = k + 1
        images.append(img)
    anns = []
    for k, ann in enumerate(part["annotations"]):
        ann = dict(ann)
        if "id" not in ann:
            ann["id"] = k + 1
        box = ann.get("bbox")
        if isinstance(box, (list, tuple, np.ndarray)) and len(box) == 4 and all(_is_number(v) for v in box):
            ann["bbox"] = [float(v) for v in box]
            ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
        if _is_int(ann.get("category_id")):
            ann["category_id"] = int(ann["category_id"])
        if _is_int(ann.get("image_id")):
            ann["image_id"] = int(ann["image_id"])
        ann.setdefault("iscrowd", 0)
        ann.setdefault("segmentation", None)
        anns.append(ann)
    return {"images": images, "annotations": anns}


def _as_int_list(r: Any) -> Any:
    """A relation as a plain list of ints when it is a sequence of ints (numpy included), else unchanged."""
    if isinstance(r, (list, tuple, np.ndarray)) and all(_is_int(v) for v in r):
        return [int(v) for v in r]
    return r


def write_dataset_into(
    tmp_dir: str | Path,
    splits: dict[str, dict[str, Any]],
    rels: dict[str, dict[Any, list[list[int]]]],
    categories: list[str],
    predicates: list[str],
    meta: dict[str, Any],
) -> Path:
    """Validate, then write the five JSON files into the existing directory ``tmp_dir`` (no atomic wrapper).

    ``splits[name] = {"images": [...], "annotations": [...]}``; missing image/annotation ids are assigned
    1.. in list order, missing ``area``/``iscrowd``/``segmentation`` become ``w*h``/0/None. ``rels[name]`` maps
    image id (int or str) to ``[[sub_pos, obj_pos, pred_id], ...]`` (pred_id 1..P). ``categories`` and
    ``predicates`` are the names without background; they are written with ``__background__`` at id/index 0.
    """
    out = Path(tmp_dir)
    if set(splits) != set(SPLITS):
        raise SGDataFormatError(f"splits: expected exactly {list(SPLITS)}, got {sorted(splits)}")
    cat_list = [{"id": 0, "name": BACKGROUND}] + [{"id": i, "name": n} for i, n in enumerate(categories, 1)]
    coco: dict[str, Any] = {}
    rel: dict[str, Any] = {"rel_categories": [BACKGROUND, *predicates]}
    for split in SPLITS:
        part = _normalise_split(split, splits[split])
        coco[split] = {**part, "categories": cat_list}
        given = rels.get(split, {}) or {}
        by_key = {str(k): [_as_int_list(r) for r in rs] if isinstance(rs, (list, tuple, np.ndarray)) else rs
                  for k, rs in given.items()}
        split_rel = {}
        for img in part["images"]:
            split_rel[str(img.get("id"))] = by_key.pop(str(img.get("id")), [])
        split_rel.update(by_key)  # leftovers are not images of the split: validation names them
        rel[split] = split_rel
    validate_payload(coco, rel, meta)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with (out / f"{split}.json").open("w") as f:
            json.dump(coco[split], f, separators=(",", ":"))
    with (out / "rel.json").open("w") as f:
        json.dump(rel, f, separators=(",", ":"))
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def write_dataset(
    out_dir: str | Path,
    splits: dict[str, dict[str, Any]],
    rels: dict[str, dict[Any, list[list[int]]]],
    categories: list[str],
    predicates: list[str],
    meta: dict[str, Any],
) -> Path:
    """``write_dataset_into`` inside ``data.atomic.atomic_directory(out_dir)``: ``out_dir`` is replaced only when
    everything validated and was written; on any error the previous ``out_dir`` is left as it was."""
    from data.atomic import atomic_directory

    with atomic_directory(out_dir) as tmp:
        write_dataset_into(tmp, splits, rels, categories, predicates, meta)
    return Path(out_dir)


# ------------------------------------------------------------------------------------------------ reading


@dataclass
class SGSplit:
    """One split read back with pycocotools; predicates and labels are 0-based in ``rels``/``targets``."""

    coco: Any
    image_ids: list[int]
    categories: list[str]
    predicates: list[str]
    image_root: Path | None
    rels: dict[int, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_info(self, image_id: int) -> dict[str, Any]:
        return self.coco.imgs[image_id]

    def image_path(self, image_id: int) -> Path | None:
        return None if self.image_root is None else self.image_root / self.coco.imgs[image_id]["file_name"]

    def targets(self, image_id: int) -> dict[str, np.ndarray]:
        """``boxes_xywh`` float32 [M, 4] (absolute pixels), ``labels`` int64 [M] (category_id - 1), ``rels`` int64
        [R, 3] of [sub_pos, obj_pos, pred_id - 1]; annotations in ``getAnnIds`` order, which the positions index."""
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id]))
        boxes = np.asarray([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray([a["category_id"] - 1 for a in anns], dtype=np.int64)
        return {"boxes_xywh": boxes, "labels": labels, "rels": self.rels[image_id].copy()}


def load_split(dataset_dir: str | Path, split: str) -> SGSplit:
    """Read one split of a dataset directory (not validated here: run ``validate_dataset`` once after writing)."""
    from pycocotools.coco import COCO

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    d = Path(dataset_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(d / f"{split}.json"))
    rel = _read_json(d / "rel.json")
    meta = _read_json(d / "meta.json")
    root = meta.get("image_root")
    image_root = None if root is None else (Path(root) if Path(root).is_absolute() else d / root)
    cats = sorted(coco.dataset["categories"], key=lambda c: c["id"])
    image_ids = sorted(coco.getImgIds())
    per_image = rel[split]
    rels = {}
    for iid in image_ids:
        arr = np.asarray(per_image.get(str(iid), []), dtype=np.int64).reshape(-1, 3)
        arr[:, 2] -= 1
        rels[iid] = arr
    return SGSplit(
        coco=coco,
        image_ids=image_ids,
        categories=[c["name"] for c in cats if c["id"] != 0],
        predicates=list(rel["rel_categories"][1:]),
        image_root=image_root,
        rels=rels,
    )


def dataset_stats(dataset_dir: str | Path) -> dict[str, Any]:
    """Per split and in total: images, objects, relations, images_with_relations, per_predicate {name: count};
    plus num_categories and num_predicates. Plain ints and strings (JSON-serialisable)."""
    d = Path(dataset_dir)
    rel = _read_json(d / "rel.json")
    predicates = list(rel["rel_categories"][1:])
    out: dict[str, Any] = {}
    total = {"images": 0, "objects": 0, "relations": 0, "images_with_relations": 0, "per_predicate": dict.fromkeys(predicates, 0)}
    num_categories = 0
    for split in SPLITS:
        data = _read_json(d / f"{split}.json")
        num_categories = len(data["categories"]) - 1
        per_pred = dict.fromkeys(predicates, 0)
        n_rel = n_with = 0
        ids = {img["id"] for img in data["images"]}
        for key, rs in rel[split].items():
            if int(key) not in ids:
                continue
            n_rel += len(rs)
            n_with += bool(rs)
            for r in rs:
                per_pred[predicates[r[2] - 1]] += 1
        st = {"images": len(data["images"]), "objects": len(data["annotations"]), "relations": n_rel,
              "images_with_relations": n_with, "per_predicate": per_pred}
        out[split] = st
        for k in ("images", "objects", "relations", "images_with_relations"):
            total[k] += st[k]
        for name, c in per_pred.items():
            total["per_predicate"][name] += c
    out["total"] = total
    out["num_categories"] = num_categories
    out["num_predicates"] = len(predicates)
    return out
