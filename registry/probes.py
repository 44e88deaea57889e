"""Probes: the networks that embed tasks (train one, add a user's, load, their trivial embeddings)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from taskreg import data as datasets
from taskreg.data.images import batch_to_size
from taskreg.errors import TaskregError
from taskreg.progress import Progress
from taskreg.registry import catalog
from taskreg.registry.core import Core
from taskreg.registry.names import check_name
from taskreg.registry.runs import after_commit, pending_run, store_weights, verified_weights
from taskreg.registry.weights import head_classes

if TYPE_CHECKING:
    from torch import nn

    from taskreg.embedders.probes import ProbeSpec

DEFAULT_PROBE_SOURCES = ("builtin:patches", "builtin:mnist5k")


class ProbeService:
    """The probes of one registry."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def resolve_probe(self, name: str | None) -> catalog.ProbeRecord:
        with self.core.read() as con:
            if name is not None:
                rec = catalog.get_probe(con, name)
                if rec is None:
                    known = ", ".join(p.name for p in catalog.list_probes(con)) or "none"
                    raise TaskregError(f"unknown probe {name!r} (registered: {known})")
                return rec
            probes = catalog.list_probes(con)
        if not probes:
            raise TaskregError("no probe registered: run `taskreg probe train` or `taskreg probe add`")
        by_name = {p.name: p for p in probes}
        return by_name.get("default", probes[0])

    def checked_probe(self, name: str | None = None) -> catalog.ProbeRecord:
        """The probe's record, after checking that its weights file is the registered one (sha256); no torch."""
        return self.check_weights(self.resolve_probe(name))

    def check_weights(self, rec: catalog.ProbeRecord) -> catalog.ProbeRecord:
        """``rec``, after checking that its weights file is the registered one (sha256); no torch."""
        verified_weights(self.core, rec.weights, rec.sha256, f"probe {rec.name}")
        return rec

    def load_probe(self, name: str | None = None) -> tuple[catalog.ProbeRecord, nn.Module, ProbeSpec]:
        return self.load_checked_probe(self.checked_probe(name))

    def load_checked_probe(self, rec: catalog.ProbeRecord) -> tuple[catalog.ProbeRecord, nn.Module, ProbeSpec]:
        """The network of a probe whose weights :meth:`checked_probe` verified: (record, model in eval mode, spec)."""
        from taskreg.embedders.weight_files import load_network

        model = load_network(self.core.tracker.local_file(rec.weights), rec.arch)
        return rec, model, probe_spec(rec)

    def list_probes(self) -> list[catalog.ProbeRecord]:
        with self.core.read() as con:
            return catalog.list_probes(con)

    def train_probe(
        self, name: str = "default", *, arch: str = "cifar_resnet20", sources: Sequence[str] = DEFAULT_PROBE_SOURCES,
        epochs: int = 6, seed: int = 0, device: str = "cpu", progress: Progress = None,
    ) -> catalog.ProbeRecord:
        """Train a probe from scratch on the union of ``sources`` (classes kept apart) and register it."""
        from taskreg.embedders.probes import default_spec, train_probe

        check_name(name, "probe name")
        self._refuse_existing_probe(name)
        spec = default_spec(arch)
        xs, ys, offset = [], [], 0
        for src in sources:
            ds = datasets.load(src)
            xs.append(batch_to_size(ds.x, spec.input_size))
            ys.append(ds.y + offset)
            offset += ds.n_classes
        x, y = np.concatenate(xs), np.concatenate(ys)
        t0 = time.perf_counter()
        model = train_probe(arch, x, y, epochs=epochs, seed=seed, device=device, progress=progress, spec=spec)
        seconds = time.perf_counter() - t0
        params = {"arch": arch, "sources": ",".join(sources), "epochs": epochs, "seed": seed, "n_images": len(y),
                  "n_classes": offset}
        return self.register_probe(name, model, spec, "trained", params, {"train_seconds": seconds})

    def add_probe(self, name: str, *, arch: str, weights: Path, input_size: int | None = None,
                  device: str = "cpu") -> catalog.ProbeRecord:
        """Register a user's probe from a weight file (loaded with ``weights_only=True``)."""
        from taskreg.embedders.probes import ProbeSpec, create_model, default_spec
        from taskreg.embedders.weight_files import load_state_dict_file, load_weights

        check_name(name, "probe name")
        self._refuse_existing_probe(name)
        if not Path(weights).is_file():
            raise TaskregError(f"weight file {weights} not found")
        state = load_state_dict_file(weights)
        model = create_model(arch, num_classes=head_classes(state))
        load_weights(model, state, ignore_head=True)
        spec = default_spec(arch)
        if input_size is not None:
            spec = ProbeSpec(arch=arch, input_size=int(input_size), in_chans=spec.in_chans, mean=spec.mean,
                             std=spec.std)
        return self.register_probe(name, model, spec, "added", {"arch": arch, "weights_file": str(weights)}, {},
                                    device=device, label=f"weights {weights}")

    def _refuse_existing_probe(self, name: str) -> None:
        with self.core.read() as con:
            if catalog.get_probe(con, name) is not None:
                raise TaskregError(f"probe {name!r} already exists")

    def register_probe(self, name: str, model: nn.Module, spec: ProbeSpec, origin: str, params: dict,
                        metrics: dict, device: str = "cpu", label: str | None = None) -> catalog.ProbeRecord:
        from taskreg.embedders.task2vec import fisher_layout, trivial_embedding
        from taskreg.embedders.weight_checks import check_network

        check_network(model, spec, label or f"probe {name}: the trained network")  # before anything is stored
        model.eval()
        trivial = {
            "montecarlo": trivial_embedding(model, "montecarlo", spec=spec, device=device),
            "variational": trivial_embedding(fisher_layout(model), "variational"),
        }
        params = {**params, "input_size": spec.input_size}  # with the arch, all `taskreg recover` needs
        with pending_run(self.core, "probes", f"probe-{name}", params, {"taskreg.kind": "probe"}) as run:
            self.core.tracker.log_metrics(run.run_id, metrics)
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            rel, sha = store_weights(self.core, run, state, f"{name}.pt")
            rec = catalog.ProbeRecord(name=name, arch=spec.arch, input_size=spec.input_size, in_chans=spec.in_chans,
                                      mean=tuple(spec.mean), std=tuple(spec.std), sha256=sha, weights=rel,
                                      origin=origin, run_id=run.run_id)
            with self.core.write() as con:
                if catalog.get_probe(con, name) is not None:  # registered by another process meanwhile
                    raise TaskregError(f"probe {name!r} already exists")
                catalog.insert_probe(con, rec)
                for method, vec in trivial.items():
                    catalog.insert_trivial_embedding(con, name, method, vec)
        with after_commit(f"probe {name} is registered"):
            self.core.tracker.commit(run.run_id)
        return rec

    def trivial(self, probe: str, method: str) -> np.ndarray:
        if method == "domain":
            raise TaskregError("the domain embedding has no trivial embedding (use --method sym or a Task2Vec one)")
        with self.core.read() as con:
            vector = catalog.trivial_embedding(con, probe, method)
        if vector is None:
            raise TaskregError(f"probe {probe!r} has no trivial embedding for method {method!r}")
        return vector


def probe_spec(rec: catalog.ProbeRecord) -> ProbeSpec:
    """How a registered probe is fed images (its architecture, input size, channels, normalisation)."""
    from taskreg.embedders.probes import ProbeSpec

    return ProbeSpec(arch=rec.arch, input_size=rec.input_size, in_chans=rec.in_chans, mean=rec.mean, std=rec.std)
