"""EGTR scene-graph data layer: the schema (write/validate/load/stats) and the converters (VG150 h5, RelTR,
Open Images, VRD), on tiny files built here and on the real VRD mirror."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from data.stages.preprocess_sgg import convert_vg150_h5, convert_vrd, import_reltr, main
from data.sgg_schema import SGDataFormatError, dataset_stats, load_split, validate_dataset, write_dataset
from tests.conftest import mirror_dir

# --------------------------------------------------------------------------------------------- tiny dataset

CATS = ["person", "dog", "ball"]
PREDS = ["on", "has"]
META = {"source": "unit test", "synthetic": True, "image_root": None, "box_convention": "xywh pixels", "notes": "tiny"}


def _tiny_inputs() -> tuple[dict, dict]:
    splits = {
        "train": {
            "images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 80},
                       {"id": 2, "file_name": "2.jpg", "width": 50, "height": 50}],
            "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 20]},
                            {"image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5]},  # interleaved on purpose
                            {"image_id": 1, "category_id": 2, "bbox": [10.5, 5, 20, 30]},
                            {"image_id": 1, "category_id": 3, "bbox": [50, 40, 50, 40]}],
        },
        "val": {"images": [{"id": 3, "file_name": "3.jpg", "width": 64, "height": 64}],
                "annotations": [{"image_id": 3, "category_id": 2, "bbox": [0, 0, 8, 8]},
                                {"image_id": 3, "category_id": 1, "bbox": [8, 8, 8, 8]}]},
        "test": {"images": [{"id": 4, "file_name": "4.jpg", "width": 32, "height": 32},
                            {"id": 5, "file_name": "5.jpg", "width": 32, "height": 32}],
                 "annotations": [{"image_id": 4, "category_id": 3, "bbox": [2, 2, 4, 4]}]},
    }
    rels = {"train": {"1": [[0, 1, 1], [2, 0, 2], [1, 2, 1]], 2: []}, "val": {"3": [[1, 0, 2]]}, "test": {}}
    return splits, rels


@pytest.fixture
def tiny(tmp_path) -> Path:
    splits, rels = _tiny_inputs()
    return write_dataset(tmp_path / "tiny", splits, rels, CATS, PREDS, META)


def test_write_fills_the_coco_fields_and_reads_back_in_getannids_order(tiny):
    validate_dataset(tiny)
    train = json.loads((tiny / "train.json").read_text())
    assert train["categories"] == [{"id": 0, "name": "__background__"}, {"id": 1, "name": "person"},
                                   {"id": 2, "name": "dog"}, {"id": 3, "name": "ball"}]
    assert [a["id"] for a in train["annotations"]] == [1, 2, 3, 4]
    assert train["annotations"][2] == {"id": 3, "image_id": 1, "category_id": 2, "bbox": [10.5, 5.0, 20.0, 30.0],
                                       "area": 600.0, "iscrowd": 0, "segmentation": None}
    rel = json.loads((tiny / "rel.json").read_text())
    assert rel["rel_categories"] == ["__background__", "on", "has"]
    assert rel["train"] == {"1": [[0, 1, 1], [2, 0, 2], [1, 2, 1]], "2": []}
    assert rel["test"] == {"4": [], "5": []}  # a key for every image, as EGTR's loader indexes them all

    sp = load_split(tiny, "train")
    assert sp.image_ids == [1, 2] and sp.categories == CATS and sp.predicates == PREDS and sp.image_root is None
    t = sp.targets(1)
    # image 1's annotations are ids 1, 3, 4 (id 2 belongs to image 2): positions follow that order
    np.testing.assert_array_equal(t["boxes_xywh"], np.array([[0, 0, 10, 20], [10.5, 5, 20, 30], [50, 40, 50, 40]], np.float32))
    assert t["boxes_xywh"].dtype == np.float32 and t["labels"].dtype == np.int64 and t["rels"].dtype == np.int64
    assert t["labels"].tolist() == [0, 1, 2]
    assert t["rels"].tolist() == [[0, 1, 0], [2, 0, 1], [1, 2, 0]]  # predicate 0-based
    empty = load_split(tiny, "test").targets(5)
    assert empty["boxes_xywh"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["rels"].shape == (0, 3)


def test_dataset_stats_counts_the_tiny_dataset(tiny):
    st = dataset_stats(tiny)
    assert st["train"] == {"images": 2, "objects": 4, "relations": 3, "images_with_relations": 1,
                           "per_predicate": {"on": 2, "has": 1}}
    assert st["val"] == {"images": 1, "objects": 2, "relations": 1, "images_with_relations": 1,
                         "per_predicate": {"on": 0, "has": 1}}
    assert st["test"] == {"images": 2, "objects": 1, "relations": 0, "images_with_relations": 0,
                          "per_predicate": {"on": 0, "has": 0}}
    assert st["total"] == {"images": 5, "objects": 7, "relations": 4, "images_with_relations": 2,
                           "per_predicate": {"on": 2, "has": 2}}
    assert st["num_categories"] == 3 and st["num_predicates"] == 2
    json.dumps(st)


# ------------------------------------------------------------------------------------------------ validation


def _edit(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _set(obj, *keys_and_value):
    *keys, last, value = keys_and_value
    for k in keys:
        obj = obj[k]
    obj[last] = value


BROKEN = [
    ("train.json", lambda d: _set(d, "annotations", 2, "bbox", 2, -2.0),
     r"^train\.json: image 1: annotations\[2\]\.bbox: width must be > 0 \(got -2\.0\)$"),
    ("rel.json", lambda d: _set(d, "train", "1", 1, 0, 9),
     r"^rel\.json: train: image 1: relation 1: subject position 9 out of range \(image has 3 annotations\)$"),
    ("val.json", lambda d: _set(d, "annotations", 1, "category_id", 99),
     r"^val\.json: image 3: annotations\[1\]\.category_id: 99 is not a category id 1\.\.3$"),
    ("test.json", lambda d: _set(d, "annotations", 0, "image_id", 42),
     r"^test\.json: image 42: annotations\[0\]\.image_id: image 42 is not in images$"),
    ("train.json", lambda d: _set(d, "annotations", 3, "bbox", [60, 50, 50, 40]),
     r"^train\.json: image 1: annotations\[3\]\.bbox: .* outside the 100x80 image$"),
    ("train.json", lambda d: _set(d, "annotations", 0, "bbox", [0, 0, 10]),
     r"^train\.json: image 1: annotations\[0\]\.bbox: expected 4 finite numbers"),
    ("train.json", lambda d: _set(d, "annotations", 1, "id", 1), r"^train\.json: image 2: annotations\[1\]\.id: duplicate annotation id 1$"),
    ("val.json", lambda d: _set(d, "images", 0, "width", 0), r"^val\.json: image 3: images\[0\]\.width: expected a positive int"),
    ("rel.json", lambda d: _set(d, "val", "3", 0, [1, 1, 2]),
     r"^rel\.json: val: image 3: relation 0: subject and object are the same annotation \(1\)$"),
    ("rel.json", lambda d: _set(d, "val", "3", 0, [1, 0, 3]), r"^rel\.json: val: image 3: relation 0: predicate id 3 out of range 1\.\.2$"),
    ("rel.json", lambda d: _set(d, "test", "1", []), r"^rel\.json: test: image 1: not an image of test\.json$"),
    ("rel.json", lambda d: d.pop("val"), r"^rel\.json: val: missing"),
    ("test.json", lambda d: _set(d, "categories", 3, "name", "cat"), r"^test\.json: categories: differ from train\.json's$"),
    ("meta.json", lambda d: d.pop("synthetic"), r"^meta\.json: synthetic: missing$"),
]


@pytest.mark.parametrize("fname,mutate,message", BROKEN, ids=[f"{b[0]}:{b[2][2:40]}" for b in BROKEN])
def test_validation_names_file_image_and_field(tiny, fname, mutate, message):
    _edit(tiny / fname, mutate)
    with pytest.raises(SGDataFormatError, match=message):
        validate_dataset(tiny)


def test_write_refuses_bad_input_and_leaves_the_old_directory(tiny):
    before = (tiny / "train.json").read_bytes()
    splits, rels = _tiny_inputs()
    rels["train"]["1"].append([0, 3, 1])
    with pytest.raises(SGDataFormatError, match=r"rel\.json: train: image 1: relation 3: object position 3 out of range"):
        write_dataset(tiny, splits, rels, CATS, PREDS, META)
    assert (tiny / "train.json").read_bytes() == before
    assert [p.name for p in tiny.parent.iterdir()] == ["tiny"]  # no temp directory left behind


def test_cli_validate_reports_ok_and_errors(tiny, capsys):
    assert main(["--validate", str(tiny)]) == 0
    assert "OK" in capsys.readouterr().out
    _edit(tiny / "rel.json", lambda d: _set(d, "train", "1", 0, [0, 7, 1]))
    assert main(["--validate", str(tiny)]) == 1
    assert "rel.json: train: image 1: relation 0: object position 7 out of range" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- VG150 h5


def _write_vg150_raw(root: Path) -> Path:
    """4 h5 images in the Neural-Motifs layout (boxes_1024 = cx, cy, w, h at longest side 1024): 3 with split 0,
    one of them without boxes, 1 with split 2. image_data.json carries one extra corrupted VG entry (1592)."""
    root.mkdir(parents=True)
    image_data = [{"image_id": 10, "width": 800, "height": 600}, {"image_id": 1592, "width": 9, "height": 9},
                  {"image_id": 11, "width": 640, "height": 480}, {"image_id": 12, "width": 500, "height": 1000},
                  {"image_id": 13, "width": 1024, "height": 768}]
    (root / "image_data.json").write_text(json.dumps(image_data))
    dicts = {"idx_to_label": {str(i): f"obj{i}" for i in range(1, 151)},
             "idx_to_predicate": {str(i): f"pred{i}" for i in range(1, 51)}}
    (root / "VG-SGG-dicts-with-attri.json").write_text(json.dumps(dicts))
    with h5py.File(root / "VG-SGG-with-attri.h5", "w") as h5:
        h5["split"] = np.array([0, 0, 0, 2])
        h5["img_to_first_box"] = np.array([0, -1, 3, 5])
        h5["img_to_last_box"] = np.array([2, -1, 4, 6])
        h5["img_to_first_rel"] = np.array([0, -1, 2, -1])
        h5["img_to_last_rel"] = np.array([1, -1, 3, -1])
        h5["labels"] = np.array([[5], [20], [150], [1], [2], [3], [4]])
        h5["boxes_1024"] = np.array([[512, 256, 200, 100], [100, 100, 50, 40], [1000, 700, 60, 40],  # image 10
                                     [500, 1000, 40, 60], [256, 512, 128, 256],  # image 12
                                     [100, 100, 20, 20], [500, 300, 100, 50]], dtype=np.int32)  # image 13
        h5["relationships"] = np.array([[0, 1], [2, 0], [3, 4], [4, 4]])
        h5["predicates"] = np.array([[3], [1], [50], [7]])
    return root


def test_vg150_h5_rescales_splits_and_keeps_positions(tmp_path):
    raw = _write_vg150_raw(tmp_path / "raw")
    out = tmp_path / "vg"
    convert_vg150_h5(raw / "VG-SGG-with-attri.h5", raw / "image_data.json", raw / "VG-SGG-dicts-with-attri.json", out,
                     val_images=1, synthetic=True, filter_empty_rels=False)
    validate_dataset(out)
    val, train, test = (load_split(out, s) for s in ("val", "train", "test"))
    # the FIRST train image with boxes is val (SGB image_index[:num_val_im]); image 11 (no boxes) is dropped
    assert (val.image_ids, train.image_ids, test.image_ids) == ([10], [12], [13])
    assert val.coco.imgs[10] == {"id": 10, "file_name": "10.jpg", "width": 800, "height": 600}
    assert len(val.categories) == 150 and val.categories[149] == "obj150" and val.predicates[0] == "pred1"

    t = val.targets(10)  # 800x600: scale 800/1024 = 0.78125
    np.testing.assert_array_equal(t["boxes_xywh"], np.array([
        [321.875, 160.9375, 156.25, 78.125],  # cx 512 cy 256 w 200 h 100 -> xyxy 412,206,612,306 * 0.78125
        [58.59375, 62.5, 39.0625, 31.25],
        [757.8125, 531.25, 42.1875, 31.25],  # x2 = 1030 * 0.78125 = 804.6875, clipped to 800
    ], np.float32))
    assert t["labels"].tolist() == [4, 19, 149]
    assert t["rels"].tolist() == [[0, 1, 2], [2, 0, 0]]  # h5 predicates 3, 1 -> 0-based
    assert json.loads((out / "rel.json").read_text())["val"] == {"10": [[0, 1, 3], [2, 0, 1]]}

    t = train.targets(12)  # 500x1000: scale 1000/1024 = 0.9765625
    np.testing.assert_array_equal(t["boxes_xywh"], np.array([
        [468.75, 947.265625, 31.25, 52.734375],  # both x2 (507.8) and y2 (1005.9) clipped to the image
        [187.5, 375.0, 125.0, 250.0],
    ], np.float32))
    assert t["rels"].tolist() == [[0, 1, 49]]  # the (4, 4) self-relation is dropped
    np.testing.assert_array_equal(test.targets(13)["boxes_xywh"], np.array([[90, 90, 20, 20], [450, 275, 100, 50]], np.float32))
    assert test.targets(13)["rels"].shape == (0, 3)

    meta = json.loads((out / "meta.json").read_text())
    conv = meta["conversion"]
    assert meta["synthetic"] is True and "(cx, cy, w, h)" in meta["box_convention"]
    assert conv["dropped_images_without_boxes"] == {"train_val": 1, "test": 0}
    assert conv["dropped_self_relations"] == {"train": 1, "val": 0, "test": 0}
    assert conv["clipped_boxes"] == {"train": 1, "val": 1, "test": 0}
    assert conv["removed_corrupted_image_data_entries"] == 1

    convert_vg150_h5(raw / "VG-SGG-with-attri.h5", raw / "image_data.json", raw / "VG-SGG-dicts-with-attri.json", out,
                     val_images=0, max_images=1, filter_empty_rels=False)
    assert [load_split(out, s).image_ids for s in ("train", "val", "test")] == [[10], [], [13]]

    # the default, as SGB / Motifs filter_empty_rels=True: test image 13 has no relation and is dropped
    convert_vg150_h5(raw / "VG-SGG-with-attri.h5", raw / "image_data.json", raw / "VG-SGG-dicts-with-attri.json", out,
                     val_images=1)
    assert [load_split(out, s).image_ids for s in ("train", "val", "test")] == [[12], [10], []]
    conv = json.loads((out / "meta.json").read_text())["conversion"]
    assert conv["dropped_images_without_relations"] == {"train_val": 0, "test": 1}


def test_vg150_h5_misaligned_image_data_is_an_error(tmp_path):
    raw = _write_vg150_raw(tmp_path / "raw")
    (raw / "image_data.json").write_text(json.dumps([{"image_id": 10, "width": 800, "height": 600}]))
    with pytest.raises(SGDataFormatError, match=r"image_data\.json: 1 entries .* do not align with the 4 images"):
        convert_vg150_h5(raw / "VG-SGG-with-attri.h5", raw / "image_data.json", raw / "VG-SGG-dicts-with-attri.json",
                         tmp_path / "vg")
    assert not (tmp_path / "vg").exists()


# ------------------------------------------------------------------------------------------------ Open Images


def test_openimages_plus_one_box_filters_and_ids(tmp_path):
    anno = tmp_path / "raw" / "annotations"
    anno.mkdir(parents=True)
    (tmp_path / "raw" / "categories_dict.json").write_text(json.dumps({"obj": [f"o{i}" for i in range(10)],
                                                                        "rel": [f"r{i}" for i in range(5)]}))
    many = {"img_fn": "big", "img_size": [20, 20], "bbox": [[0, 0, 9, 9]] * 201, "det_labels": [1] * 201, "rel": []}
    train = [
        {"img_fn": "a", "img_size": [100, 50], "bbox": [[0, 0, 99, 49], [10, 20, 100, 50], [5, 5, 14, 24]],
         "det_labels": [0, 3, 9], "rel": [[0, 1, 2], [0, 1, 2], [1, 2, 0], [2, 2, 1]]},
        many,
        {"img_fn": "c", "img_size": [30, 40], "bbox": [[1, 2, 3, 4]], "det_labels": [7], "rel": []},
    ]
    val = [{"img_fn": "v", "img_size": [30, 30], "bbox": [[0, 0, 9, 9], [10, 10, 19, 19]], "det_labels": [2, 2],
            "rel": [[0, 1, 0], [0, 1, 0]]}]
    for name, entries in (("train", train), ("val", val), ("test", [many])):
        (anno / f"vrd-{name}-anno.json").write_text(json.dumps(entries))
    out, metrics = tmp_path / "oi", tmp_path / "metrics" / "oi.json"
    assert main(["--source", "openimages", "--raw", str(tmp_path / "raw"), "--out", str(out), "--metrics", str(metrics)]) == 0
    tr = load_split(out, "train")
    assert tr.image_ids == [0, 2]  # ids = positions in the file; the 201-box train image (position 1) is dropped
    assert tr.coco.imgs[0]["file_name"] == "a.jpg" and tr.coco.imgs[0]["width"] == 100
    t = tr.targets(0)
    # [x1, y1, x2 - x1 + 1, y2 - y1 + 1]; the second box passes the 100x50 edge by the +1 and is clipped
    np.testing.assert_array_equal(t["boxes_xywh"], np.array([[0, 0, 100, 50], [10, 20, 90, 30], [5, 5, 10, 20]], np.float32))
    assert [a["category_id"] for a in tr.coco.loadAnns(tr.coco.getAnnIds(imgIds=[0]))] == [1, 4, 10]  # label + 1
    assert t["labels"].tolist() == [0, 3, 9]
    assert json.loads((out / "rel.json").read_text())["train"]["0"] == [[0, 1, 3], [1, 2, 1]]  # pred + 1, deduplicated
    assert load_split(out, "val").targets(0)["rels"].tolist() == [[0, 1, 0], [0, 1, 0]]  # EGTR dedups train only
    assert load_split(out, "test").image_ids == [0] and len(load_split(out, "test").targets(0)["labels"]) == 201
    conv = json.loads((out / "meta.json").read_text())["conversion"]
    assert conv["dropped_images_too_many_boxes"] == {"train": 1, "val": 0, "test": 0}
    assert conv["dropped_duplicate_relations"] == {"train": 1, "val": 0, "test": 0}
    assert conv["dropped_self_relations"] == {"train": 1, "val": 0, "test": 0}
    assert conv["clipped_boxes"]["train"] == 1
    stats = json.loads(metrics.read_text())
    assert stats["source"] == "openimages" and stats["train"]["relations"] == 2 and stats["num_categories"] == 10


# ------------------------------------------------------------------------------------------------ RelTR import


def _write_reltr(root: Path, with_background: bool) -> None:
    root.mkdir(parents=True)
    cats = ([{"supercategory": "none", "id": 0, "name": "__background__"}] if with_background else [])
    cats += [{"supercategory": "none", "id": i, "name": n} for i, n in enumerate(["man", "horse", "hat"], 1)]
    files = {
        "train": ([{"id": 7, "file_name": "7.jpg", "height": 60, "width": 80}, {"id": 9, "file_name": "9.jpg", "height": 60, "width": 80}],
                  [{"id": 100, "image_id": 9, "category_id": 2, "bbox": [1, 1, 10, 10], "area": 5, "iscrowd": 0, "segmentation": []},
                   {"id": 101, "image_id": 7, "category_id": 1, "bbox": [0, 0, 40, 60], "area": 5, "iscrowd": 0, "segmentation": []},
                   {"id": 102, "image_id": 9, "category_id": 3, "bbox": [20, 5, 6, 4], "area": 5, "iscrowd": 0, "segmentation": []},
                   {"id": 103, "image_id": 7, "category_id": 2, "bbox": [30, 10, 50, 50], "area": 5, "iscrowd": 0, "segmentation": []}]),
        "val": ([{"id": 11, "file_name": "11.jpg", "height": 10, "width": 10}],
                [{"id": 1, "image_id": 11, "category_id": 3, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0, "segmentation": []}]),
        "test": ([{"id": 12, "file_name": "12.jpg", "height": 10, "width": 10}], []),
    }
    for name, (images, anns) in files.items():
        (root / f"{name}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    rel = {"train": {"7": [[0, 1, 2]], "9": [[1, 0, 1], [0, 1, 2]]}, "val": {}, "test": {"12": []},
           "rel_categories": ["__background__", "riding", "wearing"]}
    (root / "rel.json").write_text(json.dumps(rel))


@pytest.mark.parametrize("with_background", [True, False])
def test_reltr_import_round_trip(tmp_path, with_background):
    _write_reltr(tmp_path / "reltr", with_background)
    out = tmp_path / "imported"
    import_reltr(tmp_path / "reltr", out, image_root="/data/vg/images")
    validate_dataset(out)
    tr = load_split(out, "train")
    assert tr.categories == ["man", "horse", "hat"] and tr.predicates == ["riding", "wearing"]
    assert tr.image_root == Path("/data/vg/images") and tr.image_path(7) == Path("/data/vg/images/7.jpg")
    t9 = tr.targets(9)  # annotations 100, 102 in file order
    np.testing.assert_array_equal(t9["boxes_xywh"], np.array([[1, 1, 10, 10], [20, 5, 6, 4]], np.float32))
    assert t9["labels"].tolist() == [1, 2] and t9["rels"].tolist() == [[1, 0, 0], [0, 1, 1]]
    assert tr.targets(7)["labels"].tolist() == [0, 1]
    written = json.loads((out / "train.json").read_text())
    assert [a["area"] for a in written["annotations"]] == [100.0, 2400.0, 24.0, 2500.0]  # area := w*h
    assert json.loads((out / "rel.json").read_text())["val"] == {"11": []}
    # the schema's own output is itself a valid RelTR-style input: importing it again changes nothing
    again = tmp_path / "again"
    import_reltr(out, again, image_root="/data/vg/images")
    for f in ("train.json", "val.json", "test.json", "rel.json"):
        assert json.loads((again / f).read_text()) == json.loads((out / f).read_text())


def test_reltr_rel_categories_without_background_is_refused(tmp_path):
    _write_reltr(tmp_path / "reltr", True)
    _edit(tmp_path / "reltr" / "rel.json", lambda d: _set(d, "rel_categories", ["riding", "wearing"]))
    with pytest.raises(SGDataFormatError, match=r"rel\.json: rel_categories\[0\]"):
        import_reltr(tmp_path / "reltr", tmp_path / "out")


# ----------------------------------------------------------------------------------------------- VRD mirror


@pytest.mark.mirror
def test_vrd_mirror_matches_the_official_counts(tmp_path):
    vrd = mirror_dir("vrd")
    out = tmp_path / "vrd"
    convert_vrd(vrd, out, val_images=500, seed=0)
    validate_dataset(out)
    st = dataset_stats(out)
    meta = json.loads((out / "meta.json").read_text())
    conv = meta["conversion"]
    assert st["num_categories"] == 100 and st["num_predicates"] == 70
    assert (st["train"]["images"], st["val"]["images"], st["test"]["images"]) == (3500, 500, 1000)
    # objects = unique (category, box) per image: the SOURCE.txt counts
    assert st["train"]["objects"] + st["val"]["objects"] == 26430 and st["test"]["objects"] == 6735
    # relations: the paper's 30,355 / 7,638 minus the subject == object relations the schema cannot hold
    assert conv["raw_relations"] == {"train": 30355, "test": 7638}
    assert conv["dropped_self_relations"]["train"] + conv["dropped_self_relations"]["val"] == 83
    assert conv["dropped_self_relations"]["test"] == 26
    assert st["train"]["relations"] + st["val"]["relations"] == 30355 - 83 == 30272
    assert st["test"]["relations"] == 7638 - 26 == 7612
    # 3,780 / 955 images with a relation in the raw files; 2 train images had only self-relations
    assert st["train"]["images_with_relations"] + st["val"]["images_with_relations"] == 3778
    assert st["test"]["images_with_relations"] == 955
    # the one image whose metadata size (500x374) cannot hold its boxes, and the one read from its JPEG header
    assert conv["size_widened_to_boxes"] == ["9210906893_4102aa74c8_b.jpg: 500x374 -> 679x1023"]
    test = load_split(out, "test")
    by_name = {img["file_name"]: img for img in test.coco.dataset["images"]}
    assert (by_name["4392556686_44d71ff5a0_o.jpg"]["width"], by_name["4392556686_44d71ff5a0_o.jpg"]["height"]) == (640, 480)
    all_ids = sorted(i for s in ("train", "val", "test") for i in load_split(out, s).image_ids)
    assert all_ids == list(range(1, 5001))
    names = {i: test.coco.imgs[i]["file_name"] for i in test.image_ids}
    assert [names[i] for i in sorted(names)] == sorted(names.values())  # ids follow file-name order


@pytest.mark.mirror
def test_vrd_sample_fit_dataset_through_the_cli(tmp_path, capsys):
    vrd = mirror_dir("vrd")
    out, metrics = tmp_path / "vrd_sample", tmp_path / "m" / "vrd_sample.json"
    assert main(["--source", "vrd_sample", "--raw", str(vrd), "--out", str(out), "--metrics", str(metrics)]) == 0
    assert "61 images/480 objects/623 relations" in capsys.readouterr().out
    st = json.loads(metrics.read_text())
    for split in ("train", "val", "test"):
        assert (st[split]["images"], st[split]["objects"], st[split]["relations"]) == (61, 480, 623)
    conv = json.loads((out / "meta.json").read_text())["conversion"]
    assert conv["raw_relations"] == 627 and conv["dropped_self_relations"] == 4
    assert conv["size_from_jpeg_header"] == ["4392556686_44d71ff5a0_o.jpg"] and conv["size_widened_to_boxes"] == []
    sp = load_split(out, "train")
    assert sp.image_root == out / "images"
    files = sorted(p.name for p in (out / "images").iterdir())
    assert len(files) == 61 and files == sorted(img["file_name"] for img in sp.coco.dataset["images"])
    from PIL import Image

    for iid in sp.image_ids[:5]:
        with Image.open(sp.image_path(iid)) as im:
            assert im.size == (sp.coco.imgs[iid]["width"], sp.coco.imgs[iid]["height"])
    assert main(["--validate", str(out)]) == 0


# ----------------------------------------------------------------------------------- augmentation (DETR recipe)


@pytest.fixture
def with_images(tmp_path) -> Path:
    """The tiny train split with real image files: image 1 is 100 x 80 with boxes of known place."""
    from PIL import Image

    splits, rels = _tiny_inputs()
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    for split in splits.values():
        for im in split["images"]:
            Image.new("RGB", (im["width"], im["height"]), (120, 60, 30)).save(img_dir / im["file_name"])
    return write_dataset(tmp_path / "with_images", splits, rels, CATS, ["left of", "right of"],
                         META | {"image_root": str(img_dir)})


def _sample(ds, image_id: int):
    return ds[ds.ids.index(image_id)]


def _xyxy(t) -> np.ndarray:
    h, w = t["size"]
    c = t["boxes"].numpy()
    return np.stack([(c[:, 0] - c[:, 2] / 2) * w, (c[:, 1] - c[:, 3] / 2) * h,
                     (c[:, 0] + c[:, 2] / 2) * w, (c[:, 1] + c[:, 3] / 2) * h], 1)


def test_eval_resize_keeps_boxes_in_place(with_images):
    from models.egtr.config import AugmentConfig
    from models.egtr.data import SceneGraphDataset

    ds = SceneGraphDataset(with_images, "train", AugmentConfig(eval_size=40, eval_max_size=1000), train=False)
    img, t = _sample(ds, 1)
    assert img.shape == (3, 40, 50) and t["size"] == (40, 50) and t["orig_size"] == (80, 100)
    # xywh [0,0,10,20], [10.5,5,20,30], [50,40,50,40] at half scale, in pixels of the resized image
    np.testing.assert_allclose(_xyxy(t), np.array([[0, 0, 10, 20], [10.5, 5, 30.5, 35], [50, 40, 100, 80]]) / 2,
                               atol=1e-4)
    assert t["labels"].tolist() == [0, 1, 2] and t["rels"].tolist() == [[0, 1, 0], [2, 0, 1], [1, 2, 0]]


def test_flip_mirrors_boxes_and_swaps_the_listed_predicates(with_images):
    from models.egtr.config import AugmentConfig
    from models.egtr.data import SceneGraphDataset

    aug = AugmentConfig(hflip=True, flip_swap=[["left of", "right of"]], scales=[80], max_size=1000)
    ds = SceneGraphDataset(with_images, "train", aug, train=True, crop=False, seed=3)
    flipped = kept = 0
    for epoch in range(12):  # flip with p = 0.5, seeded by (seed, epoch, image)
        ds.set_epoch(epoch)
        _, t = _sample(ds, 1)
        if np.allclose(_xyxy(t)[0], [90, 0, 100, 20], atol=1e-4):  # [0, 0, 10, 20] mirrored in a 100-wide image
            flipped += 1
            assert t["rels"].tolist() == [[0, 1, 1], [2, 0, 0], [1, 2, 1]]
        else:
            kept += 1
            np.testing.assert_allclose(_xyxy(t)[0], [0, 0, 10, 20], atol=1e-4)
            assert t["rels"].tolist() == [[0, 1, 0], [2, 0, 1], [1, 2, 0]]
    assert flipped and kept
    ds.set_epoch(5)
    assert torch.equal(_sample(ds, 1)[1]["boxes"], _sample(ds, 1)[1]["boxes"])  # same epoch, same augmentation


def test_random_crop_only_in_the_detector_stage_and_when_switched_on(with_images):
    from models.egtr.config import AugmentConfig, EgtrConfig
    from models.egtr.data import SceneGraphDataset
    from models.egtr.recipe import uses_random_crop

    cfg = EgtrConfig()
    assert uses_random_crop(cfg, "pretrain") and not uses_random_crop(cfg, "sgg")
    assert not uses_random_crop(cfg.model_copy(update={"augment": AugmentConfig(random_crop=False)}), "pretrain")

    aug = AugmentConfig(hflip=False, scales=[80], max_size=1000, crop_scales=[80], crop_min=30, crop_max=40)
    ds = SceneGraphDataset(with_images, "train", aug, train=True, crop=True, seed=0)
    cropped = 0
    for epoch in range(12):
        ds.set_epoch(epoch)
        img, t = _sample(ds, 1)
        if t["size"] != (80, 100):  # a crop changes the aspect ratio
            cropped += 1
            n = len(t["labels"])
            assert t["boxes"].shape == (n, 4) and t["rels"].shape[1] == 3
            assert ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all() and (t["boxes"][:, 2:] > 0).all()
            assert (t["rels"][:, :2] < n).all() and n <= 3
    assert cropped
    no_crop = SceneGraphDataset(with_images, "train", aug, train=True, crop=False, seed=0)
    for epoch in range(12):  # the same epochs that cropped above keep the whole 100 x 80 image
        no_crop.set_epoch(epoch)
        assert _sample(no_crop, 1)[1]["size"] == (80, 100)


def test_one_predicate_per_pair_and_ground_truth_dedup(tmp_path):
    import random

    from PIL import Image

    from models.egtr.config import AugmentConfig
    from models.egtr.data import SceneGraphDataset, one_predicate_per_pair
    from models.egtr.evaluate import ground_truth

    rels = torch.tensor([[0, 1, 0], [0, 1, 1], [1, 0, 1], [0, 1, 0]])
    drawn = {tuple(one_predicate_per_pair(rels, random.Random(s)).tolist()[0]) for s in range(30)}
    assert drawn == {(0, 1, 0), (0, 1, 1)}  # one of the pair's predicates, drawn at random
    assert one_predicate_per_pair(rels, random.Random(0)).tolist()[1] == [1, 0, 1]

    splits, rel = _tiny_inputs()
    rel["train"]["1"] = [[0, 1, 1], [0, 1, 2], [0, 1, 1], [2, 0, 2]]  # a repeated triplet, a pair with 2 predicates
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    for split in splits.values():
        for im in split["images"]:
            Image.new("RGB", (im["width"], im["height"])).save(img_dir / im["file_name"])
    d = write_dataset(tmp_path / "dup", splits, rel, CATS, PREDS, META | {"image_root": str(img_dir)})
    ds = SceneGraphDataset(d, "train", AugmentConfig(hflip=False, filter_multiple_rels=True, scales=[80]), train=True)
    for epoch in range(3):
        ds.set_epoch(epoch)
        got = _sample(ds, 1)[1]["rels"].tolist()
        assert len(got) == 2 and got[0][:2] == [0, 1] and got[1] == [2, 0, 1]
    plain = SceneGraphDataset(d, "train", AugmentConfig(hflip=False, scales=[80]), train=True)
    assert len(_sample(plain, 1)[1]["rels"]) == 4  # off by default (VG): every triplet is a target
    assert ground_truth(plain, 1)["rels"].tolist() == [[0, 1, 0], [0, 1, 1], [2, 0, 1]]  # the repeat counts once


def test_synthetic_scene_params_are_validated_before_anything_is_written(tmp_path):
    import yaml

    from data.stages.preprocess_sgg import main as preprocess_main
    from tests.conftest import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value, expect in (("trian", 3, r"data\.preprocess_sgg\.synthetic\.trian: unknown key"),
                               ("train", "many", r"data\.preprocess_sgg\.synthetic\.train: Input should be a valid integer"),
                               ("max_size", 500, r"data\.preprocess_sgg\.synthetic: min_size <= max_size < size expected \(got 14, 500, 128\)$")):
        sgg = raw["data"]["preprocess_sgg"]
        bad = {**raw, "data": {"preprocess_sgg": {**sgg, "synthetic": {**sgg["synthetic"], key: value}}}}
        p = tmp_path / "params.yaml"
        p.write_text(yaml.safe_dump(bad))
        from data.stages.preprocess_sgg import synthetic_params

        with pytest.raises(ValueError, match=expect):
            synthetic_params(p)
        assert preprocess_main(["--source", "synthetic", "--params", str(p), "--out", str(tmp_path / "out"),
                                "--metrics", str(tmp_path / "m.json")]) == 1
        assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()
