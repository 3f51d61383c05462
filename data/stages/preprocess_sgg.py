"""DVC stage ``preprocess_sgg``: scene-graph sources -> the one EGTR dataset layout (``data/sgg_schema.py``).

Every converter writes one dataset directory through ``data.sgg_schema.write_dataset`` (validated, then
renamed into place atomically): ``{train,val,test}.json`` (COCO, category ids 1..C, bbox xywh pixels),
``rel.json`` (``[sub_pos, obj_pos, pred_id]``, positions in ``getAnnIds`` order, pred ids 1..P) and
``meta.json`` (source, box convention, what was dropped or fixed, in ``notes`` and the ``conversion`` counts).

Sources:

* ``vg150_h5``   Neural-Motifs / Scene-Graph-Benchmark ``VG-SGG-with-attri.h5`` + ``image_data.json`` +
                 ``VG-SGG-dicts-with-attri.json`` (``--raw`` holds the three files).
* ``reltr``      RelTR's ready-made COCO files ``train/val/test.json`` + ``rel.json`` (``--raw`` holds them).
* ``openimages`` PySGG Open Images V6 layout: ``annotations/vrd-{train,val,test}-anno.json`` +
                 ``categories_dict.json`` (in ``--raw`` or ``--raw/annotations``).
* ``vrd``        Lu et al. 2016 VRD ``json_dataset`` (``annotations_{train,test}.json``, ``objects.txt``,
                 ``predicates.txt``, ``{train,test}_image_metadata.json``; ``--raw`` = the mirror's ``vrd/``).
* ``vrd_sample`` the 61 real VRD test images of the mirror (``sample_images/``) as train = val = test.
* ``synthetic``  SYNTHETIC shapes with programmatic relations (:mod:`data.synthetic_scenes`), arguments from the
                 ``data.preprocess_sgg.synthetic`` section of ``--params``; for CI and the CPU learning benchmark.

Usage::

    python -m data.stages.preprocess_sgg --source vrd --raw data/raw/vrd --out data/processed/sgg/vrd \\
        --metrics metrics/sgg_vrd_data.json [--val-images 500]
    python -m data.stages.preprocess_sgg --validate data/processed/sgg/vrd
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from data.atomic import atomic_directory
from data.config import StrictConfig, validate
from data.sgg_schema import SGDataFormatError, SPLITS, dataset_stats, validate_dataset, write_dataset, write_dataset_into

BOX_SCALE = 1024  # Neural-Motifs / SGB: boxes_1024 are stored at this longest-side scale
VG_CORRUPTED_IMAGE_IDS = (1592, 1722, 4616, 4617)  # SGB load_image_filenames: in image_data.json, not in the h5
OI_MAX_BOXES_TRAIN = 200  # EGTR trains Open Images with 200 object queries; larger train images are dropped
VRD_BOX_ORDER = "[ymin, ymax, xmin, xmax]"


class _SplitBuilder:
    """Collects images, annotations (in relation-position order) and relations for one split."""

    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.rels: dict[str, list[list[int]]] = {}

    def add(self, image: dict[str, Any], objects: list[tuple[int, list[float]]], rels: list[list[int]]) -> None:
        """``objects`` = [(category_id 1..C, [x, y, w, h])] in position order; ``rels`` = [[sub, obj, pred 1..P]]."""
        self.images.append(image)
        for cid, box in objects:
            self.annotations.append({"id": len(self.annotations) + 1, "image_id": image["id"], "category_id": int(cid),
                                     "bbox": [float(v) for v in box]})
        self.rels[str(image["id"])] = [[int(s), int(o), int(p)] for s, o, p in rels]

    def split(self) -> dict[str, list[dict[str, Any]]]:
        return {"images": self.images, "annotations": self.annotations}

    @property
    def n_relations(self) -> int:
        return sum(len(r) for r in self.rels.values())


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    with path.open() as f:
        return json.load(f)


def _read_names(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _jpeg_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header (PIL reads no pixel data for this)."""
    from PIL import Image

    with Image.open(path) as im:
        return int(im.size[0]), int(im.size[1])


# ----------------------------------------------------------------------------------------------- VG150 h5


