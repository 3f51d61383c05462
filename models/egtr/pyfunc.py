"""MLflow pyfunc for EGTR: images -> scene graphs.

Input: a DataFrame with a string column ``image``: base64-encoded image bytes (JPEG/PNG) or a path to an image
file readable by the serving process. Output, one row per image: ``objects`` and ``relations`` (JSON strings, as
written by ``python -m models.egtr.infer``: objects with label, score and box in original pixels; the top
triplets under the graph constraint with subject/object ids, predicate and score) and ``num_relations``.
Label names are those of the training split, stored in the checkpoint.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path

import pandas as pd

from models.common.serving import request_errors

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]


def decode_image(value: str, row: int):
    from PIL import Image, UnidentifiedImageError

    if not isinstance(value, str) or not value:
        raise ValueError(f"request {row}: field 'image': expected a base64 string or an image path (got {type(value).__name__})")
    try:
        if len(value) < 1024 and Path(value).is_file():
            return Image.open(value).convert("RGB")
        return Image.open(io.BytesIO(base64.b64decode(value, validate=True))).convert("RGB")
    except (binascii.Error, UnidentifiedImageError, OSError) as err:
        raise ValueError(f"request {row}: field 'image': not a readable image path or base64 image ({err})") from None


class SceneGraphPyfunc(PythonModel):
    top_k = 20

    def load_context(self, context) -> None:
        from models.egtr.infer import SceneGraphPredictor

        self.predictor = SceneGraphPredictor(context.artifacts["weights"], device="cpu")

    @request_errors
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if "image" not in model_input.columns:
            raise ValueError("input needs a string column 'image' (base64 image bytes or a path)")
        top_k = int((params or {}).get("top_k", self.top_k))
        rows = []
        for r, value in enumerate(model_input["image"].tolist()):
            graph = self.predictor(decode_image(value, r), top_k=top_k)
            rows.append({"objects": json.dumps(graph["objects"]), "relations": json.dumps(graph["relations"]),
                         "num_relations": len(graph["relations"])})
        return pd.DataFrame(rows)
