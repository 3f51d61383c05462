"""MultimodalSum review tables (data/review_schema.py, data/stages/build_review_tables.py, data/synthetic_reviews.py):
the schema and its errors, the Copycat subsampling rules on tiny files in the official Yelp / Amazon layouts, the
gold sets of the real mirror, and the synthetic multimodal set."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data.review_schema import (
    METADATA_KEY,
    SCHEMA_VERSION,
    ReviewDataError,
    read_tables,
    validate,
    write_tables,
)
from data.stages.build_review_tables import (
    AmazonParams,
    YelpParams,
    convert_amazon,
    convert_amazon_gold,
    convert_yelp,
    convert_yelp_gold,
    load_params,
    main,
    make_tokenizer,
)
from tests.conftest import REPO, mirror_dir


def _jpeg(colour=(200, 40, 40), size=16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG")
    return buf.getvalue()


def _words(n: int, word: str = "good") -> str:
    return " ".join([word] * n)


def _jsonl(path: Path, records: list, literal: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((repr(r) if literal else json.dumps(r)) + "\n" for r in records)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------------------------------- schema


def _tiny_records():
    entities = [{"entity_id": "e1", "source": "yelp", "split": "train", "has_table": True, "name": "A", "avg_rating": 4.5,
                 "categories": ["Pizza"], "hours_Monday": "08:00-16:00", "BikeParking": True},
                {"entity_id": "e2", "source": "amazon", "split": "val", "has_table": False}]
    reviews = [{"entity_id": "e1", "review_id": "r1", "position": 0, "split": "train", "rating": 5.0, "text": "nice"},
               {"entity_id": "e2", "review_id": "r2", "position": 0, "split": "val", "text": "ok"}]
    refs = [{"entity_id": "e1", "ref_index": 0, "split": "train", "text": "summary"}]
    meta = {"dataset": "tiny", "synthetic": True, "image_root": None, "notes": "test"}
    return entities, reviews, refs, meta


@pytest.fixture
def tiny(tmp_path):
    e, r, f, m = _tiny_records()
    return write_tables(tmp_path / "tiny", e, r, f, [], m)


def test_round_trip_types_and_versioned_metadata(tiny):
    t = read_tables(tiny)
    md = json.loads(pq.read_schema(tiny / "reviews.parquet").metadata[METADATA_KEY])
    assert md["schema_version"] == SCHEMA_VERSION == 1 and md["table"] == "reviews" and md["dataset"] == "tiny"
    e1 = t.entities.to_pylist()[0]
    assert e1["categories"] == ["Pizza"] and e1["BikeParking"] is True and e1["Ambience_casual"] is None and e1["price"] is None
    assert t.entities.schema.field("category_paths").type == pa.list_(pa.list_(pa.string()))
    assert t.reviews.to_pylist()[1]["rating"] is None
    assert sorted(p.name for p in tiny.parent.iterdir()) == ["tiny"]  # the temporary folder was renamed


def _rewrite(path: Path, fn) -> None:
    """Apply ``fn`` to the pylist of a parquet file and write it back with the same schema and metadata."""
    t = pq.read_table(path)
    rows = fn(t.to_pylist())
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), path)


BROKEN = [
    ("reviews", lambda rows: rows + [{**rows[0], "review_id": "r9", "entity_id": "ghost"}],
     r"^reviews\.parquet: entity 'ghost' \(row 2\): entity_id: not an entity of entities\.parquet$"),
    ("reviews", lambda rows: rows[:1],
     r"^entities\.parquet: entity 'e2' \(row 1\): reviews: the entity has no review in reviews\.parquet$"),
    ("reviews", lambda rows: [rows[0], {**rows[1], "review_id": "r1"}],
     r"^reviews\.parquet: entity 'e2' \(row 1\): review_id: duplicate 'r1' \(first at row 0\)$"),
    ("reviews", lambda rows: [rows[0], {**rows[1], "split": "test"}],
     r"^reviews\.parquet: entity 'e2' \(row 1\): split: 'test' differs from the entity's split 'val'$"),
    ("entities", lambda rows: [rows[0], {**rows[1], "price": 3.0}],
     r"^entities\.parquet: entity 'e2' \(row 1\): has_table: False but price is set"),
    ("entities", lambda rows: [{**rows[0], "price": 3.0}, rows[1]],
     r"^entities\.parquet: entity 'e1' \(row 0\): price: must be null for source 'yelp'"),
    ("entities", lambda rows: [{**rows[0], "hours_Monday": "8-16"}, rows[1]],
     r"^entities\.parquet: entity 'e1' \(row 0\): hours_Monday: expected 'HH:MM-HH:MM', got '8-16'$"),
    ("entities", lambda rows: [{**rows[0], "split": "holdout"}, rows[1]],
     r"^entities\.parquet: entity 'e1' \(row 0\): split: expected one of \['train', 'val', 'dev', 'test'\], got 'holdout'$"),
    ("references", lambda rows: rows + [{**rows[0], "text": "  "}],
     r"^references\.parquet: entity 'e1' \(row 1\): text: empty text$"),
]


@pytest.mark.parametrize("table,mutate,message", BROKEN, ids=[b[2][2:42] for b in BROKEN])
def test_validation_names_file_entity_and_field(tiny, table, mutate, message):
    _rewrite(tiny / f"{table}.parquet", mutate)
    with pytest.raises(ReviewDataError, match=message):
        validate(tiny)


def test_wrong_column_type_missing_column_and_other_version_are_refused(tiny):
    path = tiny / "reviews.parquet"
    t = pq.read_table(path)
    md = t.schema.metadata
    pq.write_table(t.set_column(t.schema.get_field_index("rating"), "rating", pa.array(["5", None])).replace_schema_metadata(md), path)
    with pytest.raises(ReviewDataError, match=r"^reviews\.parquet: rating: expected type double, got string$"):
        validate(tiny)
    pq.write_table(t.drop(["text"]).replace_schema_metadata(md), path)
    with pytest.raises(ReviewDataError, match=r"^reviews\.parquet: text: column missing \(expected string\)$"):
        validate(tiny)
    bumped = {**md, METADATA_KEY: json.dumps({**json.loads(md[METADATA_KEY]), "schema_version": 99}).encode()}
    pq.write_table(t.replace_schema_metadata(bumped), path)
    with pytest.raises(ReviewDataError, match=r"^reviews\.parquet: metadata\.schema_version: expected 1, got 99"):
        validate(tiny)


def test_write_refuses_a_bad_record_and_leaves_the_old_folder(tiny):
    before = (tiny / "entities.parquet").read_bytes()
    e, r, f, m = _tiny_records()
    e[0]["avg_rating"] = "four"
    with pytest.raises(ReviewDataError, match=r"^entities\.parquet: entity 'e1' \(record 0\): avg_rating: expected a finite number, got 'four'$"):
        write_tables(tiny, e, r, f, [], m)
    e, r, f, m = _tiny_records()
    with pytest.raises(ReviewDataError, match=r"^entities\.parquet: entity 'e2' \(row 1\): reviews: the entity has no review"):
        write_tables(tiny, e, r[:1], f, [], m)
    assert (tiny / "entities.parquet").read_bytes() == before
    assert [p.name for p in tiny.parent.iterdir()] == ["tiny"]  # no temporary folder left behind


def test_cli_validate_reports_ok_and_errors(tiny, capsys):
    assert main(["--validate", str(tiny)]) == 0
    assert f"OK {tiny}" in capsys.readouterr().out
    _rewrite(tiny / "reviews.parquet", lambda rows: rows[:1])
    assert main(["--validate", str(tiny)]) == 1
    assert "entities.parquet: entity 'e2' (row 1): reviews: the entity has no review" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- tokenizer


def test_regex_tokenizer_approximates_moses():
    tok = make_tokenizer("regex")
    assert tok("I don't like it's well-made U.S. e-mail, 3.50$... ok!") == [
        "I", "don", "'t", "like", "it", "'s", "well-made", "U.S", ".", "e-mail", ",", "3.50", "$", "...", "ok", "!"]
    try:
        import sacremoses  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"tokenizer: 'moses' needs the sacremoses package"):
            make_tokenizer("moses")


# ------------------------------------------------------------------------------------------ Yelp raw layout


def _yelp_raw(root: Path) -> Path:
    """Tiny Yelp Open Dataset files, built so that each Copycat / MultimodalSum rule removes a known amount
    (min_revs 3, tokens 5..30, min_words 6, percentile 90, train_part 0.5; B4 is a gold-set business):

    B1: 5 valid (one non-ASCII) + 1 too short + 1 too long; B2: 3 valid + 1 of 7 tokens but 1 word; B3: 4 valid;
    B4: 3 valid (gold); B5: 2 valid (below min_revs); B6: 20 valid (above the percentile, 12.5); B7: 3 reviews of
    one word each (emptied by the word rule); B8: a business without reviews. Photos: B1 2, B2 1, B9 10 (popular)."""
    reviews, n = [], 0

    def add(bid, text, stars=4):
        nonlocal n
        n += 1
        reviews.append({"review_id": f"r{n:03d}", "user_id": "u", "business_id": bid, "stars": stars, "useful": 0,
                        "text": text, "date": "2019-01-01 00:00:00"})

    for k in range(4):
        add("B1", _words(10, f"tasty{k}"), stars=5)
    add("B1", "Café   très\tbien\n" + _words(8))
    add("B1", "too short")
    add("B1", _words(40))
    for k in range(3):
        add("B2", _words(12, f"nice{k}"))
    add("B2", "fine,fine,fine,fine")
    for k in range(4):
        add("B3", _words(9))
    for k in range(3):
        add("B4", _words(9))
    for k in range(2):
        add("B5", _words(9))
    for k in range(20):
        add("B6", _words(9))
    for k in range(3):
        add("B7", "x,x,x,x")
    _jsonl(root / "yelp_academic_dataset_review.json", reviews)
    base = {"address": "1 Road", "city": "X", "state": "NV", "latitude": 1.0, "longitude": 2.0, "review_count": 3, "is_open": 1}
    businesses = [
        {**base, "business_id": "B1", "name": "Alpha", "stars": 4.5, "categories": "Pizza, Restaurants",
         "attributes": {"NoiseLevel": "u'very_loud'", "RestaurantsPriceRange2": "2", "BikeParking": "True", "WiFi": "'free'",
                        "Ambience": "{'casual': True, 'classy': False}", "Alcohol": "u'full_bar'"},
         "hours": {"Monday": "11:0-22:0", "Friday": "9:30-23:0"}},
        {**base, "business_id": "B2", "name": "Beta", "stars": 3.0, "categories": "Sushi",  # older release: real bools and dicts
         "attributes": {"NoiseLevel": "quiet", "RestaurantsPriceRange2": 4, "BikeParking": False,
                        "Ambience": {"casual": False, "divey": True}, "Alcohol": "none"},
         "hours": {"Monday": "0:0-0:0"}},
        {**base, "business_id": "B3", "name": "Gamma", "stars": 2, "categories": None,
         "attributes": {"NoiseLevel": "None", "RestaurantsPriceRange2": "None", "BikeParking": "None", "Ambience": "None"},
         "hours": {"Monday": "7:0-15:0"}},
    ] + [{**base, "business_id": f"B{k}", "name": f"B{k}", "stars": 4.0, "categories": None, "attributes": None, "hours": None}
         for k in range(4, 9)]
    _jsonl(root / "yelp_academic_dataset_business.json", businesses)
    photos = [{"photo_id": "p1", "business_id": "B1", "caption": "pizza", "label": "food"},
              {"photo_id": "p2", "business_id": "B1", "caption": "", "label": "inside"},
              {"photo_id": "p3", "business_id": "B2", "caption": "sushi", "label": "food"}]
    photos += [{"photo_id": f"q{k}", "business_id": "B9", "caption": "", "label": "food"} for k in range(10)]
    _jsonl(root / "photos.json", photos)
    (root / "photos").mkdir()
    for i, pid in enumerate(["p1", "p2", "p3"]):
        (root / "photos" / f"{pid}.jpg").write_bytes(_jpeg((40 * i, 100, 200)))
    return root


def _yelp_gold_dir(root: Path, business_ids: list[str]) -> Path:
    path = root / "data/yelp/test/summaries_0-200_cleaned.csv"
    path.parent.mkdir(parents=True)
    path.write_text("Input.business_id,Answer.summary\n" + "".join(f"{b},s\n" for b in business_ids))
    return root


def _yelp_params(tmp_path: Path, **kw) -> YelpParams:
    gold = _yelp_gold_dir(tmp_path / "gold", ["B4", ""])
    return YelpParams(**{"min_revs": 3, "min_len": 5, "max_len": 30, "min_words": 6, "train_part": 0.5,
                         "exclude_gold": str(gold), "attribute_min_presence": 0.2, **kw})


def test_yelp_converter_applies_each_rule(tmp_path):
    raw = _yelp_raw(tmp_path / "yelp")
    out = tmp_path / "out"
    c = convert_yelp(raw, out, _yelp_params(tmp_path))
    assert (c["reviews_read"], c["entities_read"]) == (43, 7)
    assert (c["reviews_removed_too_short_tokens"], c["reviews_removed_too_long_tokens"]) == (1, 1)
    assert (c["entities_removed_below_min_revs"], c["reviews_removed_below_min_revs"]) == (1, 2)  # B5
    assert c["percentile_threshold"] == 12.5
    assert (c["entities_removed_above_percentile"], c["reviews_removed_above_percentile"]) == (1, 20)  # B6
    assert (c["entities_removed_gold"], c["reviews_removed_gold"]) == (1, 3)  # B4
    assert c["entities_partitioned"] == {"train": 2, "val": 2}
    assert c["reviews_removed_below_min_words"] == 4  # B2's one-word review + B7's three
    assert (c["entities_removed_after_text_filter"], c["reviews_removed_duplicate_text"]) == (1, 0)  # B7
    assert c["reviews_skipped_incomplete"] == 0
    t = validate(out, check_images=True)
    ents = {e["entity_id"]: e for e in t.entities.to_pylist()}
    assert sorted(ents) == ["B1", "B2", "B3"]
    assert sum(c["entities_kept"].values()) == 3 and sum(c["reviews_kept"].values()) == t.reviews.num_rows == 12
    revs = t.reviews.to_pylist()
    assert {r["split"] for r in revs if r["entity_id"] == "B1"} == {ents["B1"]["split"]}
    assert "Caf trs bien good good good good good good good good" in [r["text"] for r in revs]  # ASCII + whitespace
    assert all(r["text"].isascii() and "  " not in r["text"] for r in revs)
    # the table: official string normalisation, nested dicts flattened, hours padded, presence rule (WiFi: 1/8 < 0.2)
    b1, b2, b3 = ents["B1"], ents["B2"], ents["B3"]
    assert b1["NoiseLevel"] == "very loud" and b1["Alcohol"] == "full bar" and b1["RestaurantsPriceRange2"] == "average"
    assert b1["BikeParking"] is True and b1["Ambience_casual"] is True and b1["Ambience_classy"] is False and b1["Ambience_divey"] is None
    assert b1["hours_Monday"] == "11:00-22:00" and b3["hours_Monday"] == "07:00-15:00" and b1["hours_Sunday"] is None
    assert b1["hours_Friday"] is None and "hours_Friday" in c["fields_nulled_below_presence"]  # 1 business of 8
    assert b1["categories"] == ["Pizza", "Restaurants"] and b1["avg_rating"] == 4.5 and b1["WiFi"] is None
    assert b2["RestaurantsPriceRange2"] == "very expensive" and b2["BikeParking"] is False and b2["Ambience_divey"] is True
    assert b2["Alcohol"] == "none" and b2["hours_Monday"] == "00:00-00:00"
    assert b3["NoiseLevel"] is None and b3["BikeParking"] is None and b3["categories"] is None and b3["has_table"]
    assert c["attribute_presence"]["WiFi"] == 0.125 and c["attribute_presence"]["Ambience"] == 0.25
    assert c["attribute_presence"]["name"] == 1.0 and "WiFi" in c["fields_nulled_below_presence"]
    assert t.extra["attribute_presence"] == c["attribute_presence"]
    # photos: B9 (10 photos) is not below the 90th percentile (8.4) of the photo counts; B1 and B2 keep theirs
    assert c["photo_percentile_threshold"] == pytest.approx(8.4) and c["businesses_dropped_popular"] == 1
    imgs = t.images.to_pylist()
    assert [(i["entity_id"], i["photo_id"], i["path"]) for i in imgs] == [("B1", "p1", "photos/p1.jpg"), ("B1", "p2", "photos/p2.jpg"),
                                                                         ("B2", "p3", "photos/p3.jpg")]
    assert imgs[0]["sha256"] == hashlib.sha256((raw / "photos/p1.jpg").read_bytes()).hexdigest() and imgs[1]["caption"] is None
    assert t.image_root() == raw.resolve()
    # the partition is seeded: the same seed gives the same splits, the tables the same bytes
    convert_yelp(raw, tmp_path / "again", _yelp_params(tmp_path / "g2"))
    assert (out / "reviews.parquet").read_bytes() == (tmp_path / "again" / "reviews.parquet").read_bytes()


YELP_BAD = [
    ("yelp_academic_dataset_review.json", 0, lambda r: r.pop("stars"),
     r"^yelp_academic_dataset_review\.json: line 1 \(review 'r001', entity 'B1'\): stars: missing"),
    ("yelp_academic_dataset_review.json", 2, lambda r: r.update(stars="five"),
     r"^yelp_academic_dataset_review\.json: line 3 \(review 'r003', entity 'B1'\): stars: expected a number, got 'five'$"),
    ("yelp_academic_dataset_business.json", 1, lambda r: r.pop("hours"),
     r"^yelp_academic_dataset_business\.json: line 2 \(entity 'B2'\): hours: missing"),
    ("yelp_academic_dataset_business.json", 2, lambda r: r.update(stars="four"),
     r"^yelp_academic_dataset_business\.json: line 3 \(entity 'B3'\): stars: expected a number, got 'four'$"),
    ("yelp_academic_dataset_business.json", 0, lambda r: r["attributes"].update(BikeParking="maybe"),
     r"^yelp_academic_dataset_business\.json: line 1 \(entity 'B1'\): attributes\.BikeParking: expected a boolean"),
    ("yelp_academic_dataset_business.json", 0, lambda r: r["hours"].update(Monday="noon"),
     r"^yelp_academic_dataset_business\.json: line 1 \(entity 'B1'\): hours\.Monday: expected 'H:M-H:M'"),
    ("yelp_academic_dataset_business.json", 0, lambda r: r["attributes"].update(RestaurantsPriceRange2="7"),
     r"^yelp_academic_dataset_business\.json: line 1 \(entity 'B1'\): attributes\.RestaurantsPriceRange2: expected 1\.\.4, got '7'$"),
    ("photos.json", 2, lambda r: r.pop("business_id"),
     r"^photos\.json: line 3 \(photo 'p3', entity None\): business_id: missing"),
]


@pytest.mark.parametrize("fname,line,mutate,message", YELP_BAD, ids=[b[3][1:50] for b in YELP_BAD])
def test_yelp_bad_input_names_file_line_entity_and_field(tmp_path, fname, line, mutate, message):
    raw = _yelp_raw(tmp_path / "yelp")
    rows = [json.loads(x) for x in (raw / fname).read_text().splitlines()]
    mutate(rows[line])
    _jsonl(raw / fname, rows)
    with pytest.raises(ReviewDataError, match=message):
        convert_yelp(raw, tmp_path / "out", _yelp_params(tmp_path))
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["gold", "yelp"]


def test_yelp_photo_that_does_not_decode_is_an_error_before_anything_is_written(tmp_path):
    raw = _yelp_raw(tmp_path / "yelp")
    good = (raw / "photos/p2.jpg").read_bytes()
    (raw / "photos/p2.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    with pytest.raises(ReviewDataError, match=r"^photos\.json: line 2 \(photo 'p2', entity 'B1'\): photo: p2\.jpg does not decode"):
        convert_yelp(raw, tmp_path / "out", _yelp_params(tmp_path))
    (raw / "photos/p2.jpg").unlink()
    with pytest.raises(ReviewDataError, match=r"^photos\.json: line 2 \(photo 'p2', entity 'B1'\): photo: file .*p2\.jpg not found$"):
        convert_yelp(raw, tmp_path / "out", _yelp_params(tmp_path / "g2"))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- Amazon raw layout


def _amazon_raw(root: Path) -> Path:
    """Two categories (min_revs 3, tokens 5..30, min_words 6, percentile 90, train_part 0.5):
    Cat1: P1 5 valid (one text repeated) + 1 record without reviewText, P2 3 valid, P3 2 (below min_revs),
    P9 12 (above the percentile 10.6); Cat2: P1 3 (already in Cat1), P4 4 (one of a single word), P8 9 (above 8)."""
    def rev(asin, text, overall=4.0, k=0):
        return {"reviewerID": f"U{k}", "asin": asin, "reviewerName": "n", "helpful": [0, 0], "reviewText": text,
                "overall": overall, "summary": "s", "unixReviewTime": 1, "reviewTime": "01 1, 2014"}

    cat1 = [rev("P1", _words(10, f"kettle{k}"), o, k) for k, o in enumerate([5.0, 4.0, 3.0, 4.0])]
    cat1.append(rev("P1", _words(10, "kettle0"), 4.0, 9))  # the same text again
    cat1.append({"reviewerID": "U8", "asin": "P1", "overall": 1.0})  # incomplete: skipped, not rated
    cat1 += [rev("P2", _words(8, f"mug{k}") + " &amp; lid", k=k) for k in range(3)]
    cat1 += [rev("P3", _words(8), k=k) for k in range(2)]
    cat1 += [rev("P9", _words(8), k=k) for k in range(12)]
    cat2 = [rev("P1", _words(8), k=k) for k in range(3)]
    cat2 += [rev("P4", _words(8, f"lamp{k}"), k=k) for k in range(3)] + [rev("P4", "x,x,x,x")]
    cat2 += [rev("P8", _words(8), k=k) for k in range(9)]
    _jsonl(root / "reviews_Cat1.json.gz", cat1)
    _jsonl(root / "reviews_Cat2.json.gz", cat2)
    meta1 = [{"asin": "P1", "title": "Tea &amp; Kettle", "price": 12.5, "imUrl": "http://ecx.images-amazon.com/images/I/1.jpg",
              "categories": [["Home", "Kitchen"], ["Gifts"]], "brand": "Acme", "description": "<b>Good</b>&nbsp;kettle",
              "salesRank": {"Home": 3}, "related": {"also_bought": ["P2"]}},
             {"asin": "P2", "title": "Mug", "imUrl": "http://ecx.images-amazon.com/images/I/2.jpg", "categories": [["Home"]]},
             {"asin": "P9", "title": "Popular", "categories": [["Home"]]}]
    meta2 = [{"asin": "P1", "title": "Other"}, {"asin": "P4", "categories": [["Lamps"]], "price": 3}]
    _jsonl(root / "meta_Cat1.json.gz", meta1, literal=True)
    _jsonl(root / "meta_Cat2.json.gz", meta2, literal=True)
    (root / "images").mkdir()
    (root / "images" / "P1.jpg").write_bytes(_jpeg())
    return root


AMAZON_KW = {"min_revs": 3, "min_len": 5, "max_len": 30, "min_words": 6, "train_part": 0.5, "exclude_gold": None,
             "categories": ["Cat1", "Cat2"]}


def test_amazon_converter_applies_each_rule(tmp_path):
    raw = _amazon_raw(tmp_path / "amazon")
    out = tmp_path / "out"
    c = convert_amazon(raw, out, AmazonParams(**AMAZON_KW))
    assert (c["reviews_read"], c["entities_read"], c["reviews_skipped_incomplete"]) == (38, 7, 1)
    assert (c["entities_removed_below_min_revs"], c["reviews_removed_below_min_revs"]) == (1, 2)  # P3
    assert c["per_category"]["Cat1"]["percentile_threshold"] == pytest.approx(10.6)
    assert c["per_category"]["Cat2"]["percentile_threshold"] == pytest.approx(8.0)
    assert (c["entities_removed_above_percentile"], c["reviews_removed_above_percentile"]) == (2, 21)  # P9, P8
    assert (c["entities_removed_duplicate_across_categories"], c["reviews_removed_duplicate_across_categories"]) == (1, 3)
    assert c["entities_partitioned"] == {"train": 1, "val": 2}
    assert (c["reviews_removed_duplicate_text"], c["reviews_removed_below_min_words"]) == (1, 1)
    assert c["entities_with_image_url_but_no_file"] == 1 and c["images_kept"] == 1 and c["entities_without_meta_record"] == 0
    t = validate(out, check_images=True)
    ents = {e["entity_id"]: e for e in t.entities.to_pylist()}
    assert sorted(ents) == ["P1", "P2", "P4"] and t.reviews.num_rows == 4 + 3 + 3
    p1 = ents["P1"]
    assert p1["category"] == "Cat1" and p1["name"] == "Tea & Kettle" and p1["price"] == 12.5 and p1["brand"] == "Acme"
    assert p1["category_paths"] == [["Home", "Kitchen"], ["Gifts"]] and p1["description"] == "Good kettle"
    assert p1["avg_rating"] == 4.0  # mean overall of P1's 5 complete Cat1 records (the incomplete one is not read)
    assert p1["image_url"].startswith("http://ecx") and p1["categories"] is None and p1["NoiseLevel"] is None
    assert ents["P2"]["price"] is None and ents["P4"]["price"] == 3.0 and ents["P4"]["category"] == "Cat2"
    assert any(r["text"].endswith("mug0 & lid") for r in t.reviews.to_pylist())  # HTML-unescaped
    assert [(i["entity_id"], i["path"]) for i in t.images.to_pylist()] == [("P1", "images/P1.jpg")]
    assert {r["review_id"].split(":")[0] for r in t.reviews.to_pylist()} == {"reviews_Cat1", "reviews_Cat2"}


def test_amazon_bad_input_names_file_line_entity_and_field(tmp_path):
    raw = _amazon_raw(tmp_path / "amazon")
    with pytest.raises(ReviewDataError, match=r"^reviews_Cat1\.json\.gz: line 6 \(entity 'P1'\): reviewText: missing"):
        convert_amazon(raw, tmp_path / "out", AmazonParams(**{**AMAZON_KW, "skip_incomplete_reviews": False}))
    meta = [{"asin": "P1", "price": "cheap"}]
    _jsonl(raw / "meta_Cat1.json.gz", meta, literal=True)
    with pytest.raises(ReviewDataError, match=r"^meta_Cat1\.json\.gz: line 1 \(entity 'P1'\): price: expected a number >= 0, got 'cheap'$"):
        convert_amazon(raw, tmp_path / "out", AmazonParams(**AMAZON_KW))
    _jsonl(raw / "meta_Cat1.json.gz", [{"asin": "P1", "categories": "Home"}], literal=True)
    with pytest.raises(ReviewDataError, match=r"^meta_Cat1\.json\.gz: line 1 \(entity 'P1'\): categories: expected a list of category paths"):
        convert_amazon(raw, tmp_path / "out", AmazonParams(**AMAZON_KW))
    _jsonl(raw / "meta_Cat1.json.gz", [{"asin": "P1"}], literal=True)
    (raw / "images" / "P1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ReviewDataError, match=r"^images/P1\.jpg \(entity 'P1'\): image: P1\.jpg does not decode"):
        convert_amazon(raw, tmp_path / "out", AmazonParams(**AMAZON_KW))
    (raw / "meta_Cat2.json.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"meta_Cat2\.json\.gz or meta_Cat2\.json: not found"):
        convert_amazon(raw, tmp_path / "out", AmazonParams(**AMAZON_KW))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- gold sets


def test_gold_csv_errors_name_file_row_and_column(tmp_path):
    cols = ["Input.business_id", *[f"Input.original_review_{k}" for k in range(8)], "Answer.summary",
            *[f"Input.original_review_{k}_id" for k in range(8)]]
    path = tmp_path / "data/yelp/test/summaries_0-200_cleaned.csv"
    path.parent.mkdir(parents=True)
    row = ["b1", *[f"review {k}" for k in range(8)], "a summary", *[f"id{k}" for k in range(8)]]
    bad = list(row)
    bad[0], bad[4] = "b2", " "
    path.write_text(",".join(cols) + "\n" + ",".join(row) + "\n" + ",".join(bad) + "\n")
    with pytest.raises(ReviewDataError, match=r"^summaries_0-200_cleaned\.csv: row 1 \(entity 'b2'\): Input\.original_review_3: empty text$"):
        convert_yelp_gold(tmp_path, tmp_path / "out")
    path.write_text(",".join(cols[:-1]) + "\n")
    with pytest.raises(ReviewDataError, match=r"^summaries_0-200_cleaned\.csv: Input\.original_review_7_id: column missing"):
        convert_yelp_gold(tmp_path, tmp_path / "out")
    amazon = tmp_path / "data/amazon/test"
    amazon.mkdir(parents=True)
    (amazon / "dev.csv").write_text("cat\tprod_id\n")
    with pytest.raises(ReviewDataError, match=r"^dev\.csv: rev1: column missing"):
        convert_amazon_gold(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.mirror
def test_catalog_entry_lists_every_mirror_file_as_source_txt():
    from data.catalog import dataset

    folder = mirror_dir("multimodalsum_eval")
    listed = {}
    for line in (folder / "SOURCE.txt").read_text().splitlines():
        m = re.match(r"^([0-9a-f]{64})\s+(\d+)\s+\./(\S+)$", line)
        if m:
            listed[m[3]] = (m[1], int(m[2]))
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"SOURCE.txt"}
    entry = dataset("multimodalsum_eval")
    assert {f.path: (f.sha256, f.size) for f in entry.files} == listed and set(listed) == files
    assert all(f.url.startswith("https://raw.githubusercontent.com/nc-ai/MultimodalSum/cff621120d872ec5c1a4945756fc93d12acc4141/")
               for f in entry.files)


@pytest.mark.mirror
def test_gold_sets_from_the_downloaded_mirror(tmp_path, capsys):
    from data.download import fetch_dataset

    mirror = mirror_dir("multimodalsum_eval").parent
    raw = tmp_path / "raw"
    fetch_dataset("multimodalsum_eval", raw, mirror=str(mirror), progress=False)
    for source in ("yelp_gold", "amazon_gold"):
        assert main(["--source", source, "--raw", str(raw), "--out", str(tmp_path / source),
                     "--metrics", str(tmp_path / "m" / f"{source}.json"), "--params", str(REPO / "params.yaml")]) == 0
    out = capsys.readouterr().out
    assert "yelp_gold -> " in out and "test 100 entities/800 reviews/100 references/0 images" in out
    yelp = read_tables(tmp_path / "yelp_gold")
    m = json.loads((tmp_path / "m" / "yelp_gold.json").read_text())
    assert {s: (v["entities"], v["reviews"], v["references"]) for s, v in m["splits"].items()} == {
        "dev": (100, 800, 100), "test": (100, 800, 100)}
    ents = yelp.entities.to_pylist()
    assert [e["row"] for e in ents] == list(range(200)) and [e["split"] for e in ents] == ["dev"] * 100 + ["test"] * 100
    assert not any(e["has_table"] for e in ents) and yelp.images.num_rows == 0
    assert ents[156]["entity_id"] == "yelp_gold_row_156" and ents[156]["split"] == "test"
    assert m["conversion"]["rows_without_business_id"] == [156] and m["conversion"]["damaged_review_ids"] == 18
    revs = yelp.reviews.to_pylist()
    per = {}
    for r in revs:
        per.setdefault(r["entity_id"], []).append(r["position"])
    assert all(v == list(range(8)) for v in per.values()) and len(per) == 200
    assert sum(r["source_review_id"] is None for r in revs) == 18 and all(r["rating"] is None for r in revs)
    assert revs[0]["text"].startswith("Woww!   My order:")  # verbatim
    n_test_lines = len((raw / "output/Yelp.txt").read_text().splitlines())
    assert n_test_lines == sum(e["split"] == "test" for e in ents) == 100  # output line j <-> row 100 + j

    amazon = read_tables(tmp_path / "amazon_gold")
    m = json.loads((tmp_path / "m" / "amazon_gold.json").read_text())
    assert {s: (v["entities"], v["reviews"], v["references"]) for s, v in m["splits"].items()} == {
        "dev": (28, 224, 84), "test": (32, 256, 96)}
    ents = amazon.entities.to_pylist()
    test_ents = [e for e in ents if e["split"] == "test"]
    assert [e["row"] for e in test_ents] == list(range(32)) == list(range(len((raw / "output/Amazon.txt").read_text().splitlines())))
    assert {e["category"] for e in ents} == {"cloth", "electronics", "health_personal_care", "home_kitchen"}
    assert ents[0]["entity_id"] == "B000A2FTN6" and m["conversion"]["all_csv_is_dev_plus_test"] is True
    refs = [r for r in amazon.references.to_pylist() if r["entity_id"] == test_ents[4]["entity_id"]]
    assert [r["ref_index"] for r in refs] == [0, 1, 2]
    assert refs[0]["text"].startswith('This is the perfect "comfy shoe," great')  # standard CSV quoting, as the official reader


# --------------------------------------------------------------------------------------------- synthetic


def _syn(out: Path, **kw) -> Path:
    from data.synthetic_reviews import generate

    return generate(out, **{"train": 6, "dev": 4, "test": 12, "images_per_entity": 1, **kw})


def _tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synthetic_set_is_deterministic_labelled_and_valid(tmp_path):
    a, b, c = _syn(tmp_path / "a"), _syn(tmp_path / "b"), _syn(tmp_path / "c", seed=1)
    assert _tree_digest(a) == _tree_digest(b) and _tree_digest(a) != _tree_digest(c)
    t = validate(a, check_images=True)
    assert t.meta["synthetic"] is True and t.meta["dataset"] == "synthetic" and t.meta["image_root"] == "."
    ents = t.entities.to_pylist()
    assert {e["source"] for e in ents} == {"synthetic"} and all(e["has_table"] for e in ents)
    assert [sum(e["split"] == s for e in ents) for s in ("train", "dev", "test")] == [6, 4, 12]
    n_rev = {}
    for r in t.reviews.to_pylist():
        n_rev[r["entity_id"]] = n_rev.get(r["entity_id"], 0) + 1
    assert {n_rev[e["entity_id"]] for e in ents if e["split"] == "train"} == {10}
    assert {n_rev[e["entity_id"]] for e in ents if e["split"] != "train"} == {8}
    with Image.open(a / t.images.to_pylist()[0]["path"]) as im:
        assert im.size == (32, 32)


def _unigram_f1(candidate: str, reference: str) -> float:
    from collections import Counter

    c, r = Counter(re.findall(r"[a-z]+", candidate.lower())), Counter(re.findall(r"[a-z]+", reference.lower()))
    overlap = sum((c & r).values())
    return 0.0 if not overlap else 2 * overlap / (sum(c.values()) + sum(r.values()))


def test_synthetic_photos_and_tables_carry_facts_the_reviews_lack(tmp_path):
    """A summary written from the reviews alone (cuisine, quality, and only the facts some review mentions) scores a
    clearly lower unigram F1 against the references than one that also reads the photo colour and the table."""
    from data.synthetic_reviews import COLOURS, OPENING, fact_sentences

    out = _syn(tmp_path / "s")
    t = read_tables(out)
    ents = {e["entity_id"]: e for e in t.entities.to_pylist() if e["split"] == "test"}
    reviews, refs, photo = {}, {}, {}
    for r in t.reviews.to_pylist():
        reviews.setdefault(r["entity_id"], []).append(r)
    for r in t.references.to_pylist():
        refs[r["entity_id"]] = r["text"]
    for i in t.images.to_pylist():
        photo[i["entity_id"]] = out / i["path"]
    text_only, multimodal = [], []
    for eid, e in ents.items():
        rs = reviews[eid]
        cuisine = re.search(r"The (\w+) here was", rs[0]["text"])[1]
        stars = sum(r["rating"] for r in rs) / len(rs)
        quality = "great" if stars >= 4 else "good" if stars >= 3 else "disappointing"
        opener = f"This {cuisine} place is {quality}."
        sentences = re.split(r"(?<=\.) ", " ".join(r["text"] for r in rs))
        mentioned = [s for s in sentences if s.startswith(("The walls", "There is", "Prices", "You can", "It is"))]
        text_only.append(_unigram_f1(" ".join([opener, *dict.fromkeys(mentioned)]), refs[eid]))
        with Image.open(photo[eid]) as im:
            px = [p for p in im.convert("RGB").getdata() if min(p) < 235]
        mean = [sum(p[k] for p in px) / len(px) for k in range(3)]
        colour = min(COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLOURS[c], mean)))
        opening = next(k for k, v in OPENING.items() if v == e["hours_Monday"])
        facts = {"colour": colour, "shape": "circle", "price": e["RestaurantsPriceRange2"], "outdoor": e["OutdoorSeating"], "opening": opening}
        multimodal.append(_unigram_f1(" ".join([opener, *fact_sentences(facts).values()]), refs[eid]))
    print(f"unigram F1 text-only {sum(text_only) / len(text_only):.3f}, with photo + table {sum(multimodal) / len(multimodal):.3f}")
    assert sum(multimodal) / len(multimodal) > sum(text_only) / len(text_only) + 0.1


# -------------------------------------------------------------------------------------------------- params


def test_params_are_validated_before_anything_is_written(tmp_path):
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert load_params(REPO / "params.yaml", "yelp").min_len == 35 and load_params(REPO / "params.yaml", "amazon").max_len == 70
    cases = (("synthetic", "trian", 3, r"data\.build_review_tables\.synthetic\.trian: unknown key"),
             ("synthetic", "train_reviews", 5,
              r"data\.build_review_tables\.synthetic\.train_reviews: Input should be greater than or equal to 9"),
             ("yelp_gold", "rows", 100, r"data\.build_review_tables\.yelp_gold\.rows: unknown key"),
             ("yelp", "min_len", 200, r"data\.build_review_tables\.yelp\.min_len: must be <= max_len \(got 200 > 100\)"))
    for source, key, value, expect in cases:
        sec = raw["data"]["build_review_tables"]
        bad = {**raw, "data": {"build_review_tables": {**sec, source: {**sec[source], key: value}}}}
        p = tmp_path / "params.yaml"
        p.write_text(yaml.safe_dump(bad))
        with pytest.raises(ValueError, match=expect):
            load_params(p, source)
        args = ["--source", source, "--params", str(p), "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json")]
        assert main(args + (["--raw", str(tmp_path)] if source != "synthetic" else [])) == 1
        assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()


def test_synthetic_stage_cli_writes_tables_and_metrics(tmp_path, capsys):
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["build_review_tables"]["synthetic"].update({"train": 3, "dev": 2, "test": 2})
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    assert main(["--source", "synthetic", "--params", str(p), "--out", str(tmp_path / "syn"), "--metrics", str(tmp_path / "m" / "s.json")]) == 0
    m = json.loads((tmp_path / "m" / "s.json").read_text())
    assert m["source"] == "synthetic" and m["synthetic"] is True and m["total"]["entities"] == 7
    assert m["splits"]["train"]["reviews"] == 30 and m["splits"]["dev"]["images"] == 4
    assert "synthetic -> " in capsys.readouterr().out
