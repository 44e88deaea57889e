"""Tests of taskreg.embedders.probes: architectures, input adaptation, weight files, probe training."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from taskreg.embedders.probes import ProbeSpec, adapt_inputs, create_model, default_spec, list_models, train_probe
from taskreg.embedders.weight_files import load_state_dict_file, load_weights, weights_sha256
from taskreg.errors import TaskregError


def _digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return (d.images[:n] / 16.0).astype(np.float32)[:, None], d.target[:n].astype(np.int64)


def test_registry_lists_and_rejects_unknown() -> None:
    assert {"resnet18", "resnet34", "cifar_resnet8", "cifar_resnet20"} <= set(list_models())
    with pytest.raises(TaskregError, match="resnet18"):
        create_model("resnet19")


@pytest.mark.parametrize(
    ("arch", "n_keys", "n_params"),
    # keys: stem 1+5, each BasicBlock 12 (+6 with downsample), fc 2.
    # resnet18: 8 blocks, 3 downsamples -> 6 + 96 + 18 + 2 = 122; resnet34: 16 blocks -> 6 + 192 + 18 + 2 = 218.
    # parameter counts with 1000 classes are torchvision's published ones.
    [("resnet18", 122, 11_689_512), ("resnet34", 218, 21_797_672)],
)
def test_imagenet_resnets_have_torchvision_keys(arch: str, n_keys: int, n_params: int) -> None:
    model = create_model(arch, num_classes=1000)
    keys = list(model.state_dict())
    assert len(keys) == n_keys
    assert sum(p.numel() for p in model.parameters()) == n_params
    for k in ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.bn1.num_batches_tracked",
              "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var", "layer4.1.bn2.running_var",
              "fc.weight", "fc.bias"]:
        assert k in keys
    assert "layer1.0.downsample.0.weight" not in keys
    out = model.eval()(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1000)
    assert model.features(torch.rand(2, 3, 64, 64)).shape == (2, 512) and model.feature_dim == 512


@pytest.mark.parametrize("arch", ["cifar_resnet8", "cifar_resnet20"])
def test_cifar_resnets_shapes(arch: str) -> None:
    model = create_model(arch, num_classes=7).eval()
    x = torch.rand(3, 3, 32, 32)
    assert model.features(x).shape == (3, model.feature_dim) == (3, 64)
    assert torch.allclose(model(x), model.fc(model.features(x)))
    assert model(x).shape == (3, 7)


def test_adapt_inputs_grey_numpy_resized_and_normalised() -> None:
    spec = ProbeSpec("cifar_resnet8", input_size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.1))
    x = np.full((4, 1, 8, 8), 0.5, dtype=np.float32)
    out = adapt_inputs(x, spec)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out[:, 0], torch.tensor(0.0), atol=1e-5)
    assert torch.allclose(out[:, 2], torch.tensor(2.0), atol=1e-5)
    rgb = adapt_inputs(torch.rand(2, 3, 40, 50), default_spec("cifar_resnet20"))
    assert rgb.shape == (2, 3, 32, 32)
    for bad in (np.zeros((4, 8, 8), np.float32), np.zeros((1, 2, 8, 8), np.float32),
                np.full((1, 1, 4, 4), np.nan, np.float32)):
        with pytest.raises(TaskregError):
            adapt_inputs(bad, spec)


def test_weight_file_roundtrip_wrappers_and_hash(tmp_path: Path) -> None:
    src = create_model("cifar_resnet8", num_classes=10)
    sd = src.state_dict()
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pth"
    torch.save(sd, plain)
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, wrapped)
    a, b = load_state_dict_file(plain), load_state_dict_file(wrapped)
    assert set(a) == set(b) == set(sd)
    assert weights_sha256(plain) == weights_sha256(wrapped) == weights_sha256(sd)
    dst = create_model("cifar_resnet8", num_classes=3)  # different head: ignored
    load_weights(dst, b)
    assert torch.equal(dst.conv1.weight, src.conv1.weight)
    assert dst.fc.weight.shape == (3, 64)
    changed = dict(sd)
    changed["conv1.weight"] = sd["conv1.weight"] + 1
    assert weights_sha256(changed) != weights_sha256(sd)
    with pytest.raises(TaskregError, match="fc.weight"):
        load_weights(dst, b, ignore_head=False)


def test_wrong_shapes_and_missing_keys_rejected() -> None:
    sd = create_model("cifar_resnet8").state_dict()
    bad = dict(sd)
    bad["layer2.0.conv1.weight"] = torch.zeros(8, 16, 3, 3)
    with pytest.raises(TaskregError, match=r"layer2\.0\.conv1\.weight.*\(8, 16, 3, 3\).*\(32, 16, 3, 3\)"):
        load_weights(create_model("cifar_resnet8"), bad)
    with pytest.raises(TaskregError, match="missing"):
        load_weights(create_model("cifar_resnet20"), sd)
    with pytest.raises(TaskregError, match="unexpected"):
        load_weights(create_model("cifar_resnet8"), create_model("cifar_resnet20").state_dict())


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.mkdir, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    raw = tmp_path / "evil.pkl"
    with open(raw, "wb") as fh:
        pickle.dump({"conv1.weight": _Evil(str(marker))}, fh)
    zipped = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Evil(str(marker))}, zipped)
    assert not marker.exists()
    for path in (raw, zipped):
        with pytest.raises(TaskregError, match="refused"):
            load_state_dict_file(path)
        assert not marker.exists()
    # sanity: the payload really would run if unpickled unsafely
    with open(raw, "rb") as fh:
        pickle.load(fh)  # noqa: S301 - deliberately unsafe, proves the test can fail
    assert marker.exists()


def test_non_tensor_and_garbage_files_refused(tmp_path: Path) -> None:
    f1 = tmp_path / "ints.pth"
    torch.save({"a": 1}, f1)
    f2 = tmp_path / "garbage.pth"
    f2.write_bytes(b"not a weight file")
    for f in (f1, f2, tmp_path / "missing.pth"):
        with pytest.raises(TaskregError):
            load_state_dict_file(f)


def test_train_probe_is_deterministic() -> None:
    x, y = _digits(64)
    kw = dict(epochs=1, batch_size=16, lr=0.05, seed=3)
    m1 = train_probe("cifar_resnet8", x, y, **kw)
    m2 = train_probe("cifar_resnet8", x, y, **kw)
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(v1, v2), k
    assert not m1.training


def test_train_probe_learns() -> None:
    x, y = _digits(500)
    model = train_probe("cifar_resnet8", x[:300], y[:300], epochs=4, batch_size=32, lr=0.05, seed=3, flip=False)
    with torch.no_grad():
        pred = model(adapt_inputs(x[300:], default_spec("cifar_resnet8"))).argmax(1).numpy()
    assert (pred == y[300:]).mean() > 0.25  # chance is 0.1; measured 0.335
