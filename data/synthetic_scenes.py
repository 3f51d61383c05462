"""SYNTHETIC scene graphs: coloured shapes on a canvas with programmatic relations, in the RelTR COCO schema.

This is not a benchmark of the paper. It exists so that the whole EGTR path (data stage -> detector pretraining
-> SGG training -> SGDet evaluation -> registry) can be exercised and *learned* on a 2-core CPU, and so that CI
has real images to read. Every file it writes says ``synthetic: true`` in ``meta.json``.

Scene: ``objects`` shapes (2..max) of ``classes`` kinds, each kind drawn with its own shape and a jittered base
colour, on a noisy background; one object may be placed inside a large one. Every ordered pair (i, j) of objects
gets exactly one predicate, decided by geometry (so a graph-constrained evaluator can reach recall 1):

1. ``inside``    box_i lies inside box_j;
2. ``contains``  box_j lies inside box_i;
3. ``touching``  the boxes overlap or are at most ``touch_px`` apart;
4. otherwise by the dominant axis of the centre offset: ``left of`` / ``right of`` / ``above`` / ``below``.

The predicate depends on the boxes, not on the classes, so a class-pair frequency prior cannot solve it, which
is what the learning benchmark needs (relation head vs frequency bias). A horizontal flip swaps ``left of`` and
``right of`` (see ``FLIP_SWAP``).
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle", "diamond", "ring", "bar"]
COLOURS = [(220, 50, 50), (40, 160, 60), (50, 80, 220), (230, 180, 30), (150, 60, 190), (30, 170, 190)]
PREDICATES = ["left of", "right of", "above", "below", "inside", "contains", "touching"]
FLIP_SWAP = [["left of", "right of"]]


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)
    elif shape == "ring":
        w = max(2, (x1 - x0) // 6)
        draw.ellipse(box, outline=colour, width=w)
    elif shape == "bar":
        h = max(3, (y1 - y0) // 3)
        draw.rectangle((x0, int(cy - h / 2), x1, int(cy + h / 2)), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _shape_box(shape: str, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The tight box of what is drawn (a bar is thinner than its placement box)."""
    x0, y0, x1, y1 = box
    if shape == "bar":
        cy, h = (y0 + y1) / 2, max(3, (y1 - y0) // 3)
        return x0, int(cy - h / 2), x1, int(cy + h / 2)
    return box


def predicate(a: tuple[float, ...], b: tuple[float, ...], touch_px: float = 2.0) -> str:
    """The predicate of the ordered pair (a, b); boxes xyxy."""
    if a[0] >= b[0] and a[1] >= b[1] and a[2] <= b[2] and a[3] <= b[3]:
        return "inside"
    if b[0] >= a[0] and b[1] >= a[1] and b[2] <= a[2] and b[3] <= a[3]:
        return "contains"
    gap_x = max(b[0] - a[2], a[0] - b[2])
    gap_y = max(b[1] - a[3], a[1] - b[3])
    if max(gap_x, gap_y) <= touch_px:
        return "touching"
    dx = (b[0] + b[2]) / 2 - (a[0] + a[2]) / 2
    dy = (b[1] + b[3]) / 2 - (a[1] + a[3]) / 2
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def make_scene(rng: random.Random, size: int, max_objects: int, min_size: int, max_size: int,
               num_classes: int) -> tuple[Image.Image, list[tuple[int, tuple[int, int, int, int]]]]:
    """One image and its objects [(class, xyxy box)]; objects do not overlap unless one is inside another."""
    bg = tuple(rng.randint(200, 245) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    for _ in range(size // 4):  # background speckle
        x, y = rng.randrange(size), rng.randrange(size)
        draw.point((x, y), fill=tuple(max(0, c - rng.randint(20, 60)) for c in bg))
    n = rng.randint(2, max_objects)
    objects: list[tuple[int, tuple[int, int, int, int]]] = []
    placed: list[tuple[int, int, int, int]] = []
    attempts = 0
    while len(objects) < n and attempts < 200:
        attempts += 1
        cls = rng.randrange(num_classes)
        s = rng.randint(min_size, max_size)
        nested = objects and rng.random() < 0.2 and SHAPES[objects[-1][0]] in {"square", "ring", "circle"}
        if nested:  # a small object inside the previous (large) one
            px0, py0, px1, py1 = objects[-1][1]
            inner = (px1 - px0) // 2
            if inner < min_size // 2 + 4:
                continue
            s = max(6, inner - 2)
            x0 = rng.randint(px0 + (px1 - px0 - s) // 2 - 1, px0 + (px1 - px0 - s) // 2 + 1)
            y0 = rng.randint(py0 + (py1 - py0 - s) // 2 - 1, py0 + (py1 - py0 - s) // 2 + 1)
            box = (x0, y0, x0 + s, y0 + s)
            if SHAPES[cls] == "ring" or cls == objects[-1][0]:
                continue
        else:
            x0, y0 = rng.randint(1, size - s - 2), rng.randint(1, size - s - 2)
            box = (x0, y0, x0 + s, y0 + s)
            if any(not (box[2] + 1 < p[0] or p[2] + 1 < box[0] or box[3] + 1 < p[1] or p[3] + 1 < box[1]) for p in placed):
                if rng.random() < 0.85:
                    continue  # mostly non-overlapping; a few touching/overlapping pairs
        base = COLOURS[cls % len(COLOURS)]
        colour = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in base)
        shape = SHAPES[cls % len(SHAPES)]
        _draw(draw, shape, box, colour)
        tight = _shape_box(shape, box)
        objects.append((cls, tight))
        placed.append(box)
    return img, objects


def generate(out_dir: str | Path, train: int = 2000, val: int = 200, test: int = 300, size: int = 128,
             max_objects: int = 4, min_size: int = 14, max_size: int = 44, num_classes: int = 6, touch_px: float = 2.0,
             seed: int = 0) -> Path:
    """Write a synthetic dataset (images + train/val/test.json + rel.json + meta.json) atomically."""
    from data.atomic import atomic_directory
    from data.sgg_schema import write_dataset_into

    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"synthetic.num_classes: expected 2..{len(SHAPES)} (got {num_classes})")
    categories = SHAPES[:num_classes]
    splits: dict[str, dict] = {}
    rels: dict[str, dict[str, list[list[int]]]] = {}
    image_id, ann_id = 0, 0
    with atomic_directory(out_dir) as tmp:
        (tmp / "images").mkdir()
        for split, count, split_seed in (("train", train, 0), ("val", val, 1), ("test", test, 2)):
            rng = random.Random(seed * 1000 + split_seed)
            images, anns, split_rels = [], [], {}
            for _ in range(count):
                image_id += 1
                img, objects = make_scene(rng, size, max_objects, min_size, max_size, num_classes)
                name = f"{split}_{image_id:06d}.png"
                img.save(tmp / "images" / name)
                images.append({"id": image_id, "file_name": name, "height": size, "width": size})
                for cls, (x0, y0, x1, y1) in objects:
                    ann_id += 1
                    anns.append({"id": ann_id, "image_id": image_id, "category_id": cls + 1,
                                 "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]})
                triplets = []
                for i, (_, a) in enumerate(objects):
                    for j, (_, b) in enumerate(objects):
                        if i != j:
                            triplets.append([i, j, PREDICATES.index(predicate(a, b, touch_px)) + 1])
                split_rels[str(image_id)] = triplets
            splits[split] = {"images": images, "annotations": anns}
            rels[split] = split_rels
        meta = {
            "source": "synthetic shapes on a canvas (data/synthetic_scenes.py), NOT a real dataset",
            "synthetic": True,
            "image_root": "images",
            "box_convention": "xywh of the drawn shape's tight box, integer pixels",
            "notes": (f"seed {seed}; {size}x{size} canvases, 2..{max_objects} objects of {num_classes} shape classes; every "
                      f"ordered object pair has exactly one predicate decided by geometry (inside, contains, touching "
                      f"<= {touch_px}px, else the dominant axis: left of/right of/above/below)"),
            "flip_swap": FLIP_SWAP,
        }
        write_dataset_into(tmp, splits, rels, categories, PREDICATES, meta)
    return Path(out_dir)
