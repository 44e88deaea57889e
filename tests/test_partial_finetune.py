"""Fine-tuning the last blocks on cached activations (taskreg.trainers.partial_finetune), on tiny random-init nets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from taskreg.embedders.probes import ProbeSpec, adapt_inputs, create_model, default_spec
from taskreg.errors import TaskregError
from taskreg.trainers.batchnorm import batch_slices
from taskreg.trainers.experts import finetune_expert
from taskreg.trainers.partial_finetune import (
    FinetuneCost,
    finetune_last_blocks,
    network_parts,
    recalibrate_batchnorm,
    split_network,
)

SIZE = 32


def _spec(arch: str) -> ProbeSpec:
    return dataclasses.replace(default_spec(arch), input_size=SIZE)


@pytest.fixture(scope="module")
def lite() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("efficientnet_lite0", num_classes=1000).eval()


@pytest.fixture(scope="module")
def colours() -> tuple[np.ndarray, np.ndarray]:
    """Two easily separable classes: reddish vs bluish constant images (+ a little noise), 16 + 16 at 24 px."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(2), 16).astype(np.int64)
    base = np.where(y[:, None] == 0, [[0.8, 0.2, 0.2]], [[0.2, 0.2, 0.8]]).astype(np.float32)
    x = base[:, :, None, None] + 0.05 * rng.standard_normal((32, 3, 24, 24)).astype(np.float32)
    return np.clip(x, 0, 1).astype(np.float32), y


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _suffix_keys(model: torch.nn.Module, train_blocks: int) -> set[str]:
    """state_dict keys of the trainable part: the last blocks, the head (conv + BN) and fc."""
    n = len(network_parts(model).blocks)  # type: ignore[union-attr]
    blocks = {f"_blocks.{i}." for i in range(n - train_blocks, n)}
    head = ("_conv_head.", "_bn1.", "fc.") if train_blocks else ("fc.",)
    return {k for k in model.state_dict() if k.startswith(tuple(blocks) + head)}


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "resnet18", "cifar_resnet8", "taskonomy_encoder"])
def test_split_composes_to_the_network(arch: str) -> None:
    model = create_model(arch, num_classes=3).eval()
    x = adapt_inputs(torch.rand(2, 3, SIZE, SIZE), _spec(arch))
    parts = network_parts(model)
    n_blocks = len(parts.blocks) if parts else 0
    assert n_blocks == {"efficientnet_lite0": 16, "resnet18": 8, "cifar_resnet8": 3, "taskonomy_encoder": 0}[arch]
    with torch.no_grad():
        expected = model(x)
        for k in range(n_blocks + 1):
            prefix, suffix = split_network(model, k)
            assert torch.equal(suffix(prefix(x)), expected), k


def test_trains_only_the_suffix_and_learns(lite, colours) -> None:
    x, y = colours
    before = _state(lite)
    net, cost = finetune_last_blocks(lite, _spec("efficientnet_lite0"), x, y, train_blocks=2, epochs=8,
                                     batch_size=8, lr=0.05)
    assert all(torch.equal(v, before[k]) for k, v in lite.state_dict().items())  # the input is untouched
    assert net.fc.out_features == 2 and not net.training
    after = net.state_dict()
    trained = _suffix_keys(lite, 2)
    assert trained and all(torch.equal(after[k], before[k]) for k in before if k not in trained | {"fc.weight",
                                                                                                     "fc.bias"})
    weights = [k for k in trained if k.endswith("weight") and not k.startswith("fc.")]
    assert all(not torch.equal(after[k], before[k]) for k in weights)
    with torch.no_grad():
        predicted = net(adapt_inputs(x, _spec("efficientnet_lite0"))).argmax(1).numpy()
    assert (predicted == y).all()
    assert isinstance(cost, FinetuneCost) and cost.seconds_cache > 0 and cost.seconds_train > 0
    n_trained = sum(after[k].numel() for k in trained if "running" not in k and "num_batches" not in k)
    assert cost.n_params_trained == n_trained < cost.n_params_total == sum(p.numel() for p in net.parameters())
    # the cache holds the input of block 14 (112 -> 192 channels, stride 2 at 32 px: 2x2 -> 1x1)... of all images
    prefix, _ = split_network(net, 2)
    with torch.no_grad():
        shape = prefix(adapt_inputs(x[:1], _spec("efficientnet_lite0"))).shape
    assert cost.cache_bytes == 4 * len(x) * int(np.prod(shape[1:]))


