"""Scene graphs for people: image(s) + a trained EGTR model -> JSON + a picture (boxes and the relation graph).

    python -m models.egtr.infer --model models:/egtr@champion_synthetic --images photo.jpg --out sg_out/
    python -m models.egtr.infer --model outputs/egtr/synthetic/sgg-<fp>/best.pt --images folder/ --out sg_out/

``--model`` is a registered model URI (``models:/egtr@<alias>`` or ``models:/egtr/<version>``), a run's model URI,
or a local stage-1 checkpoint. Label names come from the checkpoint, i.e. from the training split's categories
and ``rel.json`` predicates (never ``LABEL_0..``). A stage-0 detector checkpoint is refused with a message that
says so (naver-ai/egtr #5). For each image ``<stem>.json`` (objects with boxes in original pixels, top triplets
with scores; graph constraint) and ``<stem>.png`` are written, atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.common import tracking
from models.egtr.data import resized_hw, to_tensor

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def resolve_weights(model: str) -> Path:
    """A local checkpoint path, or download the ``weights`` artifact of an MLflow model URI."""
    p = Path(model)
    if p.is_file():
        return p
    if "://" not in model and ":/" not in model:
        raise FileNotFoundError(f"--model {model}: no such file, and not an MLflow model URI (models:/egtr@champion_...)")
    import mlflow

    tracking.ensure_tracking_env()
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model.rstrip("/")))
    found = sorted(local.rglob("*.pt"))
    if not found:
        raise FileNotFoundError(f"--model {model}: the model has no .pt weights artifact (is it an EGTR pyfunc?)")
    return found[0]


class SceneGraphPredictor:
    def __init__(self, weights: str | Path, device: str = "cpu"):
        from models.egtr.recipe import load_model

        self.model, state = load_model(weights, "egtr", map_location=device)
        self.model.to(device).eval()
        self.device = device
        self.categories, self.predicates = state["categories"], state["predicates"]
        self.eval_size, self.eval_max_size = state.get("eval_size", 800), state.get("eval_max_size", 1333)
        self.obj_score = state.get("obj_score", "softmax")

    @torch.no_grad()
    def __call__(self, image: Image.Image, top_k: int = 20, min_score: float = 0.0, max_objects: int = 30) -> dict:
        from models.egtr.losses import cxcywh_to_xyxy
        from models.egtr.metrics import sgdet_triplets

        image = image.convert("RGB")
        w0, h0 = image.size
        h, w = resized_hw(h0, w0, self.eval_size, self.eval_max_size)
        x = to_tensor(image.resize((w, h), Image.BILINEAR))[None].to(self.device)
        mask = torch.ones(1, h, w, dtype=torch.long, device=self.device)
        out = self.model(x, mask)
        probs = out["logits"][0].softmax(-1) if self.obj_score == "softmax" else out["logits"][0].sigmoid()
        scores, labels = probs.max(-1)
        boxes = cxcywh_to_xyxy(out["boxes"][0].float().cpu()) * torch.tensor([w0, h0, w0, h0])
        rel = out["rel_logits"][0].sigmoid().clamp(0, 1) * out["conn_logits"][0].sigmoid().clamp(0, 1)[..., None]
        pred = {"boxes": boxes.numpy(), "labels": labels.cpu().numpy(), "obj_scores": scores.cpu().numpy(),
                "rel_scores": rel.cpu().numpy()}
        sub, obj, prd, sc = sgdet_triplets(pred, top_k=top_k, graph_constraint=True)
        keep = sc >= min_score
        sub, obj, prd, sc = sub[keep], obj[keep], prd[keep], sc[keep]
        used = list(dict.fromkeys([int(i) for pair in zip(sub, obj) for i in pair]))
        top_objects = [int(i) for i in np.argsort(-pred["obj_scores"])[:max_objects]]
        shown = used + [i for i in top_objects if i not in used and pred["obj_scores"][i] >= max(min_score, 0.3)]
        index = {q: k for k, q in enumerate(shown)}
        objects = [{"id": index[q], "query": q, "label": self.categories[int(pred["labels"][q])],
                    "score": round(float(pred["obj_scores"][q]), 6),
                    "box_xyxy": [round(float(v), 2) for v in pred["boxes"][q]]} for q in shown]
        relations = [{"subject": index[int(s)], "object": index[int(o)], "predicate": self.predicates[int(p)],
                      "text": f"{self.categories[int(pred['labels'][s])]} {self.predicates[int(p)]} "
                              f"{self.categories[int(pred['labels'][o])]}", "score": round(float(c), 6)}
                     for s, o, p, c in zip(sub, obj, prd, sc)]
        return {"width": w0, "height": h0, "objects": objects, "relations": relations}


def draw(image: Image.Image, graph: dict, path: Path, max_relations: int = 10) -> Path:
    """Left: the image with boxes and labels; right: the relation graph (objects as nodes, predicates on arrows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rels = graph["relations"][:max_relations]
    ids = list(dict.fromkeys([i for r in rels for i in (r["subject"], r["object"])]))
    objs = {o["id"]: o for o in graph["objects"]}
    cmap = plt.get_cmap("tab10")
    fig, (ax, gx) = plt.subplots(1, 2, figsize=(11, 5.2), gridspec_kw={"width_ratios": [1.1, 1]})
    ax.imshow(image)
    for k, oid in enumerate(ids or [o["id"] for o in graph["objects"][:10]]):
        o = objs[oid]
        x0, y0, x1, y1 = o["box_xyxy"]
        colour = cmap(k % 10)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2, color=colour))
        ax.text(x0, y0, f"{o['id']}:{o['label']} {o['score']:.2f}", color="white", fontsize=8,
                bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "lw": 0})
    ax.axis("off")
    ax.set_title("detections", fontsize=10)
    n = max(len(ids), 1)
    pos = {oid: (np.cos(2 * np.pi * k / n), np.sin(2 * np.pi * k / n)) for k, oid in enumerate(ids)}
    for r in rels:
        (xa, ya), (xb, yb) = pos[r["subject"]], pos[r["object"]]
        gx.annotate("", xy=(xb, yb), xytext=(xa, ya),
                    arrowprops={"arrowstyle": "-|>", "color": "0.4", "shrinkA": 18, "shrinkB": 18, "lw": 1.2})
        gx.text((xa + xb) / 2, (ya + yb) / 2, f"{r['predicate']} ({r['score']:.2f})", fontsize=7, ha="center",
                bbox={"facecolor": "white", "alpha": 0.85, "pad": 1, "lw": 0})
    for k, oid in enumerate(ids):
        x, y = pos[oid]
        gx.text(x, y, f"{oid}:{objs[oid]['label']}", ha="center", va="center", fontsize=9, color="white",
                bbox={"boxstyle": "round", "facecolor": cmap(k % 10), "lw": 0})
    gx.set_xlim(-1.5, 1.5)
    gx.set_ylim(-1.4, 1.4)
    gx.axis("off")
    gx.set_title(f"top {len(rels)} relations (graph constraint)", fontsize=10)
    fig.tight_layout()
    return tracking.save_figure(fig, path, dpi=100)


