"""MLflow pyfunc for the NLI classifiers: premise and hypothesis strings -> label and probabilities.

Input: a DataFrame with string columns ``premise`` and ``hypothesis``. Text is tokenised with the
project's PTB rules (:func:`models.dissan.data.ptb_tokenize`), lower-cased if the model's vectors are,
and mapped through the training vocabulary (unknown words -> <unk>). Output: ``label`` and
``prob_entailment``, ``prob_neutral``, ``prob_contradiction``.
"""

from __future__ import annotations

import json

import pandas as pd
import torch

from models.common.serving import BadRequest, request_errors

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]


class NLIPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from models.dissan.config import DissanModelConfig
        from models.dissan.data import Vocab
        from models.dissan.modeling import NLIClassifier

        meta = json.loads(open(context.artifacts["meta"]).read())
        self.vocab = Vocab(meta["itos"][2:], meta["lowercase"])
        self.max_len = int(meta["max_len"])
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.model = NLIClassifier(DissanModelConfig.model_validate(meta["model"]), state["embed.weight"])
        self.model.load_state_dict(state)
        self.model.eval()

    @request_errors
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from models.dissan.data import LABELS, NLIPairs, encode, ptb_tokenize

        missing = [c for c in ("premise", "hypothesis") if c not in model_input.columns]
        if missing:
            raise BadRequest(f"input needs string columns 'premise' and 'hypothesis' (missing: {missing})")
        if model_input.empty:
            raise BadRequest("input has no rows; expected at least one premise/hypothesis pair")
        pairs = NLIPairs([], [], [])
        for r, rec in enumerate(model_input.to_dict(orient="records")):
            for field in ("premise", "hypothesis"):
                if not isinstance(rec[field], str):
                    raise BadRequest(f"request {r}: field {field!r}: value {rec[field]!r}; expected a sentence (a string)")
            p, h = ptb_tokenize(rec["premise"]), ptb_tokenize(rec["hypothesis"])
            if not p or not h:
                raise BadRequest(f"request {r}: field '{'premise' if not p else 'hypothesis'}': empty; expected a sentence")
            pairs.premises.append(p)
            pairs.hypotheses.append(h)
            pairs.labels.append(0)
        enc = encode(pairs, self.vocab, self.max_len)
        with torch.no_grad():
            probs = torch.softmax(self.model(enc["p"], enc["p_len"], enc["h"], enc["h_len"]), -1)
        out = pd.DataFrame({"label": [LABELS[i] for i in probs.argmax(-1).tolist()]})
        for i, name in enumerate(LABELS):
            out[f"prob_{name}"] = probs[:, i].numpy().astype(float)
        return out
