"""MLflow pyfunc for MeLU: score candidate items for a new user after local adaptation.

Input: a DataFrame, one row per request, with columns
``gender`` (str, e.g. "M"), ``age`` (str, one of the ML-1M age codes "1", "18", ...), ``occupation`` (str "0".."20"),
``zip`` (str; first 5 characters used), ``support_items`` (list of movie ids the user rated),
``support_ratings`` (list of ratings 1-5, same length; integers or floats), ``candidate_items`` (list of movie ids to score).
Output: one row per (request, candidate): ``request``, ``rank`` (1 = best), ``movie_id``, ``title``,
``predicted_rating``, ``fallback``, best first within each request. With an empty support set the prediction is
the meta-learned prior (no local step).

Cold-start fallback: a zip code the training data never saw (a new user's is often new) is encoded as the mean
of the learned zip embeddings, and ``fallback`` says so (``"zip 99999 unseen: mean zip embedding"``; empty when
none applied). Gender, age and occupation are closed ML-1M code lists: a value outside them is refused. Bad
input (unknown movie ids, ratings off the 1-5 scale or not finite, lists of different lengths, no candidates)
is refused with the request index, field and value at the top of the reply (``models.common.serving``).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from models.common.serving import BadRequest, as_int, as_list, as_number, request_errors

try:  # mlflow is a dependency of the package; the guard keeps the module importable for docs/tools
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]

USER_COLUMNS = ("gender", "age", "occupation", "zip")
LIST_COLUMNS = ("support_items", "support_ratings", "candidate_items")
RATING_MIN, RATING_MAX = 1, 5  # the MovieLens-1M star scale


class MeluPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from models.melu.data import Bag
        from models.melu.modeling import MeLU

        meta = json.loads(open(context.artifacts["meta"]).read())
        self.vocab = json.loads(open(context.artifacts["vocab"]).read())
        items = pd.read_parquet(context.artifacts["items"])
        self.local_steps, self.local_lr = int(meta["local_steps"]), float(meta["local_lr"])
        self.model = MeLU({k: len(v) for k, v in self.vocab.items()}, meta["embedding_dim"], meta["hidden"])
        self.model.load_state_dict(torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True))
        self.model.eval()
        self.row = {int(m): i for i, m in enumerate(items.movie_id)}
        self.titles = dict(zip(items.movie_id.astype(int), items.title))
        with torch.no_grad():
            rate = torch.as_tensor(items.rate.to_numpy(), dtype=torch.long)
            bags = {f: Bag.from_lists(items[f].tolist()) for f in ("genre", "director", "actor")}
            self.item_vecs = self.model.item_encoder(rate, bags)
        self.index = {k: {w: i for i, w in enumerate(v)} for k, v in self.vocab.items()}

    def _user_vector(self, rec: dict, r: int) -> tuple[torch.Tensor, str]:
        """The user's field embeddings [1, 4d] and the fallback applied ("" when none)."""
        ids, fallback = [], ""
        for field in USER_COLUMNS:
            value = str(rec[field])[:5] if field == "zip" else str(rec[field])
            if value not in self.index[field]:
                if field != "zip":
                    raise BadRequest(f"request {r}: field {field!r}: unknown value {value!r}; expected one of "
                                     f"{sorted(self.index[field], key=lambda w: (len(w), w))[:25]}")
                fallback = f"zip {value} unseen: mean zip embedding"
                ids.append(0)
            else:
                ids.append(self.index[field][value])
        with torch.no_grad():
            user = self.model.user_encoder(torch.as_tensor([ids]))
            if fallback:
                d = self.model.user_encoder.zip.embedding_dim
                user[:, -d:] = self.model.user_encoder.zip.weight.mean(0)
        return user, fallback

    def _items(self, values, r: int, field: str) -> list[int]:
        rows = []
        for m in as_list(values, r, field):
            m = as_int(m, r, field)
            if m not in self.row:
                raise BadRequest(f"request {r}: field {field!r}: movie id {m} has no metadata in the model's item table")
            rows.append(self.row[m])
        return rows

    @staticmethod
    def _ratings(values, r: int) -> list[float]:
        """Ratings as floats; integers are welcome (JSON ``5`` as well as ``5.0``), anything outside 1-5 is refused."""
        return [as_number(v, r, "support_ratings", RATING_MIN, RATING_MAX) for v in as_list(values, r, "support_ratings")]

    @request_errors
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from models.melu.meta import adapt

        missing = [c for c in (*USER_COLUMNS, *LIST_COLUMNS) if c not in model_input.columns]
        if missing:
            raise BadRequest(f"input is missing column(s) {missing}; expected {list(USER_COLUMNS) + list(LIST_COLUMNS)}")
        out = []
        for r, rec in enumerate(model_input.to_dict(orient="records")):
            s_items = self._items(rec["support_items"], r, "support_items")
            s_y = self._ratings(rec["support_ratings"], r)
            if len(s_y) != len(s_items):
                raise BadRequest(f"request {r}: field 'support_ratings': {len(s_y)} values for {len(s_items)} support_items; expected one rating per item")
            cands = [as_int(m, r, "candidate_items") for m in as_list(rec["candidate_items"], r, "candidate_items", allow_empty=False)]
            c_rows = self._items(cands, r, "candidate_items")
            user, fallback = self._user_vector(rec, r)
            with torch.no_grad():
                x_c = self.model.join(self.item_vecs[torch.as_tensor(c_rows)].unsqueeze(0), user)
            with torch.no_grad():
                if s_items:
                    x_s = self.model.join(self.item_vecs[torch.as_tensor(s_items)].unsqueeze(0), user)
                    with torch.enable_grad():
                        fast = adapt(self.model, x_s, torch.tensor([s_y]), None, self.local_steps, self.local_lr, "first", track_meta_grad=False)
                    pred = fast.predict(x_c).squeeze(0).numpy()
                else:  # no support set: the meta-learned prior
                    pred = self.model.decide(x_c).squeeze(0).numpy()
            order = np.lexsort((np.asarray(cands, dtype=np.int64), -pred))
            for rank, j in enumerate(order, 1):
                out.append({"request": r, "rank": rank, "movie_id": int(cands[j]), "title": self.titles[int(cands[j])],
                            "predicted_rating": float(pred[j]), "fallback": fallback})
        return pd.DataFrame(out, columns=["request", "rank", "movie_id", "title", "predicted_rating", "fallback"])
