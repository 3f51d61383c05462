"""Scene-graph batches for EGTR: images + targets from the COCO-format schema (:mod:`data.sgg_schema`).

Augmentation follows the DETR COCO recipe used by naver-ai/egtr: random horizontal flip, then either a
multi-scale resize of the shorter side (longer side capped) or, in the detector stage only, resize -> random
crop -> multi-scale resize. The SGG stage never crops (a crop cuts relations). Evaluation resizes the shorter
side to ``eval_size``. A flip swaps the predicates listed in ``augment.flip_swap`` (e.g. left of <-> right of);
with an empty list the labels are kept, as in the official code. ``augment.filter_multiple_rels`` (Open Images)
keeps one randomly drawn predicate per (subject, object) pair in every training sample, as the official OI loader.

All randomness comes from a ``random.Random`` seeded by (seed, epoch, index), so a resumed epoch sees exactly
the augmentations of an uninterrupted one. Targets: ``labels`` 0-based, ``boxes`` normalised cxcywh,
``rels`` [R, 3] (subject position, object position, 0-based predicate), ``orig_size`` (h, w).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from models.egtr.config import AugmentConfig

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def resized_hw(h: int, w: int, size: int, max_size: int) -> tuple[int, int]:
    """DETR ``get_size_with_aspect_ratio``: shorter side -> size unless the longer side would exceed max_size."""
    mn, mx = float(min(h, w)), float(max(h, w))
    if mx / mn * size > max_size:
        size = int(round(max_size * mn / mx))
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def to_tensor(img: Image.Image) -> torch.Tensor:
    arr = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (arr - MEAN) / STD


class SceneGraphDataset(Dataset):
    def __init__(self, dataset_dir: str | Path, split: str, augment: AugmentConfig, train: bool, crop: bool = False,
                 seed: int = 0, max_images: int = 0):
        from data.sgg_schema import load_split

        self.sg = load_split(dataset_dir, split)
        if self.sg.image_root is None:
            raise FileNotFoundError(f"{dataset_dir}: meta.json has no image_root; this dataset has no images to train on")
        self.ids = self.sg.image_ids[:max_images] if max_images else list(self.sg.image_ids)
        self.augment, self.train, self.crop, self.seed = augment, train, crop, seed
        self.epoch = 0
        names = self.sg.predicates
        self.flip_map = list(range(len(names)))
        for a, b in augment.flip_swap:
            if a not in names or b not in names:
                raise ValueError(f"augment.flip_swap: predicate {a!r} or {b!r} is not in {dataset_dir}/rel.json")
            ia, ib = names.index(a), names.index(b)
            self.flip_map[ia], self.flip_map[ib] = ib, ia

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, idx: int):
        image_id = self.ids[idx]
        path = self.sg.image_path(image_id)
        try:
            img = Image.open(path).convert("RGB")
        except FileNotFoundError:
            raise FileNotFoundError(f"image {image_id}: file {path} is missing (image_root of the dataset)") from None
        t = self.sg.targets(image_id)
        boxes = torch.as_tensor(t["boxes_xywh"], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xyxy, pixels
        labels = torch.as_tensor(t["labels"], dtype=torch.long)
        rels = torch.as_tensor(t["rels"], dtype=torch.long).reshape(-1, 3)
        w0, h0 = img.size
        a = self.augment
        if self.train:
            rng = random.Random(hash((self.seed, self.epoch, image_id)) & 0xFFFFFFFF)
            if a.hflip and rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
                boxes = boxes[:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([w0, 0, w0, 0])
                if len(rels):
                    rels[:, 2] = torch.as_tensor(self.flip_map)[rels[:, 2]]
            if a.filter_multiple_rels and len(rels):
                rels = one_predicate_per_pair(rels, rng)
            if self.crop and rng.random() < 0.5:
                img, boxes, labels, rels = self._random_crop(img, boxes, labels, rels, rng)
            size = rng.choice(a.scales)
            h, w = resized_hw(img.size[1], img.size[0], size, a.max_size)
        else:
            h, w = resized_hw(h0, w0, a.eval_size, a.eval_max_size)
        sx, sy = w / img.size[0], h / img.size[1]
        img = img.resize((w, h), Image.BILINEAR)
        boxes = boxes * torch.tensor([sx, sy, sx, sy])
        cxcywh = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2 / w, (boxes[:, 1] + boxes[:, 3]) / 2 / h,
                              (boxes[:, 2] - boxes[:, 0]) / w, (boxes[:, 3] - boxes[:, 1]) / h], dim=-1)
        target = {"image_id": image_id, "labels": labels, "boxes": cxcywh, "rels": rels,
                  "orig_size": (h0, w0), "size": (h, w)}
        return to_tensor(img), target

    def _random_crop(self, img, boxes, labels, rels, rng: random.Random):
        """resize to {400,500,600} -> RandomSizeCrop(crop_min, crop_max); boxes cut to the crop, empty ones dropped."""
        a = self.augment
        size = rng.choice(a.crop_scales)
        h, w = resized_hw(img.size[1], img.size[0], size, a.max_size)
        s = torch.tensor([w / img.size[0], h / img.size[1]] * 2)
        img, boxes = img.resize((w, h), Image.BILINEAR), boxes * s
        cw = rng.randint(min(a.crop_min, w), min(w, a.crop_max))
        ch = rng.randint(min(a.crop_min, h), min(h, a.crop_max))
        x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = img.crop((x0, y0, x0 + cw, y0 + ch))
        boxes = boxes - torch.tensor([x0, y0, x0, y0])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, cw)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, ch)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        new_pos = torch.cumsum(keep.long(), 0) - 1
        if len(rels):
            ok = keep[rels[:, 0]] & keep[rels[:, 1]]
            rels = torch.stack([new_pos[rels[ok, 0]], new_pos[rels[ok, 1]], rels[ok, 2]], dim=1)
        return img, boxes[keep], labels[keep], rels


def one_predicate_per_pair(rels: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """naver-ai/egtr ``OIDataset(filter_multiple_rels=True)``: each (subject, object) pair keeps one of its
    predicates, drawn at random (here from the per-(seed, epoch, image) generator, so resumable)."""
    by_pair: dict[tuple[int, int], list[int]] = {}
    for s, o, p in rels.tolist():
        by_pair.setdefault((s, o), []).append(p)
    return torch.tensor([[s, o, rng.choice(ps)] for (s, o), ps in by_pair.items()], dtype=torch.long)


def collate(batch):
    """Pad images to the largest height/width of the batch; ``pixel_mask`` is 1 on real pixels."""
    imgs, targets = zip(*batch)
    h = max(i.shape[1] for i in imgs)
    w = max(i.shape[2] for i in imgs)
    pixel_values = torch.zeros(len(imgs), 3, h, w)
    pixel_mask = torch.zeros(len(imgs), h, w, dtype=torch.long)
    for k, img in enumerate(imgs):
        pixel_values[k, :, : img.shape[1], : img.shape[2]] = img
        pixel_mask[k, : img.shape[1], : img.shape[2]] = 1
    return pixel_values, pixel_mask, list(targets)


def fg_matrix(dataset_dir: str | Path, num_classes: int, num_predicates: int) -> torch.Tensor:
    """Counts of (subject class, object class, predicate) over the **training** split: [C+1, C+1, P]."""
    from data.sgg_schema import load_split

    sg = load_split(dataset_dir, "train")
    fg = torch.zeros(num_classes + 1, num_classes + 1, num_predicates)
    for image_id in sg.image_ids:
        t = sg.targets(image_id)
        rels = np.asarray(t["rels"]).reshape(-1, 3)
        if len(rels):
            labels = np.asarray(t["labels"])
            np.add.at(fg.numpy(), (labels[rels[:, 0]], labels[rels[:, 1]], rels[:, 2]), 1)
    return fg
