"""What a stored Model2Vec vector rests on (its form), apart from :mod:`taskreg.embedders.model2vec` so that
``select --method model2vec`` can say it without importing torch."""

from __future__ import annotations

import numpy as np

__all__ = ["BASIS_BIAS", "BASIS_TASK", "BASIS_TASK_AND_BIAS", "basis_of"]

BASIS_TASK_AND_BIAS = "F_i + b_i"  # the training task's embedding plus a bias fitted on measured errors
BASIS_BIAS = "b_i"  # no training task (F_i unknown): placed by its measured errors alone
BASIS_TASK = "F_i"  # training task known, no measured error on the tasks used: b_i = 0


def basis_of(vector: np.ndarray, bias: np.ndarray) -> str:
    """The form of a stored Model2Vec vector, from the vector (D,) and its bias (D,) alone (F_i = vector - bias):
    BASIS_BIAS when F_i was unknown (zero: the bias is the vector), BASIS_TASK when the bias is zero
    (no measured error moved it; only clamping noise), else BASIS_TASK_AND_BIAS."""
    m = np.asarray(vector, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64)
    if np.array_equal(m, b):
        return BASIS_BIAS
    if np.abs(b).max(initial=0.0) <= 1e-5 * np.abs(m).max(initial=0.0):
        return BASIS_TASK
    return BASIS_TASK_AND_BIAS
