"""Transfer policies under a supervision budget: the Taskonomy Binary Integer Program (Sec. 3.4).

Given an :class:`~taskreg.selection.affinity_sets.AffinitySet` (affinity p of every transfer
``sources -> target``, ``self`` = the target's own fully supervised network), choose

* which tasks to label and train from scratch ("supervised"; each costs ``cost[task]``, default 1), and
* for every requested target exactly one way to solve it: its own network (``self``, only if it is
  supervised) or one transfer whose sources are all available,

maximising the sum over targets of ``importance[target] * p(chosen option)`` subject to
``sum(cost of supervised tasks) <= budget``.

Variables: ``x_i`` in {0, 1} per option i (a row of the table with order <= max_order, for a
requested target) and ``z_v`` in {0, 1} per task v that some option needs.
Constraints: (I) ``x_i <= z_s`` for every source s of option i (the paper aggregates these into
``|sources(i)| x_i <= sum_s z_s``; the disaggregated form has the same integer solutions and a
tighter LP relaxation); ``self -> t`` needs ``z_t``. (II) ``sum_{i -> t} x_i = 1`` per target.
(III) ``sum_v cost_v z_v <= budget``. Transfers are never chained (a source must be supervised or
source-only, not itself transferred), as in the paper.

Decisions (documented because the paper leaves them implicit):

* **Every task trained from scratch counts against the budget, source-only tasks included** (cost 1
  each by default), as in the paper: its supervision budget gamma counts every task trained from
  scratch (Sec. 3), and its Fig. 8 budget axis runs to 26 = 22 targets + 4 source-only tasks.
  ``free_source_only=True`` makes the source-only tasks (colorization, jigsaw and inpainting need no
  labels, random projection needs no training) cost 0 and always available, so the budget counts
  *labelled* tasks only; an explicit ``cost`` entry beats either default.
* **A supervised target is solved by its own network** (``pin_supervised=True``, the default): a
  policy is then a partition — every requested target is either in ``Policy.supervised`` or the
  target of exactly one of ``Policy.transfers``, never both (constraint IV: ``x_{self->t} >= z_t``).
  The paper's model lets a task that is supervised anyway (as a source for others) still be solved
  by a transfer that beats its own network ("still transferring to some targets when the budget is
  26"); ``pin_supervised=False`` gives that variant, where a task can be in ``supervised`` *and* the
  target of a transfer. Either way every requested target is in exactly one of
  ``Policy.solved_by_self`` and the transfer targets.
* ``pixels -> t`` rows (a network trained from scratch on the little transfer data), if present, need
  no supervised task.
* ``Policy.supervised`` lists only tasks the chosen options actually use; the solver may leave other
  ``z_v = 1`` when it costs nothing, those are dropped (objective and feasibility unchanged).
"""

from __future__ import annotations

import difflib
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import pulp

from taskreg.errors import TaskregError
from taskreg.selection.affinity_sets import PIXELS, SELF, AffinitySet, Transfer

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is Python 3.11+; annotations are not evaluated at run time

_EPS = 1e-9


class PolicyOptions(TypedDict, total=False):
    """The keyword options every policy search takes (:func:`solve_policy`, :func:`minimum_budget`,
    :func:`enumerate_policies`, :func:`random_feasible_policies`); see :func:`solve_policy` for their meaning.

    Defaults: ``max_order`` None (all orders in the table), ``targets`` None (every target that is not source-only),
    ``source_only`` None (``aff.source_only``), ``cost`` None (1 per task), ``free_source_only`` False.
    """

    max_order: int | None
    targets: Sequence[str] | None
    source_only: Sequence[str] | None
    cost: Mapping[str, float] | None
    free_source_only: bool


@dataclass(frozen=True)
class PolicyTransfer:
    """The chosen transfer ``sources -> target`` and its value p in the affinity table."""

    target: str
    sources: tuple[str, ...]
    value: float