def convert_vg150_h5(
    h5_path: str | Path,
    image_data_json: str | Path,
    dicts_json: str | Path,
    out_dir: str | Path,
    val_images: int = 5000,
    max_images: int | None = None,
    image_root: str | None = None,
    synthetic: bool = False,
    filter_empty_rels: bool = True,
) -> None:
    """Neural-Motifs ``VG-SGG-with-attri.h5`` (the VG150 split of Xu et al. 2017) -> the EGTR layout.

    Conventions of Scene-Graph-Benchmark ``maskrcnn_benchmark/data/datasets/visual_genome.py`` (``load_graphs``,
    ``load_image_filenames``, ``get_groundtruth``), identical in Neural-Motifs ``dataloaders/visual_genome.py``:

    * ``boxes_1024`` rows are **(cx, cy, w, h)** at BOX_SCALE 1024 (``# cx,cy,w,h`` ... ``convert from xc, yc,
      w, h to x1, y1, x2, y2``: x1 = cx - w/2, x2 = x1 + w), recovered to pixels by ``* max(W, H) / 1024``.
      Here: xyxy as above, rescaled, clipped to [0, W] x [0, H], then xywh with w = x2 - x1, h = y2 - y1.
    * ``image_data.json`` has 108,077 entries, the h5 108,073 images: the four corrupted VG images
      (ids 1592, 1722, 4616, 4617) are skipped to align them (only when the lengths differ by exactly those).
    * split: h5 ``split == 2`` -> test; ``split == 0`` -> train, of which the FIRST ``val_images`` (after
      dropping images without boxes and, by default, without relations) are val (``image_index[:num_val_im]``),
      the rest train: the standard 57,723 / 5,000 / 26,446 images.
    * images without any box (``img_to_first_box < 0``) are dropped; so are images without relations
      (``img_to_first_rel < 0``) on every split, as SGB / Neural-Motifs ``filter_empty_rels=True`` (the default
      of both; ``filter_empty_rels=False`` keeps them). Labels 1..150 and predicates 1..50 are the schema ids.
    * a relation whose subject and object are the same box is dropped (counted in meta).

    ``max_images`` keeps only the first N images of each split (tiny runs). file_name = ``{image_id}.jpg``.
    """
    import h5py

    h5_path, image_data_json, dicts_json = Path(h5_path), Path(image_data_json), Path(dicts_json)
    info = _read_json(dicts_json)
    idx_to_label, idx_to_pred = info["idx_to_label"], info["idx_to_predicate"]
    categories = [idx_to_label[str(i)] for i in range(1, len(idx_to_label) + 1)]
    predicates = [idx_to_pred[str(i)] for i in range(1, len(idx_to_pred) + 1)]
    image_data = _read_json(image_data_json)
    h5name = h5_path.name
    with h5py.File(h5_path, "r") as h5:
        split = h5["split"][:]
        first_box, last_box = h5["img_to_first_box"][:], h5["img_to_last_box"][:]
        first_rel, last_rel = h5["img_to_first_rel"][:], h5["img_to_last_rel"][:]
        labels = h5["labels"][:, 0]
        boxes = h5[f"boxes_{BOX_SCALE}"][:].astype(np.float64)
        relationships = h5["relationships"][:]
        rel_preds = h5["predicates"][:, 0]
    n_img = len(split)
    removed_corrupted = 0
    if len(image_data) != n_img:
        kept = [d for d in image_data if int(d["image_id"]) not in VG_CORRUPTED_IMAGE_IDS]
        removed_corrupted = len(image_data) - len(kept)
        if len(kept) != n_img:
            raise SGDataFormatError(f"{image_data_json.name}: {len(image_data)} entries ({len(kept)} without the corrupted "
                                    f"VG images {VG_CORRUPTED_IMAGE_IDS}) do not align with the {n_img} images of {h5name}")
        image_data = kept
    n_box = len(labels)
    if boxes.shape != (n_box, 4):
        raise SGDataFormatError(f"{h5name}: boxes_{BOX_SCALE}: shape {boxes.shape}, expected ({n_box}, 4) like labels")
    if (boxes[:, 2:] <= 0).any():
        bad = int(np.where((boxes[:, 2:] <= 0).any(1))[0][0])
        raise SGDataFormatError(f"{h5name}: box {bad}: boxes_{BOX_SCALE}: w and h must be > 0 (got {boxes[bad].tolist()})")

    has_box = first_box >= 0
    # SGB/Motifs load_graphs(filter_empty_rels=True) on every split, before the val images are taken
    keep = has_box & (first_rel >= 0) if filter_empty_rels else has_box
    train_idx = np.where((split == 0) & keep)[0]
    test_idx = np.where((split == 2) & keep)[0]
    order = {"train": train_idx[val_images:], "val": train_idx[:val_images], "test": test_idx}
    if max_images is not None:
        order = {k: v[:max_images] for k, v in order.items()}
    counts: dict[str, Any] = {
        "h5_images": int(n_img),
        "dropped_images_without_boxes": {"train_val": int(((split == 0) & ~has_box).sum()), "test": int(((split == 2) & ~has_box).sum())},
        "dropped_images_without_relations": {"train_val": int(((split == 0) & has_box & ~keep).sum()),
                                             "test": int(((split == 2) & has_box & ~keep).sum())},
        "ignored_images_other_split_values": int((~np.isin(split, (0, 2))).sum()),
        "removed_corrupted_image_data_entries": removed_corrupted,
        "dropped_self_relations": {}, "clipped_boxes": {},
    }
    builders: dict[str, _SplitBuilder] = {}
    for name in SPLITS:
        b = _SplitBuilder()
        n_self = n_clip = 0
        for i in order[name]:
            i = int(i)
            img = image_data[i]
            iid, W, H = int(img["image_id"]), int(img["width"]), int(img["height"])
            fb, lb = int(first_box[i]), int(last_box[i])
            if not 0 <= fb <= lb < n_box:
                raise SGDataFormatError(f"{h5name}: image {iid}: img_to_first_box/img_to_last_box: bad range {fb}..{lb} ({n_box} boxes)")
            c = boxes[fb:lb + 1]
            xyxy = np.concatenate([c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2], axis=1) * (max(W, H) / BOX_SCALE)
            clipped = np.clip(xyxy, 0, [W, H, W, H])
            n_clip += int((clipped != xyxy).any(1).sum())
            wh = clipped[:, 2:] - clipped[:, :2]
            if (wh <= 0).any():
                k = int(np.where((wh <= 0).any(1))[0][0])
                raise SGDataFormatError(f"{h5name}: image {iid}: box {fb + k}: boxes_{BOX_SCALE}: empty after rescaling and "
                                        f"clipping to the {W}x{H} image ({c[k].tolist()})")
            objs = [(int(labels[fb + k]), [clipped[k, 0], clipped[k, 1], wh[k, 0], wh[k, 1]]) for k in range(len(c))]
            rels = []
            fr, lr = int(first_rel[i]), int(last_rel[i])
            if fr >= 0:
                for r in range(fr, lr + 1):
                    s, o = int(relationships[r, 0]) - fb, int(relationships[r, 1]) - fb
                    if not (0 <= s < len(c) and 0 <= o < len(c)):
                        raise SGDataFormatError(f"{h5name}: image {iid}: relationships[{r}]: box indices {relationships[r].tolist()} "
                                                f"outside the image's boxes {fb}..{lb}")
                    if s == o:
                        n_self += 1
                        continue
                    rels.append([s, o, int(rel_preds[r])])
            b.add({"id": iid, "file_name": f"{iid}.jpg", "width": W, "height": H}, objs, rels)
        builders[name] = b
        counts["dropped_self_relations"][name] = n_self
        counts["clipped_boxes"][name] = n_clip
    meta = {
        "source": f"vg150_h5 ({h5name}, {image_data_json.name}, {dicts_json.name})",
        "synthetic": synthetic,
        "image_root": image_root,
        "box_convention": ("h5 boxes_1024 are (cx, cy, w, h) at longest side 1024 (SGB/Neural-Motifs load_graphs); "
                           "xyxy = (cx - w/2, cy - h/2, cx + w/2, cy + h/2) * max(W, H)/1024, clipped to [0,W]x[0,H]; "
                           "xywh with w = x2 - x1, h = y2 - y1 (no +1)"),
        "notes": (f"split: h5 split 2 -> test; split 0 -> the first {val_images} kept images are val, the rest "
                  f"train (SGB num_val_im); max_images={max_images}. Images without boxes dropped "
                  f"{counts['dropped_images_without_boxes']}; images without relations "
                  f"{'dropped ' + str(counts['dropped_images_without_relations']) if filter_empty_rels else 'kept'} "
                  f"(filter_empty_rels={filter_empty_rels}). Self-relations dropped "
                  f"{counts['dropped_self_relations']}; boxes clipped {counts['clipped_boxes']}; corrupted image_data "
                  f"entries removed {removed_corrupted}. Duplicate relations are kept (SGB filters them at train time)."),
        "conversion": counts,
    }
    write_dataset(out_dir, {k: b.split() for k, b in builders.items()}, {k: b.rels for k, b in builders.items()},
                  categories, predicates, meta)


