"""Request validation shared by the pyfuncs: clear errors that reach the caller at the top of the reply.

``mlflow models serve`` answers an exception from ``predict`` with a generic "unexpected error" message and the
traceback (local paths included) in ``stack_trace``; an ``MlflowException`` instead has its own message at the top
and no traceback. :func:`request_errors` turns the ``ValueError`` / ``TypeError`` a pyfunc raises for bad input
into that, so a caller reads "request 0: field 'support_ratings': value 50; expected a number from 1 to 5".
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np


class BadRequest(ValueError):
    """A request that the model cannot score, with the request index, field and value in its message."""


def request_errors(predict: Callable) -> Callable:
    """Decorator for ``PythonModel.predict``: bad input leaves as ``MlflowException(INVALID_PARAMETER_VALUE)``."""

    @functools.wraps(predict)
    def wrapped(self, context, model_input, *args, **kwargs):
        try:
            return predict(self, context, model_input, *args, **kwargs)
        except (ValueError, TypeError) as err:
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None

    return wrapped


def as_list(value: Any, r: int, field: str, allow_empty: bool = True) -> list:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = []
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise BadRequest(f"request {r}: field {field!r}: value {value!r}; expected a list")
    out = list(value)
    if not out and not allow_empty:
        raise BadRequest(f"request {r}: field {field!r}: empty list; expected at least one value")
    return out


def as_int(value: Any, r: int, field: str, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (JSON 3 or 3.0), not a bool, inside [lo, hi]."""
    ok = isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer())
    if isinstance(value, (bool, np.bool_)) or not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f" from {lo}" if lo is not None else ""
        bounds += f" to {hi}" if hi is not None else ""
        raise BadRequest(f"request {r}: field {field!r}: value {value!r}; expected an integer{bounds}")
    return int(value)


def as_number(value: Any, r: int, field: str, lo: float | None = None, hi: float | None = None) -> float:
    """A finite number (integers welcome), not a bool, inside [lo, hi]."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f" from {lo} to {hi}" if lo is not None and hi is not None else ""
        raise BadRequest(f"request {r}: field {field!r}: value {value!r}; expected a finite number{bounds}")
    return float(value)
