"""What an expert's score rests on: the ``basis`` of each ``select`` row, ``expert show``'s Model2Vec form,
the experts a Model2Vec fit skips, and why a method leaves an expert unscored (with what to use instead).

An expert whose training data is not in the registry (a zoo ImageNet network, a third-party checkpoint,
a Taskonomy task network) has no training task to embed: asym, sym and domain cannot score it and say
so, naming Model2Vec, which places it by its measured errors (``m_i = b_i``, see
:mod:`taskreg.embedders.model2vec`). A ranking never mixes the two kinds silently: every scored row
carries its basis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb
import numpy as np

from taskreg.registry import catalog

if TYPE_CHECKING:
    from taskreg.selection.selectors import Selector


@dataclass(frozen=True)
class Model2VecForm:
    """One stored Model2Vec vector of an expert, as ``expert show`` gives it: its form and what it rests on."""

    probe: str
    estimator: str
    form: str
    basis: str


FIT_HINT = "`taskreg expert eval`, then `taskreg model2vec fit`"


def _no_task(expert: catalog.ExpertRecord) -> str:
    if expert.origin == "task_network":
        return "no training task to embed (a Taskonomy task network)"
    if expert.origin == "zoo":
        return "no training task to embed (a zoo model: its training data is not a registered task)"
    return "no training task to embed (registered without --trained-on)"


def no_training_task_reason(expert: catalog.ExpertRecord, *, has_model2vec: bool) -> str:
    """Why asym/sym/domain leave ``expert`` (trained_on None) unscored, and what to use instead."""
    instead = ("use --method model2vec (its Model2Vec vector m_i = b_i comes from its measured errors)" if has_model2vec
               else f"use --method model2vec after {FIT_HINT}")
    if expert.origin != "task_network":
        instead += ", or register it with --trained-on TASK if its training data is a registered task"
    return f"{_no_task(expert)}: {instead}"


def missing_model2vec_reason(expert: catalog.ExpertRecord, *, task_embedded: bool, measured: bool) -> str:
    """Why ``expert`` has no Model2Vec vector for the probe and estimator of a ``select``."""
    if not task_embedded and not measured:
        return (f"no Model2Vec vector: no training task and no measured test error to place it ({FIT_HINT}; "
                "an expert that cannot be measured cannot be placed)")
    return "no Model2Vec vector (registered or measured after the last `taskreg model2vec fit`: run it again)"


def skipped_reason(expert: catalog.ExpertRecord, probe: str, estimator: str) -> str:
    """Why a Model2Vec fit gave ``expert`` no vector (its F_i is unknown and it has no measured error)."""
    task = ("no training task" if expert.trained_on is None
            else f"its training task {expert.trained_on} has no {estimator} embedding with probe {probe}")
    return f"{task} and no measured test error on the tasks used: nothing places it (run `taskreg expert eval`)"


def model2vec_basis(expert: catalog.ExpertRecord, vector: np.ndarray, bias: np.ndarray) -> tuple[str, str]:
    """(form, what it rests on) of one stored Model2Vec vector of ``expert``."""
    from taskreg.embedders.model2vec_basis import BASIS_TASK, BASIS_TASK_AND_BIAS, basis_of

    form = basis_of(vector, bias)
    if form == BASIS_TASK_AND_BIAS:
        return form, f"Task2Vec of its training task {expert.trained_on} plus a bias fitted on its measured errors"
    if form == BASIS_TASK:
        return form, f"Task2Vec of its training task {expert.trained_on} alone (no measured error when fitted)"
    why = ("no training task" if expert.trained_on is None
           else f"its training task {expert.trained_on} had no embedding with this probe when fitted")
    return form, f"{why}: placed by its measured errors alone"


def score_bases(con: duckdb.DuckDBPyConnection, selector: Selector, probe: str, estimator: str,
                experts: list[catalog.ExpertRecord]) -> dict[int, str]:
    """expert id -> what its score by ``selector`` rests on, for scored ``experts`` (the JSON's ``basis``)."""
    needs = set(selector.needs)
    if "model2vec" in needs:
        stored = catalog.model2vec_with_bias(con, probe, estimator, [e.id for e in experts])
        out = {}
        for e in experts:
            if e.id in stored:
                form, why = model2vec_basis(e, *stored[e.id])
                out[e.id] = f"Model2Vec m_i = {form}: {why}"
            else:  # refitted since its distance was computed
                out[e.id] = "Model2Vec (the fit changed during this select: run it again)"
        return out
    if "task2vec" in needs:
        return {e.id: f"Task2Vec ({estimator}) of its training task {e.trained_on}" for e in experts}
    if "domain" in needs:
        return {e.id: f"domain embedding of its training task {e.trained_on}" for e in experts}
    if "features" in needs or "logits" in needs:
        what = "features" if "features" in needs else "outputs"
        return {e.id: f"{selector.name} of its {what} on the query" for e in experts}
    if "sizes" in needs:
        return {e.id: ("its training-set size (classes x samples)" if e.n_classes and e.n_train
                       else f"the size of its training task {e.trained_on} (classes x samples)") for e in experts}
    if "prior" in needs:
        return {e.id: f"its accuracy on {e.reference}" for e in experts}
    return {e.id: "nothing about the expert (chance)" for e in experts}


def unscored_reasons(con: duckdb.DuckDBPyConnection, method: str, probe: str, vec_method: str,
                     experts: list[catalog.ExpertRecord], want: int) -> dict[int, str]:
    """Why each of ``experts`` got no distance from an index method (expert id -> one-line reason).

    ``method`` is "model2vec" (the experts' own vectors) or "task" (their training tasks' vectors)."""
    embedded = catalog.embedded_task_names(con, probe, vec_method)
    out: dict[int, str] = {}
    if method == "model2vec":
        fitted = catalog.model2vec_expert_ids(con, probe, vec_method)
        measured = catalog.measured_expert_ids(con, probe, vec_method)
        for e in experts:
            out[e.id] = (f"not among the {want} nearest index candidates" if e.id in fitted
                         else missing_model2vec_reason(e, task_embedded=e.trained_on in embedded,
                                                       measured=e.id in measured))
        return out
    with_vector = catalog.model2vec_expert_ids(con, probe)
    for e in experts:
        if e.trained_on is None:
            out[e.id] = no_training_task_reason(e, has_model2vec=e.id in with_vector)
        elif e.trained_on not in embedded:
            out[e.id] = f"its training task {e.trained_on} has no {vec_method} embedding with probe {probe}"
        else:
            out[e.id] = f"its training task is not among the {want} nearest index candidates"
    return out


def model2vec_forms(con: duckdb.DuckDBPyConnection, expert: catalog.ExpertRecord) -> list[Model2VecForm]:
    """``expert show``: each Model2Vec vector of ``expert`` (probe, estimator), its form and what it rests on."""
    out = []
    for probe, estimator, vector, bias in catalog.model2vec_rows(con, expert.id):
        form, why = model2vec_basis(expert, vector, bias)
        out.append(Model2VecForm(probe, estimator, f"m_i = {form}", why))
    return out