# ---------------------------------------------------------------------------------------------- RelTR json


def import_reltr(src_dir: str | Path, out_dir: str | Path, image_root: str | None = None) -> None:
    """RelTR's COCO-format VG150 (``train/val/test.json`` + ``rel.json``) -> the same layout, validated, + meta.

    RelTR (yrcong/RelTR) and EGTR (naver-ai/egtr ``data/visual_genome.py``) read these files as they are:
    category ids 1..C (``class_labels -= 1``), ``rel_categories[0]`` is the background/"no relation" slot and
    pred ids are 1..P (``indices[-1, :] -= 1``). A categories list with or without an id-0 entry is accepted;
    written back with ``__background__`` at id 0. Image and annotation order are kept (positions refer to it);
    ``area`` is rewritten as w*h, ``iscrowd`` 0, ``segmentation`` None.
    """
    src = Path(src_dir)
    data = {name: _read_json(src / f"{name}.json") for name in SPLITS}
    rel = _read_json(src / "rel.json")
    cats = sorted(data["train"]["categories"], key=lambda c: c["id"])
    real = [c for c in cats if c["id"] != 0]
    if [c["id"] for c in real] != list(range(1, len(real) + 1)):
        raise SGDataFormatError(f"train.json: categories: ids must be 1..C (with or without an id-0 background), got "
                                f"{[c['id'] for c in cats][:5]}...")
    categories = [c["name"] for c in real]
    for name in SPLITS[1:]:
        other = [c["name"] for c in sorted(data[name]["categories"], key=lambda c: c["id"]) if c["id"] != 0]
        if other != categories:
            raise SGDataFormatError(f"{name}.json: categories: differ from train.json's")
    rc = rel.get("rel_categories")
    if not isinstance(rc, list) or not rc:
        raise SGDataFormatError("rel.json: rel_categories: missing")
    if rc[0] not in ("__background__", "no_relation", "__no_relation__"):
        raise SGDataFormatError(f"rel.json: rel_categories[0]: expected the background slot ('__background__'), got "
                                f"{rc[0]!r}: pred ids are indices into this list, so a list without it is ambiguous")
    splits = {}
    for name in SPLITS:
        images = [{k: img[k] for k in ("id", "file_name", "height", "width") if k in img} for img in data[name]["images"]]
        anns = [{k: a[k] for k in ("id", "image_id", "category_id", "bbox") if k in a} for a in data[name]["annotations"]]
        splits[name] = {"images": images, "annotations": anns}
    rels = {name: rel.get(name, {}) for name in SPLITS}
    meta = {
        "source": f"reltr ({src})",
        "synthetic": False,
        "image_root": image_root,
        "box_convention": "RelTR COCO json: bbox [x, y, w, h] in pixels, taken as is",
        "notes": "imported from RelTR's ready-made COCO-format files; image/annotation order kept; area := w*h",
    }
    write_dataset(out_dir, splits, rels, categories, rc[1:], meta)


