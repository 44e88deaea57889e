"""``taskreg demo``: build a real registry from built-in data and report what taskreg knows.

Every step is resumable (names already in the registry are skipped, finished Taskonomy jobs are
reused), so a second run only re-answers the queries and rewrites the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from taskreg import data as datasets
from taskreg.errors import TaskregError
from taskreg.registry import Registry
from taskreg.selection.selectors import TWO_STAGE, list_selectors

Step = Callable[[str], Callable[[int, int], None]]
Log = Callable[[str], None]

@dataclass(frozen=True)
class ExpertPlan:
    """One demo expert: ``how`` is ``zoo:<zoo model>`` (packaged ImageNet weights, no training data here; with
    ``zoo+probe:`` also registered as a probe of the same name, to fine-tune from), ``probe:<probe>`` (fine-tuned
    from a registered probe, the default one when empty: all layers, or its last ``train_blocks`` blocks) or
    ``scratch:<arch>`` (trained from scratch)."""

    name: str
    how: str
    source: str | None = None
    train_blocks: int | None = None
    epochs: int = 3


@dataclass(frozen=True)
class DemoPlan:
    """What the demo registers: its probe, task library, experts and held-out queries."""

    title: str
    probe: str  # "zoo:<zoo model>" or "train:<arch>"
    library: list[tuple[str, str]]  # (name, source)
    experts: list[ExpertPlan]
    queries: list[tuple[str, str]]  # (label, source); never registered, so Model2Vec never sees them
    input_size: int | None = None  # resolution of the zoo probe and experts (px)
    max_samples: int = 400  # images per Task2Vec embedding
    model2vec_l2: float | str = "auto"


# The small plan (no zoo extra): three domains plus transformed digits; every task is a split=test subset, the
# experts are fine-tuned from the trained probe on split=train subsets, so no image is shared.
SMALL_PLAN = DemoPlan(
    title="a small probe trained here, six experts fine-tuned from it",
    probe="train:cifar_resnet8",
    library=[
        ("mnist-01", "builtin:mnist5k?classes=0,1&n=240&split=test"),
        ("mnist-38", "builtin:mnist5k?classes=3,8&n=240&split=test"),
        ("mnist-479", "builtin:mnist5k?classes=4,7,9&n=300&split=test"),
        ("mnist-2356", "builtin:mnist5k?classes=2,3,5,6&n=300&split=test"),
        ("mnist-inv-16", "builtin:mnist5k?classes=1,6&n=240&split=test&transform=invert"),
        ("mnist-rot-27", "builtin:mnist5k?classes=2,7&n=240&split=test&transform=rot90"),
        ("digits-05", "builtin:digits?classes=0,5&split=test"),
        ("digits-1234", "builtin:digits?classes=1,2,3,4&split=test"),
        ("digits-blur-69", "builtin:digits?classes=6,9&split=test&transform=blur"),
        ("patches-texture", "builtin:patches?classes=brick,grass,gravel&split=test"),
        ("patches-animals", "builtin:patches?classes=astronaut,chelsea,coffee&split=test"),
        ("patches-science", "builtin:patches?classes=hubble_deep_field,immunohistochemistry,retina,moon&split=test"),
        ("patches-text", "builtin:patches?classes=page,text,camera&split=test"),
        ("patches-noise", "builtin:patches?classes=rocket,coins,china,flower&split=test&transform=noise"),
        ("faces", "builtin:faces?split=test"),
    ],
    experts=[ExpertPlan(f"expert-{n}", "probe:", s) for n, s in (
        ("mnist-all", "builtin:mnist5k?n=1200&split=train"),
        ("mnist-inverted", "builtin:mnist5k?n=800&split=train&transform=invert"),
        ("digits-all", "builtin:digits?split=train"),
        ("photos", "builtin:patches?n=1200&split=train"),
        ("photos-noisy", "builtin:patches?n=800&split=train&transform=noise"),
        ("faces", "builtin:faces?split=train"),
    )],
    queries=[
        ("MNIST 5 vs 6", "builtin:mnist5k?classes=5,6&n=400&split=train"),
        ("photographs: coins, rocket, camera", "builtin:patches?classes=coins,rocket,camera&split=train"),
        ("inverted MNIST 0 vs 8", "builtin:mnist5k?classes=0,8&n=400&split=train&transform=invert"),
    ],
)

# The zoo plan (``pip install taskreg[zoo]``, which ``make`` installs). Task2Vec runs on the small probe trained
# here: on this 8-32 px data it measured better than the ImageNet Lite0 (benchmarks/RESULTS.md, "Which probe is the
# default": asym +30% vs +56% over the oracle on 100 tasks, 8x cheaper per task). The experts: the three ImageNet
# Lites (no training data here: Model2Vec places them by their measured errors), per domain the ImageNet Lite0
# fine-tuned in its last 2 blocks and a small CIFAR ResNet-8 trained from scratch; the two experts of a domain share
# their training task, so only their measured errors (Model2Vec's b_i) tell them apart. Library tasks are split=test
# subsets; the experts train on split=train; the queries are split=test class sets no library task has (500 images,
# so the measured truth has 250 test images).
_DOMAIN_EXPERTS = (("mnist", "builtin:mnist5k?n=2000&split=train"), ("animals", "builtin:animals?n=2000&split=train"),
                   ("photos", "builtin:patches?n=2000&split=train"))
ZOO_PLAN = DemoPlan(
    title="Task2Vec on a small probe trained here; nine experts from the model zoo (ImageNet EfficientNet-Lite0/1/2, "
          "three Lite0 fine-tunes, three small networks trained from scratch)",
    probe="train:cifar_resnet8",
    input_size=64,
    max_samples=300,
    library=[
        ("mnist-0134", "builtin:mnist5k?classes=0,1,3,4&n=240&split=test"),
        ("mnist-2789", "builtin:mnist5k?classes=2,7,8,9&n=240&split=test"),
        ("mnist-inv-0123", "builtin:mnist5k?classes=0,1,2,3&n=240&split=test&transform=invert"),
        ("mnist-rot-4567", "builtin:mnist5k?classes=4,5,6,7&n=240&split=test&transform=rot90"),
        ("animals-wild", "builtin:animals?classes=bear,elephant,giraffe,zebra&n=240&split=test"),
        ("animals-farm", "builtin:animals?classes=cow,horse,sheep,dog&n=240&split=test"),
        ("animals-inv", "builtin:animals?classes=cat,bird,cow,giraffe&n=240&split=test&transform=invert"),
        ("animals-colour", "builtin:animals?classes=bird,elephant,horse,zebra&n=240&split=test&transform=colour"),
        ("digits-0123", "builtin:digits?classes=0,1,2,3&split=test"),
        ("digits-5678", "builtin:digits?classes=5,6,7,8&split=test"),
        ("patches-texture", "builtin:patches?classes=brick,grass,gravel&split=test"),
        ("patches-animals", "builtin:patches?classes=astronaut,chelsea,coffee&split=test"),
        ("patches-science", "builtin:patches?classes=hubble_deep_field,immunohistochemistry,retina,moon&split=test"),
        ("patches-noise", "builtin:patches?classes=rocket,coins,china,flower&split=test&transform=noise"),
        ("faces", "builtin:faces?split=test"),
    ],
    experts=[ExpertPlan("imagenet-lite0", "zoo+probe:efficientnet_lite0")]
    + [ExpertPlan(f"imagenet-lite{i}", f"zoo:efficientnet_lite{i}") for i in (1, 2)]
    + [ExpertPlan(f"ft-{d}", "probe:imagenet-lite0", s, train_blocks=2, epochs=4) for d, s in _DOMAIN_EXPERTS]
    + [ExpertPlan(f"small-{d}", "scratch:cifar_resnet8", s, epochs=5) for d, s in _DOMAIN_EXPERTS],
    queries=[
        ("MNIST 2, 3, 5, 6, 8", "builtin:mnist5k?classes=2,3,5,6,8&n=500&split=test"),
        ("animal silhouettes: bear, cat, dog, sheep", "builtin:animals?classes=bear,cat,dog,sheep&n=500&split=test"),
        ("noisy photographs, 17 classes", "builtin:patches?n=600&split=test&transform=noise"),
    ],
    model2vec_l2=10.0,  # the zoo benchmark's penalty; "auto" would fit 20 more times (see RESULTS.md)
)
QUICK_TASKS = ("edges2d", "denoising", "autoencoding", "photo", "category", "random", "jigsaw")
BUDGETS = (1, 3, 6)


@dataclass
class DemoConfig:
    probe_epochs: int = 4
    expert_epochs: int = 3
    max_samples: int = 400
    taskonomy_images: int = 960
    taskonomy_self_epochs: int = 6
    taskonomy_transfer_epochs: int = 12
    taskonomy_max_order: int = 2
    executor: str = "local:2"
    seed: int = 0
    device: str = "cpu"
    quick: bool = False  # a smoke run: 5 tasks, a third of the experts, 1 query, the tiny dictionary (wiring only)
    zoo: bool | None = None  # the zoo plan; None: when the zoo extra is installed

    def __post_init__(self) -> None:
        if self.quick:
            self.probe_epochs, self.expert_epochs, self.max_samples = 1, 1, 150
            self.taskonomy_self_epochs, self.taskonomy_transfer_epochs = 2, 3

    def plan(self) -> DemoPlan:
        """The plan to run: the zoo plan when asked for (or, by default, when its weights are installed)."""
        from taskreg.embedders.zoo import zoo_installed

        use_zoo = self.zoo if self.zoo is not None else all(zoo_installed(f"efficientnet_lite{i}") for i in range(3))
        if use_zoo and not all(zoo_installed(f"efficientnet_lite{i}") for i in range(3)):
            raise TaskregError("the zoo demo needs the zoo extra: pip install 'taskreg[zoo]' (or run it with --no-zoo)")
        plan = ZOO_PLAN if use_zoo else SMALL_PLAN
        if not self.quick:
            return plan
        return replace(plan, library=plan.library[::3], experts=plan.experts[::3], queries=plan.queries[:1],
                       max_samples=min(plan.max_samples, self.max_samples))


@dataclass
class DemoResult:
    root: Path
    plan: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    selections: list[dict[str, Any]] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None


def run_demo(root: Path, cfg: DemoConfig, step: Step, log: Log) -> DemoResult:
    """Build (or reuse) the demo registry at ``root`` and write ``root/report/index.html``."""
    out = DemoResult(root=Path(root))
    timer = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal timer
        now = time.perf_counter()
        out.seconds[name] = now - timer
        timer = now

    plan = cfg.plan()
    out.plan = plan.title
    reg = Registry.init(root)
    _check_plan(reg, plan)
    log(f"plan: {plan.title}")
    _setup_probe(reg, plan, cfg, step, log)
    lap("probe")

    have = {t.name for t in reg.list_tasks()}
    todo = [(n, s) for n, s in plan.library if n not in have]
    bar = step(f"task library ({len(todo)} to embed)")
    for i, (name, source) in enumerate(todo):
        reg.add_task(name, source, max_samples=plan.max_samples, seed=cfg.seed, device=cfg.device)
        bar(i + 1, len(todo))
    lap("tasks")

    have_experts = {e.name for e in reg.list_experts()}
    todo_experts = [e for e in plan.experts if e.name not in have_experts]
    bar = step(f"experts ({len(todo_experts)} to add or train)")
    for i, exp in enumerate(todo_experts):
        _add_expert(reg, exp, plan, cfg)
        bar(i + 1, len(todo_experts))
    lap("experts")

    experts = [e.name for e in plan.experts]
    library = [n for n, _ in plan.library]  # not the experts' training sets: 3,000 more images per expert
    measured, _ = reg.evaluate(experts=experts, tasks=library, device=cfg.device,
                               progress=step("expert x task linear probes"))
    if measured or not reg.model2vec_fitted(reg.resolve_probe(None).name, "montecarlo"):
        reg.fit_model2vec(seed=cfg.seed, l2=plan.model2vec_l2)
    lap("evaluation + Model2Vec")

    bar = step(f"answering select for {len(plan.queries)} held-out dataset(s)")
    for i, (label, source) in enumerate(plan.queries):
        out.selections.append(_answer(reg, label, source, experts, plan, cfg))
        bar(i + 1, len(plan.queries))
    lap("select")

    rep = reg.taskonomy_build("builtin-tiny" if cfg.quick else "builtin", max_order=cfg.taskonomy_max_order,
                              executor=cfg.executor, n_images=cfg.taskonomy_images,
                              self_epochs=cfg.taskonomy_self_epochs, transfer_epochs=cfg.taskonomy_transfer_epochs,
                              tasks=QUICK_TASKS if cfg.quick else None, seed=cfg.seed, device=cfg.device,
                              register_experts=False, step_progress=step)
    lap("taskonomy build")
    for budget in BUDGETS:
        pol = reg.policy(rep.affinity, budget, max_order=cfg.taskonomy_max_order)
        out.policies.append({"budget": budget, "policy": pol})
    lap("policies")

    from taskreg.registry.report import write_report

    out.report = write_report(reg, out, rep.affinity, log)
    lap("report")
    return out


def _check_plan(reg: Registry, plan: DemoPlan) -> None:
    """Refuse a demo registry built with the other plan (its experts say which)."""
    other = SMALL_PLAN if plan.title == ZOO_PLAN.title else ZOO_PLAN
    theirs = {e.name for e in other.experts} - {e.name for e in plan.experts}
    found = sorted(e.name for e in reg.list_experts() if e.name in theirs)
    if found:
        flag = "--no-zoo" if other is SMALL_PLAN else "--zoo"
        raise TaskregError(f"{reg.root} is a demo registry of the other plan (it has {found[0]}): remove it, "
                           f"use another --registry, or run the demo with {flag}")


def _setup_probe(reg: Registry, plan: DemoPlan, cfg: DemoConfig, step: Step, log: Log) -> None:
    """Register the plan's probe as ``default`` (once)."""
    kind, what = plan.probe.split(":", 1)
    if any(p.name == "default" for p in reg.list_probes()):
        return
    if kind == "zoo":
        log(f"probe: the ImageNet {what} from the zoo wheel, at {plan.input_size} px")
        reg.add_zoo_model(what, role="probe", name="default", input_size=plan.input_size, device=cfg.device)
    else:
        log(f"training the default probe ({what} on photograph patches + MNIST)")
        reg.train_probe("default", arch=what, epochs=cfg.probe_epochs, seed=cfg.seed, device=cfg.device,
                        sources=("builtin:patches?split=train", "builtin:mnist5k?n=2000&split=train"),
                        progress=step("probe training"))


