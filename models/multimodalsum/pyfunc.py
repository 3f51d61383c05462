"""MLflow pyfunc for MultimodalSum: an entity's reviews (+ optionally photos and its metadata table) -> one summary.

Input: a DataFrame, one row per entity:

* ``reviews`` (required): a list of review strings (the gold sets use 8), each non-empty;
* ``photos`` (optional): a list of image file paths readable by the serving process (used when the model has an
  image encoder; at most ``images.max_per_entity[source]``);
* ``metadata`` (optional): the entity's table as a JSON object string (or a dict) with the column names of
  ``entities.parquet`` (``data/review_schema.py``: ``name``, ``avg_rating``, ``categories``, ``NoiseLevel``, ..,
  ``hours_Monday``, or for Amazon ``price``, ``brand``, ``category_paths``, ``description``); "" / {} = no table;
* ``source`` (optional): ``yelp`` | ``amazon`` | ``synthetic`` (review length limit, photo count and the beam
  setting chosen on that dataset's dev set); default: the first dataset of the run.

Output: a DataFrame with one string column ``summary``. Decoding: beam search with the setting chosen on dev
(``generation.json`` artifact), delta = 0, ``no_repeat_ngram_size`` 3. Bad input (no reviews, an empty review, a
photo that does not exist or decode, an unknown metadata field or a value of the wrong type) is refused with the
request index and the field (:func:`models.common.serving.request_errors`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from models.common.serving import BadRequest, as_list, request_errors

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]


def _present(row: pd.Series, name: str):
    if name not in row.index:
        return None
    v = row[name]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def parse_request(row: pd.Series, r: int, schema: str, sources: dict) -> dict:
    """One request row -> {"reviews", "photos", "metadata", "source"}, validated (BadRequest naming the field)."""
    from models.multimodalsum.data import check_metadata

    if "reviews" not in row.index:
        raise BadRequest(f"request {r}: field 'reviews': missing; expected a list of review strings")
    reviews = as_list(_present(row, "reviews"), r, "reviews", allow_empty=False)
    for i, t in enumerate(reviews):
        if not isinstance(t, str) or not t.strip():
            raise BadRequest(f"request {r}: field 'reviews[{i}]': value {t!r}; expected a non-empty string")
    photos = [str(p) for p in as_list(_present(row, "photos"), r, "photos")]
    for i, p in enumerate(photos):
        if not Path(p).is_file():
            raise BadRequest(f"request {r}: field 'photos[{i}]': {p} is not a readable file")
        try:
            from PIL import Image

            with Image.open(p) as im:
                im.load()
        except OSError as err:
            raise BadRequest(f"request {r}: field 'photos[{i}]': {p} does not decode as an image ({err})") from None
    meta = _present(row, "metadata")
    if isinstance(meta, str):
        if not meta.strip():
            meta = None
        else:
            try:
                meta = json.loads(meta)
            except json.JSONDecodeError as err:
                raise BadRequest(f"request {r}: field 'metadata': not a JSON object ({err})") from None
    table = None
    if meta:
        table = check_metadata(meta, schema, f"request {r}") or None
    source = _present(row, "source") or next(iter(sources))
    if source not in sources:
        raise BadRequest(f"request {r}: field 'source': value {source!r}; expected one of {sorted(sources)}")
    return {"reviews": [str(t) for t in reviews], "photos": photos, "metadata": table, "source": source}


class MultimodalSumPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from models.multimodalsum.recipe import load_model

        self.model, self.state, self.tok, self.hours = load_model(context.artifacts["weights"])
        self.model.eval()
        self.generation = json.loads(Path(context.artifacts["generation"]).read_text())

    def _batcher(self):
        from types import SimpleNamespace

        from models.multimodalsum.config import DataConfig, ImagesConfig, ModalitiesConfig
        from models.multimodalsum.data import Batcher

        s = self.state
        cfg = SimpleNamespace(
            data=DataConfig(folders=["-"], val_splits=["val"], max_review_tokens=s["data"]["max_review_tokens"],
                            test_review_tokens=s["data"]["test_review_tokens"], pad_to_max=s["data"]["pad_to_max"]),
            images=ImagesConfig(**s["images"]),
            modalities=ModalitiesConfig(images=s["image_backbone"] is not None, table=s["table_schema"] is not None),
            model=SimpleNamespace(table_schema=s["table_schema"] or "yelp"))
        return Batcher(cfg, self.tok, self.hours, train=False)

    @request_errors
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import torch

        from models.multimodalsum.data import Entity

        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        schema = self.state["table_schema"] or "yelp"
        sources = self.generation["settings"]
        batcher = self._batcher()
        out = []
        for r, (_, row) in enumerate(model_input.iterrows()):
            req = parse_request(row, r, schema, sources)
            ent = Entity(entity_id=f"request_{r}", source=req["source"], split="test", dataset="request", row=None,
                         reviews=req["reviews"], ratings=None, table=req["metadata"],
                         photos=[Path(p) for p in req["photos"]])
            b = batcher.evaluation([ent])
            s = sources[req["source"]]
            g = self.generation
            with torch.no_grad():
                ids = self.model.generate(b.review_ids, b.review_mask, images=b.images, image_mask=b.image_mask,
                                          table=b.table, num_beams=s["num_beams"], length_penalty=s["length_penalty"],
                                          max_length=s["max_length"], min_length=s["min_length"],
                                          no_repeat_ngram_size=g["no_repeat_ngram_size"],
                                          early_stopping=g["early_stopping"], decoder_start=g["decoder_start"])
            out.append(self.tok.decode(ids[0].tolist()))
        return pd.DataFrame({"summary": out})