# -------------------------------------------------------------------------------------------- Open Images


def convert_openimages(
    anno_dir: str | Path,
    categories_json: str | Path,
    out_dir: str | Path,
    image_root: str | None = None,
    max_boxes_train: int = OI_MAX_BOXES_TRAIN,
    dedup_splits: tuple[str, ...] = ("train",),
    synthetic: bool = False,
) -> None:
    """PySGG Open Images V6 (``vrd-{split}-anno.json`` + ``categories_dict.json``) -> the EGTR layout.

    Conventions of naver-ai/egtr ``data/open_image.py`` (from Structured-Sparse-RCNN / PySGG):

    * entry = ``{img_fn, img_size: [w, h], bbox: [[x1, y1, x2, y2]], det_labels, rel: [[sub, obj, pred]]}``,
      labels and predicates 0-based; here category id = label + 1 and pred id = pred + 1 (the schema keeps 0
      for background; PySGG's own loader adds the same +1).
    * bbox -> ``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]`` (EGTR ``convert_to_coco_format``; RelTR omits the +1); a
      box that then ends past the image edge is clipped to it (counted).
    * train: images with more than ``max_boxes_train`` boxes are dropped (EGTR: ``len(bbox) <=
      num_object_queries``) and exact duplicate (sub, obj, pred) triplets are removed (``filter_duplicate_rels``,
      train only in EGTR/PySGG; ``dedup_splits`` chooses). Self-relations (sub == obj) are dropped everywhere.
    * image id = the entry's position in its file (0-based, as EGTR's ``image_id: index``); file_name =
      ``img_fn + ".jpg"``.
    """
    anno_dir, categories_json = Path(anno_dir), Path(categories_json)
    cat_info = _read_json(categories_json)
    categories, predicates = list(cat_info["obj"]), list(cat_info["rel"])
    builders: dict[str, _SplitBuilder] = {}
    counts: dict[str, Any] = {"dropped_images_too_many_boxes": {}, "dropped_duplicate_relations": {},
                              "dropped_self_relations": {}, "clipped_boxes": {}}
    for name in SPLITS:
        fname = f"vrd-{name}-anno.json"
        entries = _read_json(anno_dir / fname)
        b = _SplitBuilder()
        n_big = n_dup = n_self = n_clip = 0
        for idx, e in enumerate(entries):
            where = f"{fname}: image {idx}"
            try:
                W, H = (int(v) for v in e["img_size"][:2])
                bboxes, det, rel_raw, img_fn = e["bbox"], e["det_labels"], e["rel"], e["img_fn"]
            except (KeyError, TypeError, ValueError) as err:
                raise SGDataFormatError(f"{where}: img_fn/img_size/bbox/det_labels/rel: malformed entry ({err!r})") from None
            if len(bboxes) != len(det):
                raise SGDataFormatError(f"{where}: det_labels: {len(det)} labels for {len(bboxes)} boxes")
            if name == "train" and len(bboxes) > max_boxes_train:
                n_big += 1
                continue
            objs = []
            for k, (box, lab) in enumerate(zip(bboxes, det)):
                if not 0 <= int(lab) < len(categories):
                    raise SGDataFormatError(f"{where}: det_labels[{k}]: {lab} outside 0..{len(categories) - 1}")
                x1, y1, x2, y2 = (float(v) for v in box)
                w, h = x2 - x1 + 1, y2 - y1 + 1
                if x1 + w > W or y1 + h > H:
                    n_clip += 1
                    w, h = min(w, W - x1), min(h, H - y1)
                if w <= 0 or h <= 0:
                    raise SGDataFormatError(f"{where}: bbox[{k}]: empty box {box} in a {W}x{H} image")
                objs.append((int(lab) + 1, [x1, y1, w, h]))
            rels, seen = [], set()
            for j, r in enumerate(rel_raw):
                s, o, p = (int(v) for v in r)
                if not (0 <= s < len(objs) and 0 <= o < len(objs) and 0 <= p < len(predicates)):
                    raise SGDataFormatError(f"{where}: rel[{j}]: {r} outside {len(objs)} boxes / {len(predicates)} predicates")
                if s == o:
                    n_self += 1
                    continue
                if name in dedup_splits:
                    if (s, o, p) in seen:
                        n_dup += 1
                        continue
                    seen.add((s, o, p))
                rels.append([s, o, p + 1])
            b.add({"id": idx, "file_name": f"{img_fn}.jpg", "width": W, "height": H}, objs, rels)
        builders[name] = b
        counts["dropped_images_too_many_boxes"][name] = n_big
        counts["dropped_duplicate_relations"][name] = n_dup
        counts["dropped_self_relations"][name] = n_self
        counts["clipped_boxes"][name] = n_clip
    meta = {
        "source": f"openimages_v6 PySGG layout ({anno_dir})",
        "synthetic": synthetic,
        "image_root": image_root,
        "box_convention": ("PySGG xyxy -> [x1, y1, x2 - x1 + 1, y2 - y1 + 1] (EGTR data/open_image.py; RelTR has no +1), "
                           "clipped to the image where the +1 passes its edge"),
        "notes": (f"category id = det_label + 1, pred id = pred + 1 (0 = background in this schema); image id = position in "
                  f"vrd-<split>-anno.json (0-based). Train images with > {max_boxes_train} boxes dropped "
                  f"{counts['dropped_images_too_many_boxes']['train']}; exact duplicate triplets removed in {list(dedup_splits)}: "
                  f"{counts['dropped_duplicate_relations']}; self-relations dropped {counts['dropped_self_relations']}; "
                  f"boxes clipped {counts['clipped_boxes']}."),
        "conversion": counts,
    }
    write_dataset(out_dir, {k: b.split() for k, b in builders.items()}, {k: b.rels for k, b in builders.items()},
                  categories, predicates, meta)