def _add_expert(reg: Registry, exp: ExpertPlan, plan: DemoPlan, cfg: DemoConfig) -> None:
    """Register one planned expert: from the zoo, fine-tuned from a probe, or trained from scratch."""
    kind, _, what = exp.how.partition(":")
    if kind in ("zoo", "zoo+probe"):
        role = "both" if kind == "zoo+probe" else "expert"
        reg.add_zoo_model(what, role=role, name=exp.name, input_size=plan.input_size, device=cfg.device)
        return
    assert exp.source is not None
    epochs = cfg.expert_epochs if cfg.quick else exp.epochs
    task = f"train-{exp.name.split('-', 1)[-1]}"  # experts of one domain share their training data and task
    if kind == "probe":
        if what and not any(t.name == task for t in reg.list_tasks()):
            # the training task is embedded with the default probe (Task2Vec's), not the one the expert starts from
            reg.add_task(task, exp.source, max_samples=plan.max_samples, seed=cfg.seed, device=cfg.device)
        reg.train_expert(exp.name, exp.source, probe=what or None, task_name=task, epochs=epochs, seed=cfg.seed,
                         device=cfg.device, train_blocks=exp.train_blocks, max_samples=plan.max_samples)
    else:
        reg.train_expert(exp.name, exp.source, from_probe=False, arch=what, task_name=task, epochs=epochs,
                         seed=cfg.seed, device=cfg.device, max_samples=plan.max_samples)


