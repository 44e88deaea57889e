"""``taskonomy build`` and ``taskonomy add-target``: the Taskonomy pipeline wired to the registry.

Steps (Zamir et al. 2018, Sect. 3): task-specific networks (``self``; MLflow runs and registered
models tagged ``kind=task_network``) → frozen source representations computed once and cached in
``cache/taskonomy/`` → first-order transfers and the ``scratch`` baseline → higher-order transfers
from the beam of the best first-order sources → per-image test losses in ``transfer_losses`` →
pairwise win rates in DuckDB SQL (``winrates``) → AHP per target → an affinity set named after the
dictionary. Every job has a stable key; finished jobs are skipped, so an interrupted build resumes.
Jobs run through an executor (``local``, ``local:N``; see :mod:`taskreg.trainers.executors`).
"""

from __future__ import annotations

import csv
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from taskreg.data.images import batch_to_size
from taskreg.errors import TaskregError
from taskreg.progress import Progress
from taskreg.registry import catalog
from taskreg.registry.array_cache import save_array
from taskreg.registry.catalog import TransferRecord
from taskreg.registry.core import Core
from taskreg.registry.experts import ExpertService
from taskreg.registry.names import check_name
from taskreg.registry.runs import pending_run, store_weights

if TYPE_CHECKING:
    from taskreg.trainers.networks import TaskModel
    from taskreg.trainers.taskonomy_dictionary import Dictionary, DictionaryRef
    from taskreg.trainers.transfer import TaskNetwork, TransferJob, TransferResult

StepProgress = Callable[[str], Progress] | None


@dataclass
class BuildReport:
    """What one ``taskonomy build`` did (counts and seconds per stage)."""

    dictionary: str
    tasks: int
    targets: int
    jobs_run: dict[str, int] = field(default_factory=dict)
    jobs_skipped: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    affinity: str = ""
    experts_registered: int = 0


@dataclass(frozen=True)
class AddTargetReport:
    """What one ``taskonomy add-target`` did: the new target, how many sources and jobs, the best single source."""

    target: str
    dictionary: str
    sources: int
    jobs: int
    best_first_order: tuple[str, ...]
    best_loss: float


def option_label(kind: str, sources: Iterable[str]) -> str:
    """How an option appears in ``winrates``: 'self', 'scratch', or the sources joined by '+'."""
    return kind if kind in ("self", "scratch") else "+".join(sources)