# ----------------------------------------------------------------------------------------------------- VRD


def _vrd_size(fname: str, metadata: dict[str, Any], meta_file: str, vrd_dir: Path) -> tuple[int, int]:
    m = metadata.get(fname)
    if m is not None:
        return int(m["width"]), int(m["height"])
    jpg = vrd_dir / "sample_images" / fname
    if jpg.is_file():
        return _jpeg_size(jpg)
    raise SGDataFormatError(f"{meta_file}: image {fname}: width/height: no metadata entry and no sample_images/{fname} "
                            "to read the size from")


def _vrd_graph(fname: str, rels_raw: Any, ann_file: str, n_cat: int, n_pred: int
               ) -> tuple[list[tuple[int, list[float]]], list[list[int]], int]:
    """One VRD image -> (objects [(category_id, xywh)], relations [[sub, obj, pred_id]], dropped self-relations).

    Objects are the unique (category, bbox) pairs in first-appearance order (subject before object)."""
    if not isinstance(rels_raw, list):
        raise SGDataFormatError(f"{ann_file}: image {fname}: relations: expected a list")
    index: dict[tuple[int, tuple[int, ...]], int] = {}
    objs: list[tuple[int, list[float]]] = []
    rels: list[list[int]] = []
    n_self = 0

    def obj_pos(o: Any, j: int, role: str) -> int:
        try:
            cat, bbox = int(o["category"]), tuple(int(v) for v in o["bbox"])
        except (KeyError, TypeError, ValueError):
            raise SGDataFormatError(f"{ann_file}: image {fname}: relation {j}: {role}: expected {{category, bbox}}, got {o!r}") from None
        if not 0 <= cat < n_cat:
            raise SGDataFormatError(f"{ann_file}: image {fname}: relation {j}: {role}.category: {cat} outside 0..{n_cat - 1}")
        if len(bbox) != 4:
            raise SGDataFormatError(f"{ann_file}: image {fname}: relation {j}: {role}.bbox: expected {VRD_BOX_ORDER}, got {list(bbox)}")
        key = (cat, bbox)
        if key not in index:
            ymin, ymax, xmin, xmax = bbox
            if xmax <= xmin or ymax <= ymin:
                raise SGDataFormatError(f"{ann_file}: image {fname}: relation {j}: {role}.bbox: empty box {list(bbox)} "
                                        f"({VRD_BOX_ORDER})")
            index[key] = len(objs)
            objs.append((cat + 1, [xmin, ymin, xmax - xmin, ymax - ymin]))
        return index[key]

    for j, r in enumerate(rels_raw):
        if not isinstance(r, dict) or "predicate" not in r:
            raise SGDataFormatError(f"{ann_file}: image {fname}: relation {j}: expected {{subject, predicate, object}}")
        s, o = obj_pos(r.get("subject"), j, "subject"), obj_pos(r.get("object"), j, "object")
        p = r["predicate"]
        if not isinstance(p, int) or not 0 <= p < n_pred:
            raise SGDataFormatError(f"{ann_file}: image {fname}: relation {j}: predicate: {p!r} outside 0..{n_pred - 1}")
        if s == o:
            n_self += 1
            continue
        rels.append([s, o, p + 1])
    return objs, rels, n_self


