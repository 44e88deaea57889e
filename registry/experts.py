"""Experts: their records (list, show, remove) and their registration (a user's weights, a fine-tuning, or a
network another service built: a Taskonomy task network, a zoo model).

The other expert services are given this one: :mod:`taskreg.registry.expert_evaluation` (frozen features and the
expert x task results), :mod:`taskreg.registry.model2vec_fitting` (Model2Vec on those results) and
:mod:`taskreg.registry.expert_selection` (``select``). Every SQL statement is in :mod:`taskreg.registry.catalog`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskreg import data as datasets
from taskreg.errors import TaskregError
from taskreg.progress import Progress
from taskreg.registry import catalog, expert_basis
from taskreg.registry.core import Core
from taskreg.registry.damage import clear_stray_model, refuse_lost_model
from taskreg.registry.index import IndexManager
from taskreg.registry.names import check_name
from taskreg.registry.probes import ProbeService
from taskreg.registry.runs import (
    after_commit,
    best_effort,
    marking_removal,
    pending_run,
    store_weights,
    verified_weights,
)
from taskreg.registry.tasks import TaskService
from taskreg.registry.weights import head_classes

if TYPE_CHECKING:
    from torch import nn

    from taskreg.embedders.probes import ProbeSpec


#: the input sizes (pixels) an expert (or a zoo probe) may be registered at
INPUT_SIZES = range(16, 1025)
FINETUNE_LR = 0.01  # SGD learning rate of `expert train` from the probe's weights
SCRATCH_LR = 0.05  # ... and from scratch (--from-scratch): 0.01 leaves a small network far from trained
HOLDOUT = 0.1  # share of each class `expert train` holds out to measure the expert's own-task accuracy


@dataclass(frozen=True)
class Reference:
    """An expert's accuracy on its own reference task (what the ``prior`` selection method ranks by).

    accuracy : in [0, 1]. task : what it was measured on, e.g. "ImageNet-1k top-1 (published)".
    """

    accuracy: float
    task: str

    @classmethod
    def checked(cls, accuracy: float | None, task: str | None) -> Reference | None:
        """A validated reference (one-line errors); None when neither is given."""
        if accuracy is None and task is None:
            return None
        if accuracy is None:
            raise TaskregError("--reference needs --reference-accuracy (the accuracy measured on it)")
        if isinstance(accuracy, bool) or not isinstance(accuracy, int | float) or not 0.0 <= float(accuracy) <= 1.0:
            raise TaskregError(f"--reference-accuracy must be a number in [0, 1], got {accuracy!r}")
        task = "reference task given by the user" if task is None else str(task).strip()
        if not task or len(task) > 200 or any(ch in task for ch in "\r\n\x00"):
            raise TaskregError("--reference must be one line of 1..200 characters")
        return cls(float(accuracy), task)


def check_input_size(input_size: int | None) -> None:
    """Refuse (one line) an input size outside :data:`INPUT_SIZES`; None (the arch's default) passes."""
    if input_size is not None and int(input_size) not in INPUT_SIZES:
        raise TaskregError(f"--input-size must lie in {INPUT_SIZES.start}..{INPUT_SIZES.stop - 1} pixels, "
                           f"got {input_size}")


def expert_spec(arch: str, input_size: int | None) -> ProbeSpec:
    """How an expert's images are fed to it: its arch's channels and normalisation at ``input_size`` pixels
    (None: the arch's default resolution, the only one an expert registered before schema version 4 knew)."""
    from taskreg.embedders.probes import default_spec

    spec = default_spec(arch)
    return spec if input_size is None else replace(spec, input_size=int(input_size))


@dataclass(frozen=True)
class ExpertDetails:
    """What ``expert show`` shows: the expert's record, its measured test errors (best first) and the form of
    each of its Model2Vec vectors (``m_i = F_i + b_i``, ``b_i`` or ``F_i``, by probe and estimator)."""

    expert: catalog.ExpertRecord
    task_errors: tuple[catalog.ExpertTaskError, ...]
    model2vec: tuple[expert_basis.Model2VecForm, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The record's fields, then ``task_errors`` as a list of ``{"task", "test_error"}`` and ``model2vec`` as a
        list of ``{"probe", "estimator", "form", "basis"}``."""
        return {**asdict(self.expert), "task_errors": [asdict(e) for e in self.task_errors],
                "model2vec": [asdict(f) for f in self.model2vec]}


class ExpertService:
    """The experts of one registry: their records and their registration."""

    def __init__(self, core: Core, index_manager: IndexManager, probes: ProbeService, tasks: TaskService) -> None:
        self.core = core
        self.index_manager = index_manager
        self.probes = probes
        self.tasks = tasks

    # ------------------------------------------------------------------ experts
    def list_experts(self) -> list[catalog.ExpertRecord]:
        with self.core.read() as con:
            return catalog.list_experts(con)

    def get_expert(self, name: str) -> catalog.ExpertRecord:
        with self.core.read() as con:
            rec = catalog.get_expert(con, name)
        if rec is None:
            raise TaskregError(f"unknown expert {name!r} (see `taskreg expert list`)")
        return rec

    def show_expert(self, name: str) -> ExpertDetails:
        rec = self.get_expert(name)
        with self.core.read() as con:
            return ExpertDetails(rec, tuple(catalog.expert_task_errors(con, rec.id)),
                                 tuple(expert_basis.model2vec_forms(con, rec)))

    def remove_expert(self, name: str) -> None:
        rec = self.get_expert(name)
        # the model goes under the same hold of the lock as the row: a new `expert add` of the name waits
        with self.core.lock():
            with marking_removal(self.core.tracker) as mark, self.core.write() as con:
                if not catalog.expert_exists(con, rec.id):
                    raise TaskregError(f"unknown expert {name!r} (removed meanwhile)")
                kinds = catalog.model2vec_kinds_of_expert(con, rec.id)
                mark([rec.run_id] if rec.run_id else [])
                catalog.delete_expert(con, rec.id)
                for kind in kinds:
                    catalog.bump_generation(con, kind)
            with after_commit(f"expert {name} is removed"):
                self.core.tracker.delete_registered_model(f"expert-{rec.name}")
        for kind in kinds:
            self.index_manager.rebuild(kind)
        if rec.run_id:
            with after_commit(f"expert {name} is removed"):
                self.core.tracker.delete_run(rec.run_id)

    # ------------------------------------------------------------------ registration
    def load_expert(self, name: str) -> tuple[catalog.ExpertRecord, nn.Module, ProbeSpec]:
        """The expert's record, its network (eval mode) and how to feed it: at the resolution it was registered
        at (``input_size``; the arch's default for an expert registered before the catalog recorded it)."""
        from taskreg.embedders.probes import create_model
        from taskreg.embedders.weight_files import load_state_dict_file, load_weights

        rec = self.get_expert(name)
        path = verified_weights(self.core, rec.weights, rec.sha256, f"expert {name}")
        state = load_state_dict_file(path)
        model = create_model(rec.arch, num_classes=head_classes(state))
        load_weights(model, state, ignore_head=False)
        return rec, model.eval(), expert_spec(rec.arch, rec.input_size)

    def add_expert(self, name: str, *, arch: str, weights: Path, trained_on: str | None = None,
                   input_size: int | None = None, reference: Reference | None = None) -> catalog.ExpertRecord:
        """Register a user's feature extractor from a weight file (read with ``weights_only=True``), to be run at
        ``input_size`` pixels (default: the arch's resolution); ``reference``: its accuracy on its own reference
        task, when the user knows it (the ``prior`` selection method ranks by it)."""
        from taskreg.embedders.probes import create_model
        from taskreg.embedders.weight_files import load_state_dict_file, load_weights

        check_name(name, "expert name")
        check_input_size(input_size)
        self.refuse_existing_expert(name)
        if trained_on is not None:
            self.tasks.get_task(trained_on)
        if not Path(weights).is_file():
            raise TaskregError(f"weight file {weights} not found")
        state = load_state_dict_file(weights)
        model = create_model(arch, num_classes=head_classes(state))
        load_weights(model, state, ignore_head=False)
        return self.register_expert(name, model, arch, trained_on, "added", {"weights_file": str(weights)},
                                     label=f"weights {weights}", input_size=input_size, reference=reference)

    def train_expert(
        self, name: str, source: str, *, from_probe: bool = True, probe: str | None = None,
        arch: str = "cifar_resnet20", task_name: str | None = None, epochs: int = 8, seed: int = 0,
        device: str = "cpu", progress: Progress = None, embed_progress: Progress = None,
        max_samples: int | None = 1000, train_blocks: int | None = None, lr: float | None = None,
        holdout: float = HOLDOUT,
    ) -> catalog.ExpertRecord:
        """Fine-tune an expert on a dataset (from the probe's weights or from scratch) and register it.

        The training data becomes the expert's ``trained_on`` task (named ``task_name``, default the
        expert's name), embedded with the probe if it is not registered yet (on a class-balanced
        subsample of ``max_samples`` images; the expert itself trains on all of them).
        ``train_blocks`` set: only the network's last ``train_blocks`` blocks, its head and a new ``fc`` train, on
        activations of the frozen rest computed once (``trainers.partial_finetune``; 0 = a new linear head only).
        The expert is registered at the resolution it trained at: the probe's input size, or the arch's default.
        ``lr``: SGD's learning rate; default 0.01 from the probe's weights, 0.05 from scratch (a CIFAR ResNet-8
        from scratch on 1,000 MNIST images, 5 epochs: linear-probe error 0.253 at 0.01, 0.080 at 0.05).
        ``holdout``: the share of each class kept out of training to measure the expert's accuracy on its own task
        (its :class:`Reference`, what the ``prior`` selection method ranks by; seeded, stratified); 0: train on
        every image and record no reference accuracy.
        """
        from taskreg.embedders.probes import create_model, default_spec
        from taskreg.embedders.weight_checks import check_network
        from taskreg.trainers.experts import finetune_expert, head_accuracy, stratified_split

        check_name(name, "expert name")
        if lr is None:
            lr = FINETUNE_LR if from_probe else SCRATCH_LR
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < float("inf"):
            raise TaskregError(f"--lr must be a finite number > 0, got {lr!r}")
        if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0.0 <= holdout <= 0.5:
            raise TaskregError(f"--holdout must be a fraction in [0, 0.5], got {holdout!r}")
        self.refuse_existing_expert(name)
        ds = datasets.load(source)
        task = self._task_by_fingerprint(ds) or task_name or name
        check_name(task, "task name")
        if from_probe:
            _, base, spec = self.probes.load_probe(probe)
            arch = spec.arch
        else:
            base, spec = create_model(arch, num_classes=ds.n_classes), default_spec(arch)
        import numpy as np

        train_idx, held_idx = (stratified_split(ds.y, holdout, seed) if holdout > 0
                               else (np.arange(ds.n), np.zeros(0, dtype=np.int64)))
        x, y = ds.x[train_idx], ds.y[train_idx]
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        if train_blocks is None:
            model = finetune_expert(base, spec, x, y, epochs=epochs, lr=lr, seed=seed, device=device,
                                    progress=progress)
        else:
            from taskreg.trainers.partial_finetune import finetune_last_blocks

            model, cost = finetune_last_blocks(base, spec, x, y, train_blocks=train_blocks, epochs=epochs,
                                               lr=lr, seed=seed, device=device, progress=progress)
            metrics = {"cache_seconds": cost.seconds_cache, "trained_params": cost.n_params_trained}
        metrics["train_seconds"] = time.perf_counter() - t0
        label = f"expert {name}: the fine-tuned network"
        check_network(model, spec, label)  # a diverged training registers nothing, not even its task
        reference = None
        if held_idx.size:
            accuracy = head_accuracy(model, spec, ds.x[held_idx], ds.y[held_idx], device=device)
            reference = Reference(accuracy, f"held-out {held_idx.size} of {ds.n} images of its training data "
                                            f"({task})")
        if not self._task_exists(task):
            self.tasks.add_task(task, ds.source, probe=probe, seed=seed, device=device, progress=embed_progress,
                                dataset=ds, max_samples=max_samples)
        params = {"source": ds.source, "from_probe": from_probe, "epochs": epochs, "lr": lr, "seed": seed,
                  "n_train": int(train_idx.size), "n_classes": ds.n_classes, "holdout": holdout}
        if train_blocks is not None:
            params["train_blocks"] = train_blocks
        return self.register_expert(name, model, arch, task, "trained", params, metrics, n_train=int(train_idx.size),
                                     n_classes=ds.n_classes, label=label, input_size=spec.input_size,
                                     reference=reference)

    def _task_exists(self, name: str) -> bool:
        with self.core.read() as con:
            return catalog.get_task(con, name) is not None

    def _task_by_fingerprint(self, ds: datasets.Dataset) -> str | None:
        with self.core.read() as con:
            return catalog.task_name_by_fingerprint(con, ds.fingerprint())

    def refuse_existing_expert(self, name: str) -> None:
        with self.core.read() as con:
            if catalog.get_expert(con, name) is not None:
                raise TaskregError(f"expert {name!r} already exists")
        # before any work: the name may be taken by a record the catalog lost
        refuse_lost_model(self.core.tracker, f"expert-{name}")

    def register_expert(self, name: str, model: nn.Module, arch: str, trained_on: str | None, origin: str,
                         params: dict, metrics: dict | None = None, *, n_train: int | None = None,
                         n_classes: int | None = None, label: str | None = None,
                         extra_tags: dict[str, str] | None = None, input_size: int | None = None,
                         reference: Reference | None = None) -> catalog.ExpertRecord:
        """Store a network as an expert; it must be usable first (``label`` names it in the refusal).
        ``extra_tags`` go on the run and the registered model (e.g. a zoo model's source and license).
        ``input_size``: the resolution it is run at (default: the arch's), stored in the catalog and as the
        run's ``input_size`` parameter (what ``taskreg recover`` reads back); ``reference`` likewise, as the
        ``reference_accuracy`` and ``reference`` parameters."""
        from taskreg.embedders.weight_checks import check_network

        check_input_size(input_size)
        spec = expert_spec(arch, input_size)
        check_network(model, spec, label or f"expert {name}")
        tags = {"arch": arch, "trained_on": trained_on or "", "taskreg.kind": "expert", "origin": origin,
                **(extra_tags or {})}
        params = {"arch": arch, **params, "input_size": spec.input_size}
        if reference is not None:
            params |= {"reference_accuracy": repr(reference.accuracy), "reference": reference.task}
        with pending_run(self.core, "experts", f"expert-{name}", params, tags) as run:
            self.core.tracker.log_metrics(run.run_id, metrics or {})
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            rel, sha = store_weights(self.core, run, state, f"{name}.pt")
            # The registered model and the catalog row are created under one hold of the lock, so a model
            # without a row is the leftover of a killed attempt (or of a killed `expert rm`): replace it,
            # unless it holds a committed expert the catalog lost (refused, never deleted).
            with self.core.lock():
                self.refuse_existing_expert(name)  # another process may have registered it meanwhile
                clear_stray_model(self.core.tracker, f"expert-{name}")
                version = self.core.tracker.register(f"expert-{name}", run, "weights", tags)
                try:
                    with self.core.write() as con:
                        catalog.insert_expert(con, name=name, arch=arch, sha256=sha, weights=rel,
                                              trained_on=trained_on, origin=origin, n_train=n_train,
                                              n_classes=n_classes, run_id=run.run_id, model_version=version,
                                              input_size=spec.input_size,
                                              reference_accuracy=None if reference is None else reference.accuracy,
                                              reference=None if reference is None else reference.task)
                except BaseException:
                    with best_effort():
                        self.core.tracker.delete_registered_model(f"expert-{name}")
                    raise
        with after_commit(f"expert {name} is registered"):
            self.core.tracker.commit(run.run_id)
        return self.get_expert(name)