class TaskonomyPipeline:
    """``taskonomy build`` and ``taskonomy add-target`` on one registry."""

    def __init__(self, core: Core, experts: ExpertService) -> None:
        self.core = core
        self.experts = experts
        self.dictionaries: dict[str, Dictionary] = {}  # dictionary name -> the dictionary loaded by this process

    # ------------------------------------------------------------------ dictionaries
    def dictionary_ref(self, dictionary: str, *, n_images: int = 1600, size: int = 32, seed: int = 0,
                       tiny: bool = False) -> tuple[str, DictionaryRef]:
        """(name, reference) of a dictionary: 'builtin' (or 'builtin-tiny') or a path to a user ``.npz``."""
        from taskreg.trainers.taskonomy_dictionary import DictionaryRef

        if dictionary in ("builtin", "builtin-tiny"):
            tiny = tiny or dictionary == "builtin-tiny"
            return ("builtin-tiny" if tiny else "builtin"), DictionaryRef("builtin", size=size, n_images=n_images,
                                                                          seed=seed, tiny=tiny)
        path = Path(dictionary)
        if path.suffix != ".npz":
            raise TaskregError(f"unknown dictionary {dictionary!r}: use 'builtin' or a path to a .npz file")
        if not path.is_file():
            raise TaskregError(f"dictionary file {path} not found")
        name = check_name(path.stem, "dictionary name")
        return name, DictionaryRef("npz", path=str(path.resolve()), seed=seed)

    def _done_keys(self, dictionary: str) -> set[str]:
        with self.core.read() as con:
            return catalog.transfer_keys(con, dictionary)

    # ------------------------------------------------------------------ persistence of one job
    def _store_result(self, dictionary: str, job: TransferJob, result: TaskNetwork | TransferResult) -> None:
        """One transfer row + its per-image losses, in one transaction.

        A task network (kind 'self') is also an MLflow run and a registered model with its weights.
        Transfers are too many and too small for a run each: :meth:`_log_stage` logs one run per stage.
        """
        from taskreg.trainers.transfer import TaskNetwork

        net = result if isinstance(result, TaskNetwork) else None
        res = result.as_result() if isinstance(result, TaskNetwork) else result
        losses = np.asarray(res.per_image_loss, dtype=np.float64)

        def commit(run_id: str | None) -> None:
            record = TransferRecord(dictionary=dictionary, key=job.key, kind=job.kind, sources=tuple(res.sources),
                                    target=job.target, order=job.order, mean_loss=float(res.mean_loss),
                                    train_size=int(res.train_size), seconds=float(res.seconds), run_id=run_id)
            with self.core.write() as con:
                catalog.insert_transfer(con, record, losses)

        if net is None:
            commit(None)
            return
        params = {"dictionary": dictionary, "task": job.target, "epochs": job.epochs, "seed": job.seed, "key": job.key}
        tags = {"taskreg.kind": "task_network", "kind": "task_network", "dictionary": dictionary}
        with pending_run(self.core, "taskonomy", f"{dictionary}:self->{job.target}", params, tags) as run:
            self.core.tracker.log_metrics(run.run_id, {"mean_loss": res.mean_loss, "seconds": res.seconds})
            state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            store_weights(self.core, run, state, f"{job.target}.pt")
            self.core.tracker.register(f"tasknet-{dictionary}-{job.target}", run, "weights",
                                  {"kind": "task_network", "dictionary": dictionary, "task": job.target})
            commit(run.run_id)
        self.core.tracker.commit(run.run_id)

    def _log_stage(self, dictionary: str, stage: str, keys: list[str], seconds: float, trained: int) -> None:
        """One MLflow run per pipeline stage: counts, time and the stage's results as a CSV artifact."""
        if not trained:
            return
        with self.core.read() as con:
            rows = catalog.transfers_by_keys(con, dictionary, keys)
        params = {"dictionary": dictionary, "stage": stage, "jobs": len(keys), "trained": trained}
        tags = {"taskreg.kind": "taskonomy_stage"}
        with pending_run(self.core, "taskonomy", f"{dictionary}:{stage}", params, tags) as run:
            mean_loss = float(np.mean([r.mean_loss for r in rows])) if rows else 0.0
            self.core.tracker.log_metrics(run.run_id, {"seconds": seconds, "trained": trained, "mean_loss": mean_loss})
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{stage.replace(' ', '_')}.csv"
                with open(path, "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["key", "kind", "sources", "target", "order", "mean_loss", "seconds"])
                    w.writerows([(r.key, r.kind, "+".join(r.sources), r.target, r.order, r.mean_loss, r.seconds)
                                 for r in rows])
                self.core.tracker.log_artifact(run.run_id, path, "results")
        self.core.tracker.commit(run.run_id)

    def _task_network(self, dictionary: str, task: str, key: str) -> TaskModel:
        """Reload a stored task network (encoder + decoder) from its MLflow artifact."""
        from taskreg.embedders.weight_files import load_state_dict_file
        from taskreg.trainers.networks import Encoder, TaskModel, make_decoder, rep_shape_for

        with self.core.read() as con:
            stored = catalog.get_transfer(con, dictionary, key)
        if stored is None or stored.run_id is None:
            raise TaskregError(f"no task network for {task!r} in {dictionary!r}")
        path = self.core.tracker.artifact_dir(stored.run_id) / "weights" / f"{task}.pt"
        state = load_state_dict_file(path)
        d = self.dictionaries[dictionary]
        spec = d.task(task)
        model = TaskModel(Encoder(), make_decoder(spec, rep_shape_for(d.image_shape[1:])))
        model.load_state_dict(state)
        return model.eval()

    # ------------------------------------------------------------------ the pipeline
    def taskonomy_build(
        self, dictionary: str = "builtin", *, max_order: int = 3, beam: int = 5, executor: str = "local",
        n_images: int = 1600, self_epochs: int | None = None, transfer_epochs: int | None = None,
        train_fraction: float | None = None, seed: int = 0, device: str = "cpu", register_experts: bool = True,
        tasks: Iterable[str] | None = None, step_progress: StepProgress = None,
    ) -> BuildReport:
        """Run (or resume) the whole Taskonomy pipeline and store the affinity set named after the dictionary."""
        from taskreg.trainers import transfer as tr
        from taskreg.trainers.executors import get_executor
        from taskreg.trainers.taskonomy_dictionary import dictionary_fingerprint

        if max_order < 1:
            raise TaskregError(f"--max-order must be at least 1, got {max_order}")
        if beam < 1:
            raise TaskregError(f"--beam must be at least 1, got {beam}")
        run_executor = get_executor(executor)
        name, ref = self.dictionary_ref(dictionary, n_images=n_images, seed=seed)
        t0 = time.perf_counter()
        d = ref.load()
        self.dictionaries[name] = d
        tag = dictionary_fingerprint(d)[:8]
        if tasks is not None:  # plan over a subset (jobs still carry the full dictionary's reference)
            unknown = [t for t in tasks if t not in d.tasks]
            if unknown:
                raise TaskregError(f"unknown task(s) {', '.join(unknown)}; the dictionary has {', '.join(d.tasks)}")
            d = replace(d, tasks={k: v for k, v in d.tasks.items() if k in set(tasks)})
        report = BuildReport(dictionary=name, tasks=len(d.tasks), targets=len(d.target_names))
        report.seconds["dictionary"] = time.perf_counter() - t0
        hp: dict[str, Any] = {"seed": seed, "tag": tag}
        if transfer_epochs is not None:
            hp["epochs"] = transfer_epochs
        if train_fraction is not None:
            hp["train_fraction"] = train_fraction

        def stage(label: str, jobs: list[TransferJob]) -> list[TransferResult | None]:
            done = self._done_keys(name)
            todo = [j for j in jobs if j.key not in done]
            report.jobs_skipped[label] = len(jobs) - len(todo)
            report.jobs_run[label] = len(todo)
            start = time.perf_counter()
            text = f"{label} ({len(todo)} to train, {len(jobs) - len(todo)} done)"
            bar = step_progress(text) if step_progress else None
            for job, result in run_executor.map(tr.run_job, todo, progress=bar):
                self._store_result(name, job, result)
            report.seconds[label] = time.perf_counter() - start
            if label != "task networks":
                self._log_stage(name, label, [j.key for j in jobs], report.seconds[label], len(todo))
            return [self._stored_result(name, j) for j in jobs]

        # I. task-specific networks
        self_jobs = tr.plan_self(d, ref=ref, **({"epochs": self_epochs} if self_epochs else {}), seed=seed, tag=tag)
        stage("task networks", self_jobs)
        nets = {j.target: j.key for j in self_jobs}

        # II. frozen representations, computed once per (source, input key) and cached on disk
        start = time.perf_counter()
        cache = self.core.cache_dir / "taskonomy" / f"{name}-{tag}"
        cache.mkdir(parents=True, exist_ok=True)
        frac = train_fraction if train_fraction is not None else tr.TRAIN_FRACTION

        def feature_path(source: str, key: str) -> str:
            return str(cache / f"{source}__{key}__f{frac:.4g}.npy")

        needed = [(s, k) for s in d.source_names for k in d.input_keys if not Path(feature_path(s, k)).exists()]
        bar = step_progress(f"encoding ({len(needed)} representations)") if step_progress else None
        for i, (source, key) in enumerate(needed):
            enc = (self._task_network(name, source, nets[source]).encoder if source in nets
                   else tr.source_encoder(d, source, {}, seed=seed))
            feats = tr.encode_for_transfers(enc, d, key, train_fraction=frac, device=device)
            save_array(self.core, Path(feature_path(source, key)), feats)
            if bar:
                bar(i + 1, len(needed))
        report.seconds["encoding"] = time.perf_counter() - start

        # III. first order + scratch, then the beam for higher orders
        first = stage("first order", tr.plan_first_order(d, feature_path, ref=ref, **hp))
        higher = tr.plan_higher_order(d, [r for r in first if r is not None], feature_path, beam=beam,
                                      max_order=max_order, ref=ref, **hp) if max_order > 1 else []
        stage("higher order", higher)

        # IV. win rates (SQL) and AHP → affinity set
        start = time.perf_counter()
        keys = [j.key for j in self_jobs] + [j.key for j in tr.plan_first_order(d, feature_path, ref=ref, **hp)]
        keys += [j.key for j in higher]
        self.compute_winrates(name, keys)
        report.affinity = self.affinities_from_winrates(name, source_only=[n for n, t in d.tasks.items()
                                                                           if t.source_only])
        report.seconds["win rates + AHP"] = time.perf_counter() - start
        if register_experts:
            report.experts_registered = self.register_task_network_experts(name, nets)
        return report

    def _stored_result(self, dictionary: str, job: TransferJob) -> TransferResult | None:
        from taskreg.trainers.transfer import TransferResult

        with self.core.read() as con:
            r = catalog.get_transfer(con, dictionary, job.key)
        if r is None:
            return None
        return TransferResult(r.sources, r.target, r.order, np.zeros(0, np.float32), r.mean_loss, r.seconds or 0.0,
                              r.train_size or 0, r.kind)

    # ------------------------------------------------------------------ win rates and affinities
    def compute_winrates(self, dictionary: str, keys: Iterable[str], *, targets: Iterable[str] | None = None) -> int:
        """Pairwise win rates between every two options of each target, from per-image losses, in SQL.

        ``winrates(a, b)`` = share of test images on which option a has a lower loss than b (ties
        count one half). Options are labelled 'self', 'scratch' or 'src1+src2'. Only the jobs in
        ``keys`` take part; the rows of ``targets`` (default: all of the dictionary) are replaced.
        Returns the number of rows of the dictionary.
        """
        with self.core.write() as con:
            return catalog.compute_winrates(con, dictionary, list(dict.fromkeys(keys)), targets=targets)

    def affinities_from_winrates(self, dictionary: str, *, source_only: Iterable[str] = (),
                                 name: str | None = None) -> str:
        """AHP per target over its options (transfers and 'self'; 'scratch' is only a reference) → affinity set."""
        from taskreg.selection.ahp import Tournament, ahp_affinity_set

        name = name or dictionary
        with self.core.read() as con:
            rows = catalog.dictionary_winrates(con, dictionary)
        own = {w.target for w in rows if "self" in (w.a, w.b)}
        by_target: dict[str, dict[tuple[str, str], float]] = {}
        for w in rows:
            # 'scratch' is only a reference, except for a novel target: it has no 'self' network, and its own
            # little-data network (scratch) stands in
            if "scratch" not in (w.a, w.b) or w.target not in own:
                by_target.setdefault(w.target, {})[(w.a, w.b)] = w.value
        tournaments = []
        for target, wins in sorted(by_target.items()):
            labels = sorted({a for a, _ in wins})
            pos = {lab: i for i, lab in enumerate(labels)}
            matrix = np.full((len(labels), len(labels)), 0.5)
            for (a, b), v in wins.items():
                matrix[pos[a], pos[b]] = v
            options = [("self",) if lab in ("self", "scratch") else tuple(lab.split("+")) for lab in labels]
            tournaments.append(Tournament(target=target, options=options, wins=matrix))
        if not tournaments:
            raise TaskregError(f"no win rates for {dictionary!r}: build it first")
        aff = ahp_affinity_set(tournaments, name, source_only=tuple(source_only))
        with self.core.write() as con:
            catalog.delete_affinity_set(con, name)
            catalog.insert_affinity_set(con, aff, f"build:{dictionary}")
        return name

    # ------------------------------------------------------------------ novel tasks ("all-for-one", Sect. 4.2)
    def taskonomy_add_target(
        self, name: str, source: str, *, dictionary: str = "builtin", max_order: int = 3, beam: int = 5,
        epochs: int | None = None, seed: int = 0, device: str = "cpu", step_progress: StepProgress = None,
    ) -> AddTargetReport:
        """Transfer every registered source encoder of ``dictionary`` to a new labelled dataset.

        First order from every source, then the beam for higher orders, plus ``scratch`` (a network
        trained from pixels on the same data, which stands in for the target's own network). The
        losses and win rates join the dictionary's tables and its affinity set is re-normalised, so
        ``taskreg policy --affinity DICT --targets NAME`` answers which sources to use.
        """
        from taskreg import data as datasets
        from taskreg.trainers import transfer as tr
        from taskreg.trainers.experts import stratified_split
        from taskreg.trainers.taskonomy_dictionary import Dictionary, TaskSpec

        check_name(name, "target name")
        dname, ref = self.dictionary_ref(dictionary, seed=seed)
        dictionary = dname
        with self.core.read() as con:
            nets = catalog.task_network_keys(con, dictionary)
            if not nets:
                raise TaskregError(f"dictionary {dictionary!r} has no task networks: run `taskreg taskonomy build`")
            if name in nets or catalog.is_transfer_target(con, dictionary, name):
                raise TaskregError(f"{name!r} is already a target of {dictionary!r}")
        ds = datasets.load(source)
        base = ref.load()
        self.dictionaries[dictionary] = base
        images = batch_to_size(ds.x, base.image_shape[1])
        train_idx, test_idx = stratified_split(ds.y, 0.25, seed)
        spec = TaskSpec(name=name, kind="classification", out_channels=ds.n_classes)
        d = Dictionary(images=images, train_idx=train_idx, test_idx=test_idx, tasks={name: spec},
                       targets={name: ds.y.astype(np.int64)}, seed=seed)
        hp: dict[str, Any] = {"train_fraction": 1.0, "seed": seed, "tag": f"novel-{ds.fingerprint()[:8]}"}
        if epochs is not None:
            hp["epochs"] = epochs
        sources = [s for s in base.source_names if s in nets or not base.task(s).trainable]
        feats: dict[str, np.ndarray] = {}
        bar = step_progress(f"encoding {name} with {len(sources)} sources") if step_progress else None
        for i, s in enumerate(sources):
            enc = self._task_network(dictionary, s, nets[s]).encoder if s in nets else tr.source_encoder(
                base, s, {}, seed=seed)
            feats[s] = tr.encode(enc, images, device=device)
            if bar:
                bar(i + 1, len(sources))

        def run(jobs: list[tr.TransferJob], label: str) -> list[TransferResult]:
            results = []
            bar = step_progress(f"{label} ({len(jobs)} jobs)") if step_progress else None
            for i, job in enumerate(jobs):
                if job.kind == "scratch":
                    res = tr.train_scratch(d, name, train_fraction=1.0, epochs=job.epochs, seed=seed, device=device)
                else:
                    res = tr.train_transfer([feats[s] for s in job.sources], d, name, sources=job.sources,
                                            train_fraction=1.0, epochs=job.epochs, seed=seed, device=device)
                self._store_result(dictionary, job, res)
                results.append(res)
                if bar:
                    bar(i + 1, len(jobs))
            return results

        first_jobs = [tr.TransferJob((s,), name, "transfer", **hp) for s in sources]
        first = run(first_jobs + [tr.TransferJob((), name, "scratch", **hp)], "first order")
        scores = {r.sources[0]: r.mean_loss for r in first if r.kind == "transfer"}
        combos = tr.beam_candidates(scores, beam=beam, max_order=max_order) if max_order > 1 else []
        higher_jobs = [tr.TransferJob(c, name, "transfer", **hp) for c in combos]
        run(higher_jobs, "higher order")
        keys = [j.key for j in first_jobs + higher_jobs] + [tr.TransferJob((), name, "scratch", **hp).key]
        self.compute_winrates(dictionary, keys, targets=[name])
        with self.core.read() as con:
            source_only = catalog.affinity_source_only(con, dictionary)
        self.affinities_from_winrates(dictionary, source_only=source_only or ())
        best = min((r for r in first if r.kind == "transfer"), key=lambda r: r.mean_loss)
        return AddTargetReport(target=name, dictionary=dname, sources=len(sources), jobs=len(keys),
                               best_first_order=tuple(best.sources), best_loss=float(best.mean_loss))

    # ------------------------------------------------------------------ task networks as experts
    def register_task_network_experts(self, dictionary: str, nets: dict[str, str]) -> int:
        """Register each task network's encoder as an expert (arch ``taskonomy_encoder``) so ``select`` sees it."""
        from taskreg.trainers.networks import EncoderProbe

        count = 0
        for task, key in nets.items():
            name = f"tn-{dictionary}-{task}"
            with self.core.read() as con:
                if catalog.get_expert(con, name) is not None:
                    continue
            enc = self._task_network(dictionary, task, key).encoder
            probe = EncoderProbe(num_classes=1)
            probe.encoder.load_state_dict(enc.state_dict())
            self.experts.register_expert(name, probe, "taskonomy_encoder", None, "task_network",
                                  {"dictionary": dictionary, "task": task})
            count += 1
        return count