def _fit_size(objs: list[tuple[int, list[float]]], W: int, H: int) -> tuple[int, int]:
    """The image size widened (never shrunk) to contain every box; equal to (W, H) when the boxes fit."""
    x2 = max((b[0] + b[2] for _, b in objs), default=0)
    y2 = max((b[1] + b[3] for _, b in objs), default=0)
    return max(W, int(np.ceil(x2))), max(H, int(np.ceil(y2)))


def _vrd_common(vrd_dir: Path) -> tuple[list[str], list[str]]:
    return _read_names(vrd_dir / "objects.txt"), _read_names(vrd_dir / "predicates.txt")


VRD_BOX_CONVENTION = (f"VRD json_dataset bbox {VRD_BOX_ORDER} in pixels -> [xmin, ymin, xmax - xmin, ymax - ymin] (no +1); "
                      "objects = unique (category, bbox) per image in first-appearance order")


def convert_vrd(vrd_dir: str | Path, out_dir: str | Path, val_images: int = 500, seed: int = 0,
                image_root: str | None = None) -> None:
    """Lu et al. 2016 VRD (``json_dataset``) -> the EGTR layout.

    ``annotations_{train,test}.json`` = ``{file_name: [{subject: {category, bbox}, predicate, object: {...}}]}``
    with 0-based category/predicate indices into ``objects.txt``/``predicates.txt`` and bbox
    ``[ymin, ymax, xmin, xmax]``. Objects are the unique (category, bbox) pairs of an image; images without
    relations are kept (no annotations). Official train: a ``random.Random(seed)`` sample of ``val_images``
    file names becomes val, the rest train; official test -> test. Image ids 1.. in sorted file-name order over
    all splits. Sizes come from ``{train,test}_image_metadata.json``, else the JPEG header in
    ``sample_images/``; where an image's boxes reach past its metadata size, the size is widened to contain
    them (listed in meta). Relations whose subject and object are the same object are dropped (counted).
    """
    vrd_dir = Path(vrd_dir)
    categories, predicates = _vrd_common(vrd_dir)
    ann = {sp: _read_json(vrd_dir / f"annotations_{sp}.json") for sp in ("train", "test")}
    metadata = {sp: _read_json(vrd_dir / f"{sp}_image_metadata.json") for sp in ("train", "test")}
    overlap = set(ann["train"]) & set(ann["test"])
    if overlap:
        raise SGDataFormatError(f"annotations_test.json: image {sorted(overlap)[0]}: file name also in annotations_train.json")
    ids = {fn: k for k, fn in enumerate(sorted(set(ann["train"]) | set(ann["test"])), 1)}
    train_names = sorted(ann["train"])
    if not 0 <= val_images <= len(train_names):
        raise ValueError(f"val_images must be in 0..{len(train_names)}, got {val_images}")
    val_set = set(random.Random(seed).sample(train_names, val_images))
    members = {"train": [f for f in train_names if f not in val_set], "val": [f for f in train_names if f in val_set],
               "test": sorted(ann["test"])}
    source_of = {"train": "train", "val": "train", "test": "test"}
    builders: dict[str, _SplitBuilder] = {}
    raw_rel = {sp: sum(len(v) for v in ann[sp].values()) for sp in ("train", "test")}
    n_self: dict[str, int] = {}
    resized: list[str] = []
    for name in SPLITS:
        src = source_of[name]
        b = _SplitBuilder()
        n_self[name] = 0
        for fn in members[name]:
            objs, rels, dropped = _vrd_graph(fn, ann[src][fn], f"annotations_{src}.json", len(categories), len(predicates))
            W, H = _vrd_size(fn, metadata[src], f"{src}_image_metadata.json", vrd_dir)
            fitW, fitH = _fit_size(objs, W, H)
            if (fitW, fitH) != (W, H):
                resized.append(f"{fn}: {W}x{H} -> {fitW}x{fitH}")
            n_self[name] += dropped
            b.add({"id": ids[fn], "file_name": fn, "width": fitW, "height": fitH}, objs, rels)
        builders[name] = b
    counts = {"raw_relations": raw_rel, "dropped_self_relations": n_self, "size_widened_to_boxes": resized,
              "unique_objects": {k: len(b.annotations) for k, b in builders.items()},
              "val_images": val_images, "seed": seed}
    meta = {
        "source": f"vrd json_dataset ({vrd_dir})",
        "synthetic": False,
        "image_root": image_root,
        "box_convention": VRD_BOX_CONVENTION,
        "notes": (f"official train ({len(train_names)} images, {raw_rel['train']} relations) -> val = random.Random({seed}).sample "
                  f"of {val_images} file names, train = the rest; official test ({len(ann['test'])} images, {raw_rel['test']} "
                  f"relations) -> test. Relations with subject == object dropped: {n_self}. Duplicate relations are kept "
                  f"(as in the official ground truth). Image sizes widened to contain their boxes (metadata smaller than "
                  f"the annotations): {resized or 'none'}."),
        "conversion": counts,
    }
    write_dataset(out_dir, {k: b.split() for k, b in builders.items()}, {k: b.rels for k, b in builders.items()},
                  categories, predicates, meta)


