"""Experts: fine-tuning, frozen features, the expert's own head, and the linear-probe protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from taskreg.embedders.probes import adapt_inputs, create_model, default_spec
from taskreg.errors import TaskregError
from taskreg.trainers.experts import (
    LinearProbeProtocol,
    expert_logits,
    extract_features,
    finetune_expert,
    head_logits,
    linear_probe_error,
    stratified_split,
)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as (N, 1, 8, 8) float32 images in [0, 1] and int64 labels."""
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    return x, data.target.astype(np.int64)


# -------------------------------------------------------------------------------------- linear probe
def test_linear_probe_on_raw_digit_pixels_is_accurate_and_deterministic(digits) -> None:
    x, y = digits
    features = x.reshape(len(x), -1)
    protocol = LinearProbeProtocol(seed=3)
    first = linear_probe_error(features, y, protocol)
    second = linear_probe_error(features, y, protocol)
    assert first.test_error < 0.1
    assert first.train_error <= first.test_error + 0.02
    assert (first.test_error, first.train_error) == (second.test_error, second.train_error)
    assert first.n_train + first.n_test == len(y)
    assert first.n_test == pytest.approx(0.25 * len(y), abs=10)  # stratified rounding per class
    assert first.seconds > 0  # wall time is recorded (not asserted: shared CI machines vary)


def test_linear_probe_chance_on_shuffled_labels(digits) -> None:
    x, y = digits
    shuffled = np.random.default_rng(0).permutation(y)
    assert linear_probe_error(x.reshape(len(x), -1), shuffled).test_error > 0.7  # 10 classes: chance 0.9


def test_stratified_split_is_seeded_and_stratified() -> None:
    y = np.repeat(np.arange(3), [8, 4, 1])  # the single-sample class stays in training
    train, test = stratified_split(y, 0.25, seed=0)
    assert np.bincount(y[test], minlength=3).tolist() == [2, 1, 0]
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(y)))
    again_train, again_test = stratified_split(y, 0.25, seed=0)
    assert np.array_equal(test, again_test) and np.array_equal(train, again_train)
    assert not np.array_equal(test, stratified_split(y, 0.25, seed=1)[1])


def test_protocol_records_its_parameters_and_validates() -> None:
    params = LinearProbeProtocol().as_params()
    assert params["probe.test_fraction"] == 0.25 and params["probe.method"] == "multinomial-logreg-lbfgs"
    with pytest.raises(TaskregError):
        LinearProbeProtocol(test_fraction=1.0)
    with pytest.raises(TaskregError):
        linear_probe_error(np.full((4, 2), np.nan), np.array([0, 1, 0, 1]))
    with pytest.raises(TaskregError):
        linear_probe_error(np.ones((4, 2)), np.array([0, 1, 0]))
    with pytest.raises(TaskregError):
        linear_probe_error(np.ones((4, 2)), np.zeros(4, dtype=np.int64))


# ------------------------------------------------------------------------------ fine-tuning / features
def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_finetune_expert_trains_a_copy_with_a_new_head(digits) -> None:
    x, y = digits[0][:256], digits[1][:256] % 4  # a 4-class task
    spec = default_spec("cifar_resnet8")
    torch.manual_seed(0)
    base = create_model("cifar_resnet8", num_classes=10)
    before = _state(base)
    steps: list[tuple[int, int]] = []
    kwargs = dict(epochs=1, batch_size=64, lr=0.05, seed=0, device="cpu")
    expert = finetune_expert(base, spec, x, y, progress=lambda d, t: steps.append((d, t)), **kwargs)

    # the input model is untouched (weights, buffers, head, mode-independent)
    after = _state(base)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert base.fc.out_features == 10
    # the expert has a head for the 4 training classes and changed weights
    assert expert.fc.out_features == 4 and not expert.training
    trained = _state(expert)
    assert not torch.equal(trained["conv1.weight"], before["conv1.weight"])
    assert steps[-1] == (4, 4)  # 256 / 64 steps
    # deterministic given the seed
    again = _state(finetune_expert(base, spec, x, y, **kwargs))
    assert all(torch.equal(trained[k], again[k]) for k in trained)

    feats = extract_features(expert, spec, x[:50], batch_size=16)
    assert feats.shape == (50, expert.feature_dim) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    logits = expert_logits(expert, spec, x[:50], batch_size=16)
    assert logits.shape == (50, 4) and logits.dtype == np.float32
    # the head on top of the extracted features gives the same logits (what select's LEEP/NCE use)
    np.testing.assert_allclose(head_logits(expert, feats), logits, rtol=1e-4, atol=1e-4)


