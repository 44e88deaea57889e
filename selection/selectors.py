"""The selector registry: every method ``taskreg select`` can rank experts with, in one place.

Modelled on timm's ``register_model``: a ranking method is one scorer function and one decorator::

    @register_selector("mine", needs=("features",), cost="forward", better="higher",
                       description="my transferability score")
    def mine(q: SelectorInput) -> list[float]:
        return [my_score(f, q.y) for f in q.outputs]

and is then valid for ``--method``, listed by ``taskreg select --help``, the demo, the selection benchmark
and the tests — nothing else to edit. The registry (``registry/``) looks the method up here, gathers what
its selector ``needs`` (see :data:`NEEDS`), calls the scorer and ranks the experts by ``better``.

A scorer takes a :class:`SelectorInput` holding only what its selector needs and returns one score per
item (M items: the index candidates, the experts whose outputs it was given, or the experts whose size
is known), in the input's order; ties keep that order. A scorer whose method has its own rule beyond
"sort by score" (the generic expert's tie rule) may instead return a ranking, a list of
:class:`Ranked` best first. A non-finite score marks that item as unscored. A "forward" scorer is given one
expert's outputs at a time unless its selector is ``pooled`` (its scores are relative to the other experts,
like NCTI's normalisation): then it is given every expert's outputs in one call.

This module imports neither torch nor numpy (the scorers import what they compute with), so the CLI's
help lists the methods instantly. It never imports ``taskreg.registry``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Union

from taskreg.errors import TaskregError

if TYPE_CHECKING:
    import numpy as np

Cost = Literal["index", "forward", "none"]
Better = Literal["lower", "higher"]

#: what a selector can need, gathered for it by the registry before its scorer runs
NEEDS: dict[str, str] = {
    "task2vec": "the query's Task2Vec embedding and the Task2Vec index of the experts' training tasks",
    "domain": "the query's domain embedding (mean probe features) and the domain index of the training tasks",
    "model2vec": "the query's Task2Vec embedding and the experts' Model2Vec vectors (`taskreg model2vec fit`)",
    "trivial": "the probe's trivial embedding t0 (the complexity term of d_asym)",
    "features": "every expert's features on the query, and the query's labels",
    "logits": "every expert's head outputs on the query, and the query's labels",
    "sizes": "each expert's training-set size (classes, samples)",
    "prior": "each expert's recorded accuracy on its own reference task (ImageNet top-1 of a zoo model, held-out "
             "accuracy on its training data of a trained one)",
}
#: cost classes: how much work one query costs, and which needs fit each
COSTS: dict[Cost, str] = {
    "index": "one probe pass over the query, then stored vectors: no expert runs on the query",
    "forward": "a forward pass of every expert over the query",
    "none": "nothing computed on the query",
}
_ALLOWED: dict[str, frozenset[str]] = {
    "index": frozenset({"task2vec", "domain", "model2vec", "trivial"}),
    "forward": frozenset({"features", "logits"}),
    "none": frozenset({"sizes", "prior"}),
}
_ONE_OF: dict[str, frozenset[str]] = {  # exactly one of these per cost class: where the scored data comes from
    "index": frozenset({"task2vec", "domain", "model2vec"}),
    "forward": frozenset({"features", "logits"}),
}


@dataclass(frozen=True)
class Ranked:
    """One item in a ranking: its row index in the scored input and its score."""

    index: int
    score: float


@dataclass(frozen=True)
class SelectorInput:
    """What a scorer is given; only the fields its selector needs are filled.

    n : how many items to score (M).
    query : (D,) the query's Task2Vec or domain embedding ("task2vec", "domain", "model2vec").
    candidates : (M, D) the candidates' vectors: their training tasks' embeddings, or Model2Vec vectors.
    t0, alpha : the probe's (D,) trivial embedding and d_asym's weight ("trivial").
    outputs : M arrays, each one expert's (N, F) features ("features") or (N, Z) logits ("logits").
    y : (N,) the query's labels ("features", "logits").
    sizes : M (classes, samples) pairs ("sizes").
    priors : M reference accuracies in [0, 1] ("prior").
    seed : for methods that draw at random.
    """

    n: int
    query: np.ndarray | None = None
    candidates: np.ndarray | None = None
    t0: np.ndarray | None = None
    alpha: float = 0.15
    outputs: Sequence[np.ndarray] = ()
    y: np.ndarray | None = None
    sizes: Sequence[tuple[int, int]] = ()
    priors: Sequence[float] = ()
    seed: int = 0

    def given(self, field_name: str) -> np.ndarray:
        """The array field ``field_name``, which the selector's ``needs`` promised (a bug if absent)."""
        value = getattr(self, field_name)
        if value is None:
            raise ValueError(f"SelectorInput.{field_name} is not filled: the selector's needs do not declare it")
        return value


Scores = Union[Sequence[float], "np.ndarray", list[Ranked]]  # noqa: UP007 (a string member needs Union)
Scorer = Callable[[SelectorInput], Scores]