def convert_vrd_sample(vrd_dir: str | Path, out_dir: str | Path) -> None:
    """The mirror's 61 real VRD test images (``sample_images_annotations.json``) as train = val = test, with the
    JPEGs copied to ``out_dir/images`` -- a fit/overfit check, not a benchmark. Same conventions as
    ``convert_vrd``; sizes from ``test_image_metadata.json``, else the JPEG header."""
    vrd_dir = Path(vrd_dir)
    categories, predicates = _vrd_common(vrd_dir)
    ann = _read_json(vrd_dir / "sample_images_annotations.json")
    metadata = _read_json(vrd_dir / "test_image_metadata.json")
    names = sorted(ann)
    b = _SplitBuilder()
    n_self = 0
    resized, from_header = [], []
    for k, fn in enumerate(names, 1):
        jpg = vrd_dir / "sample_images" / fn
        if not jpg.is_file():
            raise FileNotFoundError(f"{jpg}: image listed in sample_images_annotations.json is missing")
        objs, rels, dropped = _vrd_graph(fn, ann[fn], "sample_images_annotations.json", len(categories), len(predicates))
        n_self += dropped
        if fn not in metadata:
            from_header.append(fn)
        W, H = _vrd_size(fn, metadata, "test_image_metadata.json", vrd_dir)
        fitW, fitH = _fit_size(objs, W, H)
        if (fitW, fitH) != (W, H):
            resized.append(f"{fn}: {W}x{H} -> {fitW}x{fitH}")
        b.add({"id": k, "file_name": fn, "width": fitW, "height": fitH}, objs, rels)
    raw = sum(len(v) for v in ann.values())
    meta = {
        "source": f"vrd sample_images ({vrd_dir})",
        "synthetic": False,
        "image_root": "images",
        "box_convention": VRD_BOX_CONVENTION,
        "notes": (f"FIT CHECK ONLY: the {len(names)} real VRD test images of the mirror are train = val = test (same ids); "
                  f"{raw} relations, {n_self} with subject == object dropped; sizes from test_image_metadata.json, read "
                  f"from the JPEG header for {from_header or 'none'}; sizes widened to boxes: {resized or 'none'}."),
        "conversion": {"raw_relations": raw, "dropped_self_relations": n_self, "size_from_jpeg_header": from_header,
                       "size_widened_to_boxes": resized},
    }
    part = b.split()
    with atomic_directory(out_dir) as tmp:
        write_dataset_into(tmp, {s: part for s in SPLITS}, {s: b.rels for s in SPLITS}, categories, predicates, meta)
        (tmp / "images").mkdir()
        for fn in names:
            shutil.copy2(vrd_dir / "sample_images" / fn, tmp / "images" / fn)


# ----------------------------------------------------------------------------------------------------- CLI


def _find(raw: Path, name: str) -> Path:
    for p in (raw / name, raw / "annotations" / name):
        if p.is_file():
            return p
    raise FileNotFoundError(f"{name}: not found in {raw} or {raw / 'annotations'}")


