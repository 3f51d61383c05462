"""SYNTHETIC multimodal review collections in the review schema (``data/review_schema.py``).

This is not a benchmark of the paper. It exists so that the whole MultimodalSum path (review tables -> text, image
and table encoders -> summaries -> ROUGE) can run, and *learn something that needs the images and tables*, on a
2-core CPU and in CI. Every entity has ``source = "synthetic"``, the folder's metadata says ``synthetic: true`` and
the dataset name is ``synthetic``.

Each entity (a made-up restaurant, Yelp table layout) has five hidden facts:

* in its **photos** (``images_per_entity`` small JPEGs under ``<out>/images/``): a dominant background colour
  (``COLOURS``) and a white shape (``SHAPES``) drawn on it, with a little pixel noise;
* in its **metadata table**: ``RestaurantsPriceRange2`` (cheap .. very expensive), the boolean ``OutdoorSeating``
  and the opening hours (``hours_Monday..Sunday``: a morning, all-day or evening slot, ``OPENING``);
* in its **text** and its table: the cuisine (``categories``) and, through the review ratings, the quality.

Every review names the cuisine and a sentiment that follows its rating; each image or table fact is mentioned in a
review only with probability ``mention_prob``. The reference summaries state every fact (``summary``). So a
text-only summariser can get the cuisine and the quality from the reviews, and the colour, shape, price, seating and
hours only when some input review happens to mention them (probability ``1 - (1 - mention_prob)^n_reviews``); a
model that reads the photos and the table can state all of them, which is the ROUGE gap the image and table
encoders should open. Training reviews mention the facts at the same rate, so leave-one-out pseudo-summaries teach
the mapping colour/shape/price/... -> words.

Splits: ``train`` entities have ``train_reviews`` reviews (>= 9: leave-one-out with 8 inputs), ``dev`` and
``test`` entities ``input_reviews`` (8, like the gold sets); every entity has ``references`` reference summaries
(the self-supervised recipe ignores them on train). Deterministic for a seed: the same arguments give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from data.review_schema import HOURS_COLUMNS, PRICE_RANGE, write_tables

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40), "green": (40, 150, 60), "blue": (40, 70, 200),
    "yellow": (225, 200, 30), "purple": (130, 50, 170), "orange": (235, 125, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
CUISINES: tuple[str, ...] = ("pizza", "sushi", "tacos", "burgers", "noodles", "salads")
PRICES: tuple[str, ...] = tuple(PRICE_RANGE.values())  # cheap, average, expensive, very expensive
OPENING: dict[str, str] = {"morning": "07:00-15:00", "all day": "10:00-22:00", "evening": "17:00-23:30"}
PRICE_WORDS = {"cheap": "cheap", "average": "fair", "expensive": "high", "very expensive": "very high"}
QUALITY = ((4.0, "great"), (3.0, "good"), (0.0, "disappointing"))
SENTIMENT = {5: "amazing", 4: "really good", 3: "okay", 2: "not great", 1: "bad"}
FILLER = (
    "The staff were friendly.", "We waited a little for a table.", "Service was quick.", "I came here with friends.",
    "The menu has plenty of choice.", "Parking was easy to find.", "It was busy on a weekday.", "The portions were large.",
    "I would come back.", "The music was a bit loud.", "We ordered a lot to share.", "The place was clean.",
)


def _quality(stars: float) -> str:
    return next(word for threshold, word in QUALITY if stars >= threshold)


def facts(rng: random.Random) -> dict[str, Any]:
    """The hidden facts of one entity."""
    return {"colour": rng.choice(list(COLOURS)), "shape": rng.choice(SHAPES), "cuisine": rng.choice(CUISINES),
            "price": rng.choice(PRICES), "outdoor": rng.random() < 0.5, "opening": rng.choice(list(OPENING)),
            "stars": rng.choice([2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0])}


def fact_sentences(f: dict[str, Any]) -> dict[str, str]:
    """One sentence per image / table fact (used in reviews, with probability, and in every summary)."""
    return {
        "colour": f"The walls are painted {f['colour']}.",
        "shape": f"There is a big {f['shape']} on the sign.",
        "price": f"Prices are {PRICE_WORDS[f['price']]}.",
        "outdoor": "You can sit outside on the terrace." if f["outdoor"] else "There is no outdoor seating.",
        "opening": f"It is open in the {f['opening']}." if f["opening"] != "all day" else "It is open all day.",
    }


def summary(f: dict[str, Any], rng: random.Random | None = None) -> str:
    """A reference summary stating every fact; with ``rng`` the fact sentences are shuffled (a second reference)."""
    opening = f"This {f['cuisine']} place is {_quality(f['stars'])}."
    rest = list(fact_sentences(f).values())
    if rng is not None:
        rng.shuffle(rest)
    return " ".join([opening, *rest])


def review(f: dict[str, Any], rating: int, rng: random.Random, mention_prob: float) -> str:
    parts = [f"The {f['cuisine']} here was {SENTIMENT[rating]}."]
    parts += rng.sample(FILLER, rng.randint(1, 3))
    parts += [s for s in fact_sentences(f).values() if rng.random() < mention_prob]
    rng.shuffle(parts)  # the cuisine sentence may come anywhere
    return " ".join(parts)


def draw_image(f: dict[str, Any], rng: random.Random, size: int) -> bytes:
    """A JPEG: the entity's colour as background (jittered), its shape in white, some speckle noise."""
    base = COLOURS[f["colour"]]
    bg = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in base)
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    for _ in range(size):
        x, y = rng.randrange(size), rng.randrange(size)
        d.point((x, y), fill=tuple(max(0, c - rng.randint(20, 60)) for c in bg))
    s = rng.randint(size // 3, size // 2)
    x0, y0 = rng.randint(1, size - s - 2), rng.randint(1, size - s - 2)
    box = (x0, y0, x0 + s, y0 + s)
    if f["shape"] == "circle":
        d.ellipse(box, fill=(250, 250, 250))
    elif f["shape"] == "square":
        d.rectangle(box, fill=(250, 250, 250))
    else:
        d.polygon([((x0 + x0 + s) / 2, y0), (x0 + s, y0 + s), (x0, y0 + s)], fill=(250, 250, 250))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def generate(out_dir: str | Path, train: int = 40, dev: int = 10, test: int = 10, train_reviews: int = 10,
             input_reviews: int = 8, references: int = 1, images_per_entity: int = 2, image_size: int = 32,
             mention_prob: float = 0.1, seed: int = 0) -> Path:
    """Write a synthetic dataset folder (the four parquet tables + ``images/``), atomically; return ``out_dir``."""
    if train_reviews < 9:
        raise ValueError(f"train_reviews: expected >= 9 (leave-one-out over 8 inputs + 1 target), got {train_reviews}")
    entities, reviews, refs, images = [], [], [], []
    blobs: dict[str, bytes] = {}
    for split_index, (split, n, n_rev) in enumerate((("train", train, train_reviews), ("dev", dev, input_reviews),
                                                      ("test", test, input_reviews))):
        for k in range(n):
            rng = random.Random(seed * 1_000_003 + split_index * 100_003 + k)
            f = facts(rng)
            eid = f"synthetic_{split}_{k:04d}"
            ent = {"entity_id": eid, "source": "synthetic", "split": split, "category": f["cuisine"], "has_table": True,
                   "name": f"{f['cuisine'].title()} Place {split} {k}", "avg_rating": f["stars"],
                   "categories": [f["cuisine"].title(), "Restaurants"], "RestaurantsPriceRange2": f["price"],
                   "OutdoorSeating": f["outdoor"]}
            for c in HOURS_COLUMNS:
                ent[c] = OPENING[f["opening"]]
            entities.append(ent)
            for j in range(n_rev):
                rating = int(min(5, max(1, round(f["stars"] + rng.gauss(0.0, 0.8)))))
                reviews.append({"entity_id": eid, "review_id": f"{eid}_r{j}", "position": j, "split": split,
                                "rating": float(rating), "text": review(f, rating, rng, mention_prob)})
            for r in range(references):
                refs.append({"entity_id": eid, "ref_index": r, "split": split, "text": summary(f, rng if r else None)})
            for p in range(images_per_entity):
                pid = f"{eid}_p{p}"
                data = draw_image(f, rng, image_size)
                blobs[f"images/{pid}.jpg"] = data
                images.append({"entity_id": eid, "photo_id": pid, "path": f"images/{pid}.jpg",
                               "sha256": hashlib.sha256(data).hexdigest(), "caption": None, "label": "synthetic"})

    def _write_images(tmp: Path) -> None:
        (tmp / "images").mkdir()
        for rel, data in blobs.items():
            (tmp / rel).write_bytes(data)

    meta = {"dataset": "synthetic", "synthetic": True, "image_root": ".",
            "notes": (f"SYNTHETIC restaurants (data/synthetic_reviews.py, seed {seed}): image facts colour + shape, table "
                      f"facts price range + outdoor seating + hours, text facts cuisine + quality; each image/table fact "
                      f"is mentioned by a review with probability {mention_prob}, by every reference summary always"),
            "extra": {"generator": {"train": train, "dev": dev, "test": test, "train_reviews": train_reviews,
                                    "input_reviews": input_reviews, "references": references,
                                    "images_per_entity": images_per_entity, "image_size": image_size,
                                    "mention_prob": mention_prob, "seed": seed}}}
    return write_tables(out_dir, entities, reviews, refs, images, meta, extra_files=_write_images)