def read_image(path: Path) -> Image.Image:
    """The image as RGB, fully decoded (a truncated file fails here, not halfway through the model)."""
    from PIL import UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        reason = "empty file" if path.stat().st_size == 0 else str(err).replace(str(path), "").strip(" '\"") or type(err).__name__
        raise ValueError(f"{path}: not a readable image ({reason})") from None


def list_images(spec: str) -> list[Path]:
    p = Path(spec)
    if p.is_dir():
        found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"--images {spec}: the folder has no {sorted(IMAGE_SUFFIXES)} files")
        return found
    if not p.is_file():
        raise FileNotFoundError(f"--images {spec}: no such file or folder")
    return [p]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="EGTR scene graph inference: JSON + picture per image.")
    ap.add_argument("--model", required=True, help="models:/egtr@champion_<dataset>, a run model URI, or a stage-1 .pt")
    ap.add_argument("--images", required=True, help="an image file or a folder of images")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--top-k", type=int, default=20, help="triplets to keep (graph constraint)")
    ap.add_argument("--min-score", type=float, default=0.0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    from models.egtr.recipe import CheckpointKindError

    try:
        weights = resolve_weights(args.model)
        predictor = SceneGraphPredictor(weights, device=args.device)
        images = list_images(args.images)
    except (FileNotFoundError, CheckpointKindError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    failed = 0
    for path in images:
        try:
            image = read_image(path)
        except ValueError as err:  # one bad file does not stop the others
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        graph = predictor(image, top_k=args.top_k, min_score=args.min_score)
        graph["image"] = str(path)
        tracking.atomic_write_json(out / f"{path.stem}.json", graph)
        draw(image, graph, out / f"{path.stem}.png")
        top = "; ".join(r["text"] for r in graph["relations"][:3])
        print(f"{path.name}: {len(graph['objects'])} objects, {len(graph['relations'])} relations (top: {top})")
    if failed:
        print(f"error: {failed} of {len(images)} images could not be read (see above); the other {len(images) - failed} were written to {out}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