def convert(source: str, raw: Path, out: Path, val_images: int | None = None, max_images: int | None = None,
            image_root: str | None = None) -> None:
    """Dispatch one ``--source`` to its converter."""
    if source == "vrd":
        convert_vrd(raw, out, val_images=500 if val_images is None else val_images, image_root=image_root)
    elif source == "vrd_sample":
        convert_vrd_sample(raw, out)
    elif source == "vg150_h5":
        convert_vg150_h5(raw / "VG-SGG-with-attri.h5", raw / "image_data.json", raw / "VG-SGG-dicts-with-attri.json", out,
                         val_images=5000 if val_images is None else val_images, max_images=max_images, image_root=image_root)
    elif source == "reltr":
        import_reltr(raw, out, image_root=image_root)
    elif source == "openimages":
        anno = _find(raw, "vrd-train-anno.json").parent
        convert_openimages(anno, _find(raw, "categories_dict.json"), out, image_root=image_root)
    else:
        raise ValueError(f"unknown source {source!r}")


class SyntheticScenesParams(StrictConfig):
    """``data.preprocess_sgg.synthetic`` of params.yaml: the arguments of :func:`data.synthetic_scenes.generate`, validated
    (unknown keys, wrong types and out-of-range sizes stop before anything is written)."""

    train: int = Field(2000, ge=1)
    val: int = Field(200, ge=1)
    test: int = Field(300, ge=1)
    size: int = Field(128, ge=16)
    max_objects: int = Field(4, ge=2)
    min_size: int = Field(14, ge=2)
    max_size: int = Field(44, ge=2)
    num_classes: int = Field(6, ge=2)
    touch_px: float = Field(2.0, ge=0.0)
    seed: int = 0

    @model_validator(mode="after")
    def _sizes(self) -> "SyntheticScenesParams":
        if not self.min_size <= self.max_size < self.size:
            raise ValueError(f"min_size <= max_size < size expected (got {self.min_size}, {self.max_size}, {self.size})")
        return self


SYNTHETIC_SECTION = "data.preprocess_sgg.synthetic"


def synthetic_params(params_path: Path) -> dict:
    """The ``data.preprocess_sgg.synthetic`` section of params.yaml (arguments of :func:`data.synthetic_scenes.generate`)."""
    import yaml

    section = ((yaml.safe_load(params_path.read_text()) or {}).get("data", {}).get("preprocess_sgg", {}) or {}).get("synthetic")
    if not isinstance(section, dict):
        raise ValueError(f"{params_path}: section {SYNTHETIC_SECTION} is missing")
    return validate(SyntheticScenesParams, section, source=str(params_path), section=SYNTHETIC_SECTION).model_dump()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["vrd", "vrd_sample", "vg150_h5", "reltr", "openimages", "synthetic"])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="synthetic: reads data.preprocess_sgg.synthetic")
    ap.add_argument("--raw", type=Path, help="input directory of the source")
    ap.add_argument("--out", type=Path, help="dataset directory to write (replaced atomically)")
    ap.add_argument("--metrics", type=Path, help="where to write dataset_stats() as JSON")
    ap.add_argument("--val-images", type=int, default=None, help="val split size (vrd: 500, vg150_h5: 5000)")
    ap.add_argument("--max-images", type=int, default=None, help="vg150_h5: keep the first N images per split")
    ap.add_argument("--image-root", default=None, help="images folder recorded in meta.json (relative to --out or absolute)")
    ap.add_argument("--validate", type=Path, metavar="DATASET_DIR", help="only validate an existing dataset directory")
    args = ap.parse_args(argv)
    if args.validate is not None:
        try:
            validate_dataset(args.validate)
        except SGDataFormatError as err:
            print(f"error: {args.validate}: {err}", file=sys.stderr)
            return 1
        print(f"OK {args.validate}")
        return 0
    needed = ("source", "out", "metrics") if args.source == "synthetic" else ("source", "raw", "out", "metrics")
    missing = [f"--{k}" for k in needed if getattr(args, k) is None]
    if missing:
        ap.error(f"missing {' '.join(missing)} (or use --validate DATASET_DIR)")
    try:
        if args.source == "synthetic":
            from data.synthetic_scenes import generate

            generate(args.out, **synthetic_params(args.params))
        else:
            convert(args.source, args.raw, args.out, args.val_images, args.max_images, args.image_root)
        validate_dataset(args.out)
    except (SGDataFormatError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from data.atomic import atomic_write_json

    stats = dataset_stats(args.out)
    atomic_write_json(args.metrics, {"source": args.source, **stats})
    parts = ", ".join(f"{s} {stats[s]['images']} images/{stats[s]['objects']} objects/{stats[s]['relations']} relations" for s in SPLITS)
    print(f"{args.source} -> {args.out}: {parts}; {stats['num_categories']} categories, {stats['num_predicates']} predicates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