@dataclass
class Policy:
    """A transfer policy (a taxonomy): what to supervise and how every target is solved.

    supervised : tasks to label and train from scratch (not source-only), sorted.
    transfers : one entry per target solved by a transfer (not by its own network), sorted by target.
    solved_by_self : targets solved by their own supervised network, sorted.
    source_only_used : source-only tasks that some chosen transfer reads, sorted.
    objective : sum over targets of importance * p(chosen option).
    cost : total cost of the tasks the policy trains (supervised and source-only used).
    status : "optimal", "time limit (feasible)", "enumerated" or "random".
    """

    affinity: str
    budget: float
    max_order: int
    objective: float
    supervised: list[str]
    transfers: list[PolicyTransfer]
    status: str
    seconds: float
    targets: list[str] = field(default_factory=list)
    solved_by_self: list[str] = field(default_factory=list)
    source_only_used: list[str] = field(default_factory=list)
    cost: float = 0.0

    def choice(self, target: str) -> tuple[str, ...]:
        """The sources chosen for ``target`` (``("self",)`` if it is solved by its own network)."""
        if target in self.solved_by_self:
            return (SELF,)
        for tr in self.transfers:
            if tr.target == target:
                return tr.sources
        raise TaskregError(f"'{target}' is not a target of this policy (targets: {', '.join(self.targets)})")


@dataclass
class _Option:
    transfer: Transfer
    needs: tuple[str, ...]  # tasks that must be trained for this option (self -> (target,))
    weight: float  # importance[target] * p


@dataclass
class _Problem:
    aff: AffinitySet
    budget: float
    max_order: int
    targets: list[str]
    source_only: tuple[str, ...]
    importance: dict[str, float]
    cost: dict[str, float]  # for every task some option needs
    options: dict[str, list[_Option]]  # per target
    pin_supervised: bool = True  # constraint IV: a supervised target is solved by its own network

    @property
    def nodes(self) -> list[str]:
        return sorted(self.cost)