@dataclass(frozen=True)
class Selector:
    """A registered ranking method."""

    name: str
    score: Scorer
    needs: tuple[str, ...]
    cost: Cost
    better: Better
    description: str
    pooled: bool = False  # its scores are relative to the pool: score every expert's outputs in ONE call
    higher_is_better: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "higher_is_better", self.better == "higher")

    def needs_text(self) -> str:
        return ", ".join(self.needs) or "nothing"


#: the composite method: an index method shortlists, a forward method re-ranks only the shortlist
TWO_STAGE = "two-stage"
TWO_STAGE_HELP = ("two-stage: an index method (--shortlist-by; model2vec when fitted, else asym) shortlists "
                  "--shortlist K experts, then a forward method (--rerank, default logme) scores only those K")

#: name -> Selector, in registration order (the order `taskreg select --help` lists them)
SELECTORS: dict[str, Selector] = {}


def register_selector(name: str, *, needs: Sequence[str] = (), cost: Cost, better: Better,
                      description: str, pooled: bool = False) -> Callable[[Scorer], Scorer]:
    """Decorator: register ``fn`` as the scorer of ranking method ``name`` (see the module docstring).

    needs : keys of :data:`NEEDS` (empty: nothing); cost : a key of :data:`COSTS` ("index" needs exactly one
    of task2vec/domain/model2vec, "forward" exactly one of features/logits, "none" at most one of sizes/prior);
    better : "lower" or "higher", the direction of the score.
    pooled : a "forward" method whose scores are only defined relative to the other experts (e.g. normalised
    over them): the registry then passes every expert's outputs in one call, not one expert at a time.
    """
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"selector name {name!r}: use letters, digits, '-' and '_'")
    if cost not in COSTS:
        raise ValueError(f"selector {name!r}: cost must be one of {', '.join(COSTS)}, got {cost!r}")
    if better not in ("lower", "higher"):
        raise ValueError(f"selector {name!r}: better must be 'lower' or 'higher', got {better!r}")
    needs = tuple(needs)
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        raise ValueError(f"selector {name!r}: unknown needs {unknown}; known: {', '.join(NEEDS)}")
    if not set(needs) <= _ALLOWED[cost]:
        raise ValueError(f"selector {name!r}: a {cost!r} method can need only {', '.join(sorted(_ALLOWED[cost]))}")
    if cost in _ONE_OF and len(_ONE_OF[cost] & set(needs)) != 1:
        raise ValueError(f"selector {name!r}: a {cost!r} method needs exactly one of "
                         f"{', '.join(sorted(_ONE_OF[cost]))}")
    if cost == "none" and len(set(needs)) > 1:
        raise ValueError(f"selector {name!r}: a 'none' method ranks by one recorded fact (sizes or prior)")
    if pooled and cost != "forward":
        raise ValueError(f"selector {name!r}: only a 'forward' method can be pooled (the others score all at once)")
    if "trivial" in needs and "domain" in needs:
        raise ValueError(f"selector {name!r}: the domain embedding has no trivial embedding")

    def add(fn: Scorer) -> Scorer:
        if name in SELECTORS:
            raise ValueError(f"selector {name!r} is already registered")
        SELECTORS[name] = Selector(name, fn, needs, cost, better, description, pooled)
        return fn

    return add


def list_selectors(cost: Cost | None = None) -> list[str]:
    """Names of the registered methods (of one cost class), in registration order."""
    return [s.name for s in SELECTORS.values() if cost is None or s.cost == cost]


def get_selector(name: str) -> Selector:
    """The registered method ``name``; an unknown name is a one-line error listing the known ones."""
    try:
        return SELECTORS[name]
    except (KeyError, TypeError):
        raise TaskregError(f"unknown selection method {name!r}; choose one of "
                           f"{', '.join([*SELECTORS, TWO_STAGE])}") from None


# ------------------------------------------------------------------------------------ the built-in methods
# Task2Vec model selection (Achille et al. 2019, Sect. 3.3-3.4, 4.2) and its baselines; see selection/select.py
# for the distances' conventions and selection/transferability.py for the scores' papers.

@register_selector("model2vec", needs=("model2vec", "trivial"), cost="index", better="lower",
                   description="d_asym from the query's Task2Vec to each expert's Model2Vec vector (Sect. 3.4)")
def model2vec(q: SelectorInput) -> Scores:
    from taskreg.embedders.distances import d_asym_many

    return d_asym_many(q.given("query"), q.given("candidates"), q.given("t0"), q.alpha)


@register_selector("asym", needs=("task2vec", "trivial"), cost="index", better="lower",
                   description="d_asym from the query's Task2Vec to each expert's training task (Sect. 3.3)")
def asym(q: SelectorInput) -> Scores:
    from taskreg.embedders.distances import d_asym_many

    return d_asym_many(q.given("query"), q.given("candidates"), q.given("t0"), q.alpha)


@register_selector("sym", needs=("task2vec",), cost="index", better="lower",
                   description="d_sym between the query's Task2Vec and each expert's training task")
def sym(q: SelectorInput) -> Scores:
    from taskreg.embedders.distances import d_sym_many

    return d_sym_many(q.given("query"), q.given("candidates"))


@register_selector("domain", needs=("domain",), cost="index", better="lower",
                   description="cosine distance of mean probe features (the domain embedding baseline)")