def test_linear_head_only_and_determinism(lite, colours) -> None:
    x, y = colours
    spec = _spec("efficientnet_lite0")
    first, cost = finetune_last_blocks(lite, spec, x, y, train_blocks=0, epochs=3, batch_size=8, seed=5)
    again, _ = finetune_last_blocks(lite, spec, x, y, train_blocks=0, epochs=3, batch_size=8, seed=5)
    other, _ = finetune_last_blocks(lite, spec, x, y, train_blocks=0, epochs=3, batch_size=8, seed=6)
    a, b, c = first.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc.weight"], c["fc.weight"])
    assert all(torch.equal(a[k], lite.state_dict()[k]) for k in a if not k.startswith("fc."))
    assert cost.n_params_trained == 1280 * 2 + 2 and cost.cache_bytes == 4 * len(x) * 1280


def test_deterministic_with_trained_blocks(colours) -> None:
    x, y = colours
    model = create_model("cifar_resnet8", num_classes=10)
    runs = [finetune_last_blocks(model, _spec("cifar_resnet8"), x, y, train_blocks=1, epochs=2, batch_size=5)[0]
            for _ in range(2)]
    a, b = (r.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layer3.0.conv2.weight"], model.state_dict()["layer3.0.conv2.weight"])
    assert torch.equal(a["layer2.0.conv2.weight"], model.state_dict()["layer2.0.conv2.weight"])


def test_recalibrate_batchnorm_gives_the_exact_statistics() -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4, momentum=0.01))
    batches = [torch.randn(8, 3, 5, 5) * 3 + 2 for _ in range(4)]
    weights = {k: v.clone() for k, v in module.state_dict().items() if "running" not in k and "num_batches" not in k}
    recalibrate_batchnorm(module, batches)
    bn = module[1]
    with torch.no_grad():
        h = module[0](torch.cat(batches))  # equal batch sizes: the mean of the batch means is the overall mean
    assert torch.allclose(bn.running_mean, h.mean(dim=(0, 2, 3)), atol=1e-5)
    per_batch_var = torch.stack([module[0](b).var(dim=(0, 2, 3), unbiased=True) for b in batches]).mean(0)
    assert torch.allclose(bn.running_var, per_batch_var.detach(), atol=1e-4)
    assert bn.momentum == 0.01 and not module.training
    assert all(torch.equal(module.state_dict()[k], v) for k, v in weights.items())


def test_recalibration_changes_only_the_suffix_statistics(colours) -> None:
    x, y = colours
    model = create_model("cifar_resnet8", num_classes=10)
    a, b = (finetune_last_blocks(model, _spec("cifar_resnet8"), x, y, train_blocks=1, epochs=2, batch_size=5,
                                 recalibrate_bn=recal)[0].state_dict() for recal in (True, False))
    differ = {k for k in a if not torch.equal(a[k], b[k])}
    assert differ and all(k.startswith("layer3.") and ("running" in k or "num_batches" in k) for k in differ)


