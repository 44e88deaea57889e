"""``taskreg demo``: build a real registry from built-in data and report what taskreg knows.

Every step is resumable (names already in the registry are skipped, finished Taskonomy jobs are
reused), so a second run only re-answers the queries and rewrites the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taskreg import data as datasets
from taskreg.registry import Registry
from taskreg.selection.selectors import list_selectors

Step = Callable[[str], Callable[[int, int], None]]
Log = Callable[[str], None]

# The task library: (name, source). Three domains plus transformed digits; every task is a split=test
# subset, the experts below are trained on split=train subsets, so no image is shared.
LIBRARY: list[tuple[str, str]] = [
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
]
# Experts: fine-tuned from the probe on disjoint (split=train) source tasks.
EXPERTS: list[tuple[str, str]] = [
    ("mnist-all", "builtin:mnist5k?n=1200&split=train"),
    ("mnist-inverted", "builtin:mnist5k?n=800&split=train&transform=invert"),
    ("digits-all", "builtin:digits?split=train"),
    ("photos", "builtin:patches?n=1200&split=train"),
    ("photos-noisy", "builtin:patches?n=800&split=train&transform=noise"),
    ("faces", "builtin:faces?split=train"),
]
# Held-out queries for `select` (not registered, so Model2Vec never sees them).
QUERIES: list[tuple[str, str]] = [
    ("MNIST 5 vs 6", "builtin:mnist5k?classes=5,6&n=400&split=train"),
    ("photographs: coins, rocket, camera", "builtin:patches?classes=coins,rocket,camera&split=train"),
    ("inverted MNIST 0 vs 8", "builtin:mnist5k?classes=0,8&n=400&split=train&transform=invert"),
]
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
    quick: bool = False  # a smoke run: 6 tasks, 3 experts, 1 query, the tiny dictionary (minutes, not quality)

    def __post_init__(self) -> None:
        if self.quick:
            self.probe_epochs, self.expert_epochs, self.max_samples = 1, 1, 150
            self.taskonomy_self_epochs, self.taskonomy_transfer_epochs = 2, 3


@dataclass
class DemoResult:
    root: Path
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

    reg = Registry.init(root)
    if not any(p.name == "default" for p in reg.list_probes()):
        log("training the default probe (cifar_resnet8 on photograph patches + MNIST)")
        reg.train_probe("default", arch="cifar_resnet8", epochs=cfg.probe_epochs, seed=cfg.seed, device=cfg.device,
                        sources=("builtin:patches?split=train", "builtin:mnist5k?n=2000&split=train"),
                        progress=step("probe training"))
    lap("probe")

    library = LIBRARY[::3] if cfg.quick else LIBRARY
    expert_list = EXPERTS[::2] if cfg.quick else EXPERTS
    queries = QUERIES[:1] if cfg.quick else QUERIES
    have = {t.name for t in reg.list_tasks()}
    todo = [(n, s) for n, s in library if n not in have]
    bar = step(f"task library ({len(todo)} to embed)")
    for i, (name, source) in enumerate(todo):
        reg.add_task(name, source, max_samples=cfg.max_samples, seed=cfg.seed, device=cfg.device)
        bar(i + 1, len(todo))
    lap("tasks")

    have_experts = {e.name for e in reg.list_experts()}
    todo = [(n, s) for n, s in expert_list if f"expert-{n}" not in have_experts]
    bar = step(f"experts ({len(todo)} to fine-tune)")
    for i, (name, source) in enumerate(todo):
        reg.train_expert(f"expert-{name}", source, task_name=f"train-{name}", epochs=cfg.expert_epochs,
                         seed=cfg.seed, device=cfg.device)
        bar(i + 1, len(todo))
    lap("experts")

    experts = [f"expert-{n}" for n, _ in expert_list]
    measured, _ = reg.evaluate(experts=experts, device=cfg.device, progress=step("expert x task linear probes"))
    if measured or not reg.model2vec_fitted("default", "montecarlo"):
        reg.fit_model2vec(seed=cfg.seed)
    lap("evaluation + Model2Vec")

    bar = step(f"answering select for {len(queries)} held-out dataset(s)")
    for i, (label, source) in enumerate(queries):
        out.selections.append(_answer(reg, label, source, experts, cfg))
        bar(i + 1, len(queries))
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


def _answer(reg: Registry, label: str, source: str, experts: list[str], cfg: DemoConfig) -> dict[str, Any]:
    """Rank the experts for a held-out dataset with every method, and measure every expert on it (truth)."""
    from taskreg.trainers.experts import LinearProbeProtocol, linear_probe_error

    ds = datasets.load(source)
    truth: dict[str, float] = {}
    for name in experts:
        rec, model, spec = reg.load_expert(name)
        truth[name] = linear_probe_error(reg.expert_features(rec, model, spec, ds, device=cfg.device), ds.y,
                                         LinearProbeProtocol()).test_error
    rankings: dict[str, dict[str, Any]] = {}
    for method in list_selectors():  # every registered ranking method
        sel = reg.select(source, method=method, top=len(experts), dataset=ds, max_samples=cfg.max_samples,
                         seed=cfg.seed, device=cfg.device, verify=3 if method == "model2vec" else 0)
        ranked = [r.expert for r in sel.results]
        rankings[method] = {"ranking": ranked, "chosen": ranked[0], "error": truth[ranked[0]],
                            "seconds": sel.seconds, "cost": sel.cost, "verified": sel.measured_winner}
    oracle = min(truth, key=truth.__getitem__)
    return {"label": label, "source": source, "truth": truth, "oracle": oracle, "rankings": rankings,
            "n": ds.n, "classes": ds.n_classes, "domain": ds.domain,
            "mean_error": float(np.mean(list(truth.values())))}