def _answer(reg: Registry, label: str, source: str, experts: list[str], plan: DemoPlan,
            cfg: DemoConfig) -> dict[str, Any]:
    """Rank the experts for a held-out dataset with every method, and measure every expert on it (truth)."""
    from taskreg.trainers.experts import LinearProbeProtocol, linear_probe_error

    ds = datasets.load(source)
    truth: dict[str, float] = {}
    for name in experts:
        rec, model, spec = reg.load_expert(name)
        truth[name] = linear_probe_error(reg.expert_features(rec, model, spec, ds, device=cfg.device), ds.y,
                                         LinearProbeProtocol()).test_error
    rankings: dict[str, dict[str, Any]] = {}
    for method in [*list_selectors(), TWO_STAGE]:  # every registered ranking method, and the two-stage selector
        sel = reg.select(source, method=method, top=len(experts), dataset=ds, max_samples=plan.max_samples,
                         seed=cfg.seed, device=cfg.device, verify=3 if method == "model2vec" else 0, shortlist=3)
        ranked = [r.expert for r in sel.results]
        rankings[method] = {"ranking": ranked, "chosen": ranked[0], "error": truth[ranked[0]],
                            "seconds": sel.seconds, "cost": sel.cost, "verified": sel.measured_winner}
    oracle = min(truth, key=truth.__getitem__)
    return {"label": label, "source": source, "truth": truth, "oracle": oracle, "rankings": rankings,
            "n": ds.n, "classes": ds.n_classes, "domain": ds.domain,
            "mean_error": float(np.mean(list(truth.values())))}