def _eval_batchnorm_inputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each BatchNorm layer of ``model`` receives in eval mode for the input ``x`` (no gradients)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, args, name=name: seen.__setitem__(name, args[0]))
             for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_finetune_expert_recalibrates_batchnorm_on_the_training_images(digits) -> None:
    x, y = digits[0][:64], digits[1][:64] % 4
    spec = default_spec("cifar_resnet8")
    torch.manual_seed(0)
    base = create_model("cifar_resnet8", num_classes=10)
    # batch_size = N: the recalibration pass is one batch of all training images, so in eval mode each BatchNorm layer
    # must see exactly the statistics it stores (the layers before it normalise with the same numbers)
    kwargs = dict(epochs=2, batch_size=64, lr=0.05, seed=0)
    expert = finetune_expert(base, spec, x, y, **kwargs)
    stale = finetune_expert(base, spec, x, y, recalibrate_bn=False, **kwargs)
    a, b = expert.state_dict(), stale.state_dict()
    differ = {k for k in a if not torch.equal(a[k], b[k])}
    assert differ and all("running" in k or "num_batches" in k for k in differ)  # same weights, other statistics

    images = adapt_inputs(torch.from_numpy(x), spec)
    norms = dict(expert.named_modules())
    inputs = _eval_batchnorm_inputs(expert, images)
    assert len(inputs) == 9  # cifar_resnet8: the stem, 3 blocks x 2 and the 2 downsampling shortcuts
    for name, h in inputs.items():
        torch.testing.assert_close(norms[name].running_mean, h.mean(dim=(0, 2, 3)), atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(norms[name].running_var, h.var(dim=(0, 2, 3)), atol=1e-3, rtol=1e-3)
        assert norms[name].momentum == 0.1  # restored after the pass
    # without the recalibration the running averages of two steps are far from it, and eval-mode accuracy suffers
    stale_inputs, stale_norms = _eval_batchnorm_inputs(stale, images), dict(stale.named_modules())
    assert max(float((stale_norms[n].running_mean - h.mean(dim=(0, 2, 3))).abs().max())
               for n, h in stale_inputs.items()) > 0.1
    with torch.no_grad():
        accuracy = [float((m(images).argmax(1).numpy() == y).mean()) for m in (expert, stale)]
    assert accuracy[0] > accuracy[1] + 0.05, accuracy


def test_finetuning_improves_the_linear_probe(digits) -> None:
    x, y = digits[0][:400], digits[1][:400]
    spec = default_spec("cifar_resnet8")
    torch.manual_seed(0)
    base = create_model("cifar_resnet8")
    expert = finetune_expert(base, spec, x, y, epochs=3, batch_size=32, lr=0.05, seed=0)
    protocol = LinearProbeProtocol(seed=0)
    random_err = linear_probe_error(extract_features(base, spec, x), y, protocol).test_error
    expert_err = linear_probe_error(extract_features(expert, spec, x), y, protocol).test_error
    assert expert_err < random_err


def test_bad_inputs_raise_taskreg_error(digits) -> None:
    spec = default_spec("cifar_resnet8")
    model = create_model("cifar_resnet8")
    x, y = digits[0][:10], digits[1][:10]
    with pytest.raises(TaskregError):
        finetune_expert(model, spec, x, y[:5], epochs=1)
    with pytest.raises(TaskregError):
        finetune_expert(model, spec, x, y, epochs=0)
    with pytest.raises(TaskregError):
        extract_features(model, spec, x[:, 0])  # (N, H, W): no channel axis