def _close(name: str, pool: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(pool), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _check_weights(values: Mapping[str, float] | None, what: str, known: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (values or {}).items():
        if k not in known:
            raise TaskregError(f"{what} given for unknown task '{k}'{_close(k, known)}")
        fv = float(v)
        if not math.isfinite(fv) or fv < 0:
            raise TaskregError(f"{what} of '{k}' must be a finite number >= 0, got {v}")
        out[k] = fv
    return out


def _build_problem(
    aff: AffinitySet,
    budget: float,
    *,
    importance: Mapping[str, float] | None = None,
    pin_supervised: bool = True,
    max_order: int | None = None,
    targets: Sequence[str] | None = None,
    source_only: Sequence[str] | None = None,
    cost: Mapping[str, float] | None = None,
    free_source_only: bool = False,
) -> _Problem:
    """Validate the inputs of a policy search and list every target's usable options."""
    try:
        budget = float(budget)
    except (TypeError, ValueError):
        raise TaskregError(f"budget must be a number, got {budget!r}") from None
    if math.isnan(budget) or budget < 0:
        raise TaskregError(f"budget must be a number >= 0, got {budget}")
    if max_order is None:
        max_order = aff.max_order
    elif int(max_order) != max_order or max_order < 1:
        raise TaskregError(f"max_order must be an integer >= 1, got {max_order}")
    max_order = int(max_order)
    tasks = aff.tasks
    if source_only is None:
        so = tuple(aff.source_only)
    else:
        so = tuple(source_only)
        for s in so:
            if s not in tasks:
                raise TaskregError(f"source-only task '{s}' is not in affinity set '{aff.name}'{_close(s, tasks)}")
    if targets is None:
        tlist = [t for t in aff.targets if t not in so]
    else:
        tlist = list(dict.fromkeys(targets))
        bad = [t for t in tlist if t in so]
        if bad:
            raise TaskregError(f"target(s) {', '.join(bad)} are source-only and cannot be targets")
        aff.check_tasks(tlist, what="target", allowed=aff.targets)
    if not tlist:
        raise TaskregError(f"affinity set '{aff.name}' has no targets to solve")
    imp = _check_weights(importance, "importance", tasks)
    costs_in = _check_weights(cost, "cost", tasks)

    options: dict[str, list[_Option]] = {}
    needed: set[str] = set()
    for t in tlist:
        r = imp.get(t, 1.0)
        opts = []
        for tr in aff.options_for(t, max_order):
            if tr.is_self:
                needs: tuple[str, ...] = (t,)
            elif tr.sources == (PIXELS,):
                needs = ()
            else:
                needs = tr.sources
            opts.append(_Option(transfer=tr, needs=needs, weight=r * tr.value))
            needed.update(needs)
        if not opts:
            raise TaskregError(f"target '{t}' has no option of order <= {max_order} in '{aff.name}'")
        options[t] = opts
    default = {v: 0.0 if free_source_only and v in so else 1.0 for v in needed}
    node_cost = {v: costs_in.get(v, default[v]) for v in needed}
    return _Problem(
        aff=aff, budget=budget, max_order=max_order, targets=tlist, source_only=so,
        importance={t: imp.get(t, 1.0) for t in tlist}, cost=node_cost, options=options,
        pin_supervised=pin_supervised,
    )


def _make_policy(prob: _Problem, chosen: Mapping[str, _Option], status: str, seconds: float) -> Policy:
    used: set[str] = set()
    for opt in chosen.values():
        used.update(opt.needs)
    so = set(prob.source_only)
    transfers = [
        PolicyTransfer(target=t, sources=chosen[t].transfer.sources, value=chosen[t].transfer.value)
        for t in sorted(chosen)
        if not chosen[t].transfer.is_self
    ]
    return Policy(
        affinity=prob.aff.name,
        budget=prob.budget,
        max_order=prob.max_order,
        objective=float(sum(opt.weight for opt in chosen.values())),
        supervised=sorted(used - so),
        transfers=transfers,
        status=status,
        seconds=seconds,
        targets=list(prob.targets),
        solved_by_self=sorted(t for t in chosen if chosen[t].transfer.is_self),
        source_only_used=sorted(used & so),
        cost=float(sum(prob.cost[v] for v in used)),
    )


def _pulp_model(prob: _Problem, maximise_value: bool) -> tuple[pulp.LpProblem, dict, dict]:
    """The BIP. ``maximise_value=False`` builds the min-cost covering variant (no budget constraint)."""
    sense = pulp.LpMaximize if maximise_value else pulp.LpMinimize
    model = pulp.LpProblem("taskonomy_policy", sense)
    node_index = {v: k for k, v in enumerate(prob.nodes)}
    z = {v: pulp.LpVariable(f"z_{node_index[v]}", cat=pulp.LpBinary) for v in prob.nodes}
    x: dict[tuple[str, int], pulp.LpVariable] = {}
    for ti, t in enumerate(prob.targets):
        for oi, _ in enumerate(prob.options[t]):
            x[(t, oi)] = pulp.LpVariable(f"x_{ti}_{oi}", cat=pulp.LpBinary)
    if maximise_value:
        model += pulp.lpSum(opt.weight * x[(t, oi)] for t in prob.targets for oi, opt in enumerate(prob.options[t]))
    else:
        model += pulp.lpSum(prob.cost[v] * z[v] for v in prob.nodes)
    for t in prob.targets:
        for oi, opt in enumerate(prob.options[t]):
            for v in opt.needs:  # constraint I
                model += x[(t, oi)] <= z[v]
        model += pulp.lpSum(x[(t, oi)] for oi in range(len(prob.options[t]))) == 1  # constraint II
        if prob.pin_supervised and maximise_value and t in z:
            for oi, opt in enumerate(prob.options[t]):
                if opt.transfer.is_self:  # constraint IV
                    model += x[(t, oi)] >= z[t]
    if maximise_value:
        cap = min(prob.budget, sum(prob.cost.values()))  # also turns budget=inf into a finite number
        model += pulp.lpSum(prob.cost[v] * z[v] for v in prob.nodes) <= cap  # constraint III
    return model, x, z


def _solver(time_limit: float | None) -> pulp.LpSolver:
    return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, gapRel=0.0)


def minimum_budget(aff: AffinitySet, *, time_limit: float | None = None, **options: Unpack[PolicyOptions]) -> float:
    """The smallest budget with a feasible policy (a weighted set-cover BIP, solved exactly by CBC)."""
    prob = _build_problem(aff, math.inf, **options)
    model, _, z = _pulp_model(prob, maximise_value=False)
    model.solve(_solver(time_limit))
    if model.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        raise TaskregError(f"no policy covers every target of '{aff.name}' even with unlimited budget")
    return float(sum(prob.cost[v] for v in prob.nodes if (z[v].value() or 0) > 0.5))


def solve_policy(
    aff: AffinitySet,
    budget: float,
    *,
    importance: Mapping[str, float] | None = None,
    time_limit: float | None = None,
    pin_supervised: bool = True,
    **options: Unpack[PolicyOptions],
) -> Policy:
    """The optimal transfer policy for ``budget`` (see the module docstring for the model).

    aff : the affinity table. budget : total label cost allowed (>= 0).
    max_order : largest transfer order considered (default: all in the table).
    targets : tasks to solve (default: every target of ``aff`` that is not source-only).
    source_only : tasks that are never targets (default ``aff.source_only``).
    importance : r_t per target (default 1; entries for known tasks that are not requested targets
        are ignored); cost : label cost per task (default 1; source-only tasks 0 with ``free_source_only``).
    free_source_only : source-only tasks cost nothing unless ``cost`` says otherwise (the budget then
        counts labelled tasks only); by default they cost 1 like every task trained from scratch.
    time_limit : seconds for CBC; if reached with a feasible solution the status says so.
    Raises TaskregError for bad arguments and for an infeasible budget (naming the minimum budget).
    """
    prob = _build_problem(aff, budget, importance=importance, pin_supervised=pin_supervised, **options)
    if time_limit is not None and (not math.isfinite(time_limit) or time_limit <= 0):
        raise TaskregError(f"time_limit must be a positive number of seconds, got {time_limit}")
    model, x, _ = _pulp_model(prob, maximise_value=True)
    start = time.perf_counter()
    model.solve(_solver(time_limit))
    seconds = time.perf_counter() - start
    if model.sol_status == pulp.LpSolutionOptimal:
        status = "optimal"
    elif model.sol_status == pulp.LpSolutionIntegerFeasible:
        status = "time limit (feasible)"
    else:
        if model.status == pulp.LpStatusInfeasible:
            need = minimum_budget(aff, max_order=prob.max_order, targets=prob.targets, source_only=prob.source_only,
                                  cost=options.get("cost"), free_source_only=options.get("free_source_only", False))
            raise TaskregError(
                f"budget {budget:g} is infeasible for '{aff.name}' (max order {prob.max_order}): "
                f"covering all {len(prob.targets)} targets needs a budget of at least {need:g}"
            )
        raise TaskregError(f"the BIP solver found no solution ({pulp.LpStatus[model.status]}); "
                           f"try a larger time_limit")
    chosen: dict[str, _Option] = {}
    for t in prob.targets:
        picked = [opt for oi, opt in enumerate(prob.options[t]) if (x[(t, oi)].value() or 0) > 0.5]
        if len(picked) != 1:
            raise ArithmeticError(f"BIP returned {len(picked)} options for target {t}")
        chosen[t] = picked[0]
    return _make_policy(prob, chosen, status, seconds)


def enumerate_policies(
    aff: AffinitySet,
    budget: float,
    *,
    importance: Mapping[str, float] | None = None,
    max_nodes: int = 16,
    pin_supervised: bool = True,
    **options: Unpack[PolicyOptions],
) -> list[Policy]:
    """Brute force: every affordable set of trained tasks, each target taking its best available option.

    Zero-cost tasks (source-only ones with ``free_source_only``) are always available; every subset of the other tasks
    within the budget is tried. Returns the distinct resulting policies, best objective first (the
    first one has the BIP optimum). Only for small instances: raises TaskregError if more than
    ``max_nodes`` tasks have a positive cost.
    """
    prob = _build_problem(aff, budget, importance=importance, pin_supervised=pin_supervised, **options)
    free = {v for v in prob.nodes if prob.cost[v] <= 0}
    paid = [v for v in prob.nodes if prob.cost[v] > 0]
    if len(paid) > max_nodes:
        raise TaskregError(f"{len(paid)} tasks to enumerate is too many for brute force (max_nodes={max_nodes})")
    start = time.perf_counter()
    seen: set[tuple] = set()
    policies: list[Policy] = []
    for k in range(len(paid) + 1):
        for subset in itertools.combinations(paid, k):
            if sum(prob.cost[v] for v in subset) > prob.budget + _EPS:
                continue
            avail = free | set(subset)
            chosen: dict[str, _Option] = {}
            for t in prob.targets:
                usable = [o for o in prob.options[t] if all(v in avail for v in o.needs)]
                if prob.pin_supervised and t in subset:
                    usable = [o for o in usable if o.transfer.is_self] or usable
                if not usable:
                    break
                chosen[t] = max(usable, key=lambda o: o.weight)
            else:
                key = tuple((t, chosen[t].transfer.sources) for t in prob.targets)
                if key not in seen:
                    seen.add(key)
                    policies.append(_make_policy(prob, chosen, "enumerated", 0.0))
    elapsed = time.perf_counter() - start
    for p in policies:
        p.seconds = elapsed
    policies.sort(key=lambda p: -p.objective)
    return policies


def random_feasible_policies(
    aff: AffinitySet,
    budget: float,
    n: int,
    rng: np.random.Generator,
    *,
    max_tries: int = 100,
    **options: Unpack[PolicyOptions],
) -> list[Policy]:
    """``n`` policies with random connectivity at the same budget (baseline of the paper's Fig. 11 test).

    For each policy, the tasks with a positive cost are visited in random order and supervised while
    they fit in the budget (a random maximal set); zero-cost tasks are always available. A supervised
    target is solved by its own network; every other target takes a uniformly random transfer whose
    sources are all available. A draw leaving some target without an option is redrawn (at most
    ``max_tries`` times in a row). Objectives are affinity sums (importance 1), as in :func:`solve_policy`.
    """
    if int(n) != n or n < 0:
        raise TaskregError(f"n must be an integer >= 0, got {n}")
    prob = _build_problem(aff, budget, **options)
    free = {v for v in prob.nodes if prob.cost[v] <= 0}
    paid = [v for v in prob.nodes if prob.cost[v] > 0]
    self_opt = {t: next((o for o in prob.options[t] if o.transfer.is_self), None) for t in prob.targets}
    transfer_opts = {t: [o for o in prob.options[t] if not o.transfer.is_self] for t in prob.targets}
    policies: list[Policy] = []
    failures = 0
    while len(policies) < n:
        avail = set(free)
        spent = 0.0
        for k in rng.permutation(len(paid)):
            v = paid[int(k)]
            if spent + prob.cost[v] <= prob.budget + _EPS:
                avail.add(v)
                spent += prob.cost[v]
        chosen: dict[str, _Option] = {}
        for t in prob.targets:
            own = self_opt[t]
            if own is not None and t in avail:
                chosen[t] = own
                continue
            usable = [o for o in transfer_opts[t] if all(v in avail for v in o.needs)]
            if not usable:
                break
            chosen[t] = usable[int(rng.integers(len(usable)))]
        else:
            policies.append(_make_policy(prob, chosen, "random", 0.0))
            failures = 0
            continue
        failures += 1
        if failures >= max_tries:
            raise TaskregError(f"no random feasible policy found for budget {budget:g} in {max_tries} tries")
    return policies


def random_feasible_policy(
    aff: AffinitySet,
    budget: float,
    rng: np.random.Generator,
    *,
    max_tries: int = 100,
    **options: Unpack[PolicyOptions],
) -> Policy:
    """One random feasible policy; see :func:`random_feasible_policies`."""
    return random_feasible_policies(aff, budget, 1, rng, max_tries=max_tries, **options)[0]


def evaluate_policy(policy: Policy, table: AffinitySet) -> dict[str, float]:
    """Each target's value in ``table`` (e.g. win rate vs. task = Quality) for the policy's choice.

    Returns {target: value}. Raises TaskregError if the table has no row for a chosen option.
    """
    out: dict[str, float] = {}
    for t in policy.targets:
        src = policy.choice(t)
        v = table.value(src, t)
        if v is None:
            raise TaskregError(f"table '{table.name}' has no row for {' '.join(src)} -> {t}")
        out[t] = v
    return out
