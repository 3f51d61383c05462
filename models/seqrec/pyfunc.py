"""MLflow pyfunc for the sequential recommenders: a user's item history -> top-k next items with scores.

Input: a DataFrame, one row per request, with ``history`` (list of item ids 1..N, oldest first) and
optionally ``k`` (int, default 10). Output: one row per (request, recommended item): ``request``,
``rank`` (1 = best), ``item_id``, ``score``, ``fallback``. Items already in the history are not recommended.
Fallback: ids outside 1..N (items the model never saw have no embedding) are left out of the history and
``fallback`` says which (empty when none); a history with no known item, a non-integer id or a ``k`` outside
1..N is refused with the request index, field and value.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import torch

from models.common.serving import BadRequest, as_int, as_list, request_errors

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]


class SeqRecPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from models.seqrec.config import SeqRecModelConfig
        from models.seqrec.modeling import build_model

        meta = json.loads(open(context.artifacts["meta"]).read())
        self.n_items, self.max_len = int(meta["n_items"]), int(meta["max_len"])
        self.model = build_model(SeqRecModelConfig.model_validate(meta["model"]), self.n_items, self.max_len)
        self.model.load_state_dict(torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True))
        self.model.eval()

    @request_errors
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if "history" not in model_input.columns:
            raise BadRequest("input needs a column 'history' (list of item ids, oldest first)")
        out = []
        for r, rec in enumerate(model_input.to_dict(orient="records")):
            hist = [as_int(i, r, "history") for i in as_list(rec["history"], r, "history", allow_empty=False)]
            unknown = [i for i in hist if not 1 <= i <= self.n_items]
            hist = [i for i in hist if 1 <= i <= self.n_items]
            if not hist:
                raise BadRequest(f"request {r}: field 'history': no known item id (ids are 1 to {self.n_items}; got {unknown[:10]})")
            fallback = f"ignored {len(unknown)} unknown item id(s): {unknown[:10]}" if unknown else ""
            k = rec.get("k")
            k = 10 if k is None or (isinstance(k, float) and math.isnan(k)) else as_int(k, r, "k", 1, self.n_items)
            seq = torch.zeros(1, self.max_len, dtype=torch.long)
            tail = torch.as_tensor(hist[-self.max_len:])
            seq[0, -len(tail):] = tail
            with torch.no_grad():
                scores = self.model.score(self.model(seq)[:, -1])[0]
            scores[0] = -math.inf
            scores[torch.as_tensor(hist)] = -math.inf
            top = torch.topk(scores, min(k, self.n_items - len(set(hist))))
            for rank, (s, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
                out.append({"request": r, "rank": rank, "item_id": int(i), "score": float(s), "fallback": fallback})
        return pd.DataFrame(out, columns=["request", "rank", "item_id", "score", "fallback"])