def domain(q: SelectorInput) -> Scores:
    import numpy as np

    from taskreg.embedders.distances import cosine_distance

    return np.atleast_1d(cosine_distance(q.given("query"), q.given("candidates")))


@register_selector("logme", needs=("features",), cost="forward", better="higher",
                   description="LogME: evidence of a Bayesian linear model on the expert's features")
def logme(q: SelectorInput) -> Scores:
    from taskreg.selection.transferability import logme as score

    return [score(f, q.given("y")) for f in q.outputs]


@register_selector("leep", needs=("logits",), cost="forward", better="higher",
                   description="LEEP: log expected empirical prediction of the expert's own head")
def leep(q: SelectorInput) -> Scores:
    from taskreg.selection.transferability import leep as score
    from taskreg.selection.transferability import softmax

    return [score(softmax(z), q.given("y")) for z in q.outputs]


@register_selector("nce", needs=("logits",), cost="forward", better="higher",
                   description="NCE: negative conditional entropy of the labels given the head's argmax")
def nce(q: SelectorInput) -> Scores:
    from taskreg.selection.transferability import nce as score

    return [score(z.argmax(1), q.given("y")) for z in q.outputs]


@register_selector("hscore", needs=("features",), cost="forward", better="higher",
                   description="H-score: between-class over total feature covariance")
def hscore(q: SelectorInput) -> Scores:
    from taskreg.selection.transferability import hscore as score

    return [score(f, q.given("y")) for f in q.outputs]


@register_selector("sfda", needs=("features",), cost="forward", better="higher",
                   description="SFDA: Bayes classifier in a regularised Fisher space after self-challenging mixing")
def sfda(q: SelectorInput) -> Scores:
    from taskreg.selection.sfda import sfda as score

    return [score(f, q.given("y")) for f in q.outputs]


@register_selector("ncti", needs=("features",), cost="forward", better="higher", pooled=True,
                   description="NCTI: distance from neural collapse, its three terms normalised over the experts")
def ncti(q: SelectorInput) -> Scores:
    from taskreg.selection.ncti import ncti as score

    return score(q.outputs, q.given("y"))


# issue 15 (h6): ETran, leave-one-out k-NN, TransRate, GBC; each module cites its paper
@register_selector("etran", needs=("features",), cost="forward", better="higher",
                   description="ETran: energy of the features plus the class-mean posterior (ICCV 2023)")
def etran(q: SelectorInput) -> Scores:
    from taskreg.selection.etran import etran as score

    return [score(f, q.given("y")) for f in q.outputs]


@register_selector("etran-energy", needs=("features",), cost="forward", better="higher",
                   description="ETran's label-free energy term: logsumexp of the features, lowest 0.5%")
def etran_energy(q: SelectorInput) -> Scores:
    from taskreg.selection.etran import etran_energy as score

    return [score(f) for f in q.outputs]


@register_selector("knn", needs=("features",), cost="forward", better="higher",
                   description="leave-one-out 5-NN accuracy on the expert's features (cosine)")
def knn(q: SelectorInput) -> Scores:
    from taskreg.selection.knn import knn_accuracy as score

    return [score(f, q.given("y")) for f in q.outputs]


@register_selector("transrate", needs=("features",), cost="forward", better="higher",
                   description="TransRate: coding rate of the features minus that within classes (ICML 2022)")
def transrate(q: SelectorInput) -> Scores:
    from taskreg.selection.transrate import transrate as score

    return [score(f, q.given("y")) for f in q.outputs]


@register_selector("gbc", needs=("features",), cost="forward", better="higher",
                   description="GBC: minus the Bhattacharyya overlap of class Gaussians (CVPR 2022)")
def gbc(q: SelectorInput) -> Scores:
    from taskreg.selection.gbc import gbc as score

    return [score(f, q.given("y")) for f in q.outputs]


@register_selector("generic", needs=("sizes",), cost="none", better="higher",
                   description="the expert trained on the broadest task (classes x samples) first")
def generic(q: SelectorInput) -> Scores:
    from taskreg.selection.select import generic_expert

    classes = [c for c, _ in q.sizes]
    samples = [s for _, s in q.sizes]
    first = generic_expert(classes, samples)  # its tie rule: more classes, then the earlier expert
    rest = sorted((i for i in range(q.n) if i != first), key=lambda i: -classes[i] * samples[i])
    return [Ranked(i, float(classes[i] * samples[i])) for i in [first, *rest]]


@register_selector("prior", needs=("prior",), cost="none", better="higher",
                   description="the expert most accurate on its own reference task first (ImageNet top-1 of a zoo "
                               "model, held-out accuracy of a trained one; arXiv 2503.18528's baseline)")
def prior(q: SelectorInput) -> Scores:
    return [float(a) for a in q.priors]


@register_selector("random", cost="none", better="lower",
                   description="chance: a seeded random order (the score is the draw position)")
def random(q: SelectorInput) -> Scores:
    from taskreg.selection.select import random_ranking

    position = [0.0] * q.n
    for r, i in enumerate(random_ranking(q.n, q.seed)):
        position[i] = float(r)
    return position