def test_batch_slices_fold_a_trailing_single_item() -> None:
    assert batch_slices(9, 4) == [slice(0, 4), slice(4, 9)]
    assert batch_slices(8, 4) == [slice(0, 4), slice(4, 8)]
    assert batch_slices(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert batch_slices(1, 4) == [slice(0, 1)]


def test_recalibration_with_a_trailing_single_image_of_1x1_maps() -> None:
    """9 images in batches of 4: the last recalibration batch would be one image, whose 1x1 maps (a CIFAR ResNet's last
    stage at 4 px) a BatchNorm layer in train mode cannot normalise; it joins the previous batch (was a ValueError)."""
    spec = dataclasses.replace(default_spec("cifar_resnet8"), input_size=4)
    x = np.random.default_rng(0).random((9, 3, 4, 4)).astype(np.float32)
    y = np.arange(9, dtype=np.int64) % 2
    model = create_model("cifar_resnet8")
    calls: list[tuple[int, int]] = []
    net, _ = finetune_last_blocks(model, spec, x, y, train_blocks=1, epochs=1, batch_size=4,
                                  progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (3 + 3 + 2, 8)  # 3 cache batches, 3 steps, 2 recalibration batches
    assert int(net.layer3[0].bn2.num_batches_tracked) == 2
    assert all(torch.isfinite(v).all() for v in net.state_dict().values())
    expert = finetune_expert(model, spec, x, y, epochs=1, batch_size=4)  # the same pass over the whole network
    assert int(expert.bn1.num_batches_tracked) == 2


def test_progress_reaches_its_total(colours) -> None:
    x, y = colours
    calls: list[tuple[int, int]] = []
    finetune_last_blocks(create_model("cifar_resnet8"), _spec("cifar_resnet8"), x, y, train_blocks=1, epochs=2,
                         batch_size=10, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (4 + 8 + 4, 16) and [d for d, _ in calls] == sorted({d for d, _ in calls})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x": np.zeros((4, 2, 8, 8), np.float32)}, "channels"),
        ({"x": np.full((4, 3, 8, 8), np.nan, np.float32)}, "NaN"),
        ({"y": np.array([0, 1, 1], np.int64)}, "shape"),
        ({"y": np.array([0, 1, -1, 1], np.int64)}, "labels 0..K-1"),
        ({"y": np.zeros(4, np.int64)}, "at least 2 classes"),
        ({"y": np.array([0.0, 1.0, 0.0, 1.0])}, "integer"),
        ({"train_blocks": 17}, "0..16"),
        ({"train_blocks": -1}, "0..16"),
        ({"train_blocks": 1.5}, "integer"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": 2.5}, "integer"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"model": torch.nn.Linear(3, 2)}, "not a probe network"),
        ({"model": create_model("taskonomy_encoder")}, "cannot fine-tune the last blocks of EncoderProbe"),
    ],
)
def test_bad_inputs_are_one_line_errors(lite, change: dict, message: str) -> None:
    args = {"model": lite, "x": np.random.default_rng(0).random((4, 3, 8, 8)).astype(np.float32),
            "y": np.array([0, 1, 0, 1], np.int64), "train_blocks": 2} | change
    model, x, y = args.pop("model"), args.pop("x"), args.pop("y")
    with pytest.raises(TaskregError, match=message) as info:
        finetune_last_blocks(model, _spec("efficientnet_lite0"), x, y, **args)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------- through the registry and the CLI
def test_expert_train_with_train_blocks_trains_only_the_last_blocks(probe_template, tmp_path) -> None:
    from typer.testing import CliRunner

    from taskreg.cli import app
    from taskreg.registry import Registry
    from tests.procs import copy_registry

    root = copy_registry(probe_template, tmp_path / "reg")
    args = ["expert", "train", "e1", "--data", "builtin:digits?classes=1,2&n=40", "--epochs", "2", "--max-samples", "9"]
    res = CliRunner().invoke(app, ["-r", str(root), *args, "--train-blocks", "1"])
    assert res.exit_code == 0, res.output
    reg = Registry.open(root)
    _, probe, _ = reg.probes.load_probe(None)
    rec, expert, _ = reg.load_expert("e1")
    p, e = probe.state_dict(), expert.state_dict()
    frozen = [k for k in e if not k.startswith(("layer3.", "fc."))]  # cifar_resnet8: 3 blocks, the last is layer3.0
    assert frozen and all(torch.equal(e[k], p[k]) for k in frozen)
    assert not torch.equal(e["layer3.0.conv1.weight"], p["layer3.0.conv1.weight"])
    assert expert.fc.out_features == 2
    run = reg.tracker.run_data(rec.run_id)
    assert run.params["train_blocks"] == "1" and run.metrics["trained_params"] < sum(v.numel() for v in p.values())
