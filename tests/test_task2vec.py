"""Tests of taskreg.embedders.task2vec on a tiny probe (cifar_resnet8) and sklearn digits."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from taskreg.embedders.distances import d_sym
from taskreg.embedders.probes import create_model, default_spec
from taskreg.embedders.task2vec import balanced_subsample, domain_embedding, embed, fisher_layout, trivial_embedding
from taskreg.embedders.task2vec_kernels import (
    SQ_GRAD_FORMS,
    cheapest_form,
    feature_convs,
    montecarlo_fisher,
    per_filter_sq_grad_sum,
    sq_grad_plans,
)
from taskreg.embedders.task2vec_variational import receptive_energy
from taskreg.errors import TaskregError

SPEC = default_spec("cifar_resnet8")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return (d.images[:120] / 16.0).astype(np.float32)[:, None], d.target[:120].astype(np.int64)


@pytest.fixture(scope="module")
def probe() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("cifar_resnet8")


def test_layout_dimensions() -> None:
    assert sum(c for _, c in fisher_layout(create_model("cifar_resnet8"))) == 16 + 2 * 16 + 3 * 32 + 3 * 64
    layout18 = fisher_layout(create_model("resnet18"))
    assert sum(c for _, c in layout18) == 64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512 == 4800
    assert ("layer4.0.downsample.0.weight", 512) in layout18
    assert all(not n.startswith("fc") for n, _ in layout18)


def test_per_sample_fisher_matches_autograd(probe: torch.nn.Module) -> None:
    net = create_model("cifar_resnet8", num_classes=3).eval()
    x = torch.randn(5, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 1, 0])
    fast = montecarlo_fisher(net, x, 2, torch.device("cpu"), torch.Generator(), labels=y)
    for p in net.parameters():
        p.requires_grad_(True)
    sums = [torch.zeros(m.out_channels, dtype=torch.float64) for _, m in feature_convs(net)]
    for i in range(5):  # one backward per sample: the definition
        net.zero_grad()
        F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
        for s, (_, m) in zip(sums, feature_convs(net), strict=True):
            s += m.weight.grad.double().square().flatten(1).mean(1)
    ref = torch.cat(sums).numpy() / 5
    assert np.allclose(fast, ref, rtol=1e-4, atol=1e-6 * ref.max())


CONV_CASES = [  # (in, out, kernel, stride, padding, dilation, input H, W, groups)
    (3, 8, 7, 2, 3, 1, 19, 16, 1),
    (6, 5, 3, 1, 1, 1, 6, 7, 1),
    (4, 6, 3, 2, 1, 1, 7, 7, 1),
    (5, 4, 1, 2, 0, 1, 6, 5, 1),
    (3, 4, 3, 1, 2, 2, 5, 6, 1),
    (8, 3, 3, 1, 1, 1, 1, 1, 1),
    (6, 5, 1, 1, 0, 1, 5, 4, 1),  # pointwise: not unfolded
    # grouped and depthwise (EfficientNet-Lite's MBConv); stride 2 with padding 0 = the pre-padded TF "SAME" case
    (8, 8, 3, 1, 1, 1, 7, 6, 8),  # 3x3 depthwise, stride 1
    (8, 8, 3, 2, 1, 1, 9, 8, 8),  # 3x3 depthwise, stride 2
    (6, 6, 3, 2, 0, 1, 9, 8, 6),  # 3x3 depthwise, stride 2, padding 0
    (6, 6, 5, 1, 2, 1, 8, 7, 6),  # 5x5 depthwise
    (5, 5, 5, 2, 0, 1, 11, 10, 5),  # 5x5 depthwise, stride 2, padding 0
    (4, 6, 3, 1, 1, 1, 6, 5, 2),  # groups=2
    (4, 6, 3, 2, 1, 2, 9, 9, 2),  # groups=2, stride 2, dilation 2
    (4, 8, 3, 1, 1, 1, 5, 5, 4),  # depthwise with channel multiplier 2
    (6, 4, 1, 1, 0, 1, 4, 5, 2),  # grouped pointwise
]


@pytest.mark.parametrize("form", SQ_GRAD_FORMS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_every_per_sample_form_is_the_definition(form: str, case: tuple[int, ...]) -> None:
    """Each form's per-filter sum of squared per-sample weight gradients equals one backward per sample."""
    c_in, c_out, k, stride, pad, dil, h, w, groups = case
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, dilation=dil, groups=groups,
                           bias=False).double()
    a = torch.randn(5, c_in, h, w, dtype=torch.float64)
    out_shape = conv(a).shape
    r = torch.randn(out_shape, dtype=torch.float64)  # loss_i = <r_i, conv(a_i)>: its output gradient is r_i
    ref = torch.zeros(c_out, dtype=torch.float64)
    for i in range(5):
        conv.zero_grad()
        (conv(a[i : i + 1]) * r[i : i + 1]).sum().backward()
        ref += conv.weight.grad.square().flatten(1).sum(1)
    fast = per_filter_sq_grad_sum(conv, a, r, form=form)
    assert torch.allclose(fast, ref, rtol=1e-10, atol=1e-12 * float(ref.max()))
    plans = sq_grad_plans(conv, a.shape, r.shape)
    assert set(plans) == set(SQ_GRAD_FORMS) and all(cost > 0 and floats > 0 for cost, floats in plans.values())


@pytest.mark.parametrize("case", [c for c in CONV_CASES if c[-1] > 1] + [CONV_CASES[1]])
def test_receptive_energy_is_the_squared_weight_jacobian(case: tuple[int, ...]) -> None:
    """The SGVB noise variance per output (local reparameterisation) = sum over its filter's weights of
    (d out / d w)^2, for dense, grouped and depthwise convs."""
    c_in, c_out, k, stride, pad, dil, h, w, groups = case
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, dilation=dil, groups=groups,
                           bias=False).double()
    a = torch.randn(2, c_in, h, w, dtype=torch.float64)
    out = conv(a)
    energy = receptive_energy(conv, a).expand_as(out)
    ho, wo = out.shape[2:]
    for idx in [(0, 0, 0, 0), (1, c_out - 1, ho - 1, wo - 1), (1, c_out // 2, 0, wo // 2)]:
        (grad,) = torch.autograd.grad(out[idx], conv.weight, retain_graph=True)
        assert torch.isclose(energy[idx], grad.square().sum(), rtol=1e-12)


def _picked_forms(arch: str, size: int) -> dict[str, str]:
    """conv name -> the per-sample form the cost model picks for it at ``size`` px."""
    net = create_model(arch).eval()
    shapes: dict[str, tuple[torch.nn.Conv2d, torch.Size, torch.Size]] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: shapes.__setitem__(n, (mod, i[0].shape, o.shape)))
             for n, m in feature_convs(net)]
    with torch.no_grad():
        net(torch.zeros(2, 3, size, size))
    for hk in hooks:
        hk.remove()
    return {n: cheapest_form(sq_grad_plans(*v)) for n, v in shapes.items()}


def test_per_sample_forms_picked_for_resnet18_at_32px() -> None:
    """At 32 px the stem (256 output positions) goes through torch's weight-gradient kernel and the 3x3 convs of
    every stage (at most 64 input positions) through the unfold-free patch Gram."""
    picked = _picked_forms("resnet18", 32)
    assert picked["conv1"] == "native"
    assert all(form == "shifted_gram" for n, form in picked.items() if n.startswith("layer") and "downsample" not in n)


def test_per_sample_forms_picked_for_resnet18_at_224px() -> None:
    """At 224 px the stem and the 3x3 convs of the first two stages (784 to 12,544 output positions) go through
    torch's weight-gradient kernel (measured 1.6-3.2x faster than unfolding there: RESULTS.md), the last stage
    (49 positions) through the Gram forms, and no 1x1 conv through the kernel."""
    picked = _picked_forms("resnet18", 224)
    assert picked["conv1"] == "native"
    assert all(f == "native" for n, f in picked.items() if n.startswith(("layer1", "layer2")) and "downsample" not in n)
    assert all(f in ("cols_gram", "shifted_gram") for n, f in picked.items() if n.startswith("layer4"))
    assert all(f != "native" for n, f in picked.items() if "downsample" in n)


def test_per_sample_forms_picked_for_efficientnet_lite0_at_128px() -> None:
    """Depthwise convs go through torch's weight-gradient kernel with the images folded into the groups (the
    unfold of ``direct`` would feed one (1 x P) @ (P x taps) product per image and channel), so does the 3x3 stem;
    the 1x1 convs never (their per-sample gradient is a plain matmul of the input itself)."""
    picked = _picked_forms("efficientnet_lite0", 128)
    assert {f for n, f in picked.items() if "depthwise" in n} == {"native"}
    assert picked["_conv_stem"] == "native"
    assert "native" not in {f for n, f in picked.items() if "depthwise" not in n and n != "_conv_stem"}


def test_embedding_shape_metadata_and_model_untouched(probe: torch.nn.Module, digits) -> None:
    x, y = digits
    before = {k: v.clone() for k, v in probe.state_dict().items()}
    probe.train()
    emb = embed(probe, SPEC, x, y, seed=0)
    assert probe.training  # mode not changed
    assert all(p.requires_grad for p in probe.parameters())
    for k, v in probe.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert probe.fc.out_features == 10
    assert emb.vector.shape == (336,) and emb.vector.dtype == np.float32
    assert np.isfinite(emb.vector).all() and (emb.vector >= 0).all() and emb.vector.sum() > 0
    assert emb.n_samples == 120 and emb.n_classes == 10 and emb.method == "montecarlo"
    assert emb.layout == fisher_layout(probe) and emb.arch == "cifar_resnet8"
    assert emb.head_train_accuracy > 0.5


def test_deterministic_and_seed_dependent(probe: torch.nn.Module, digits) -> None:
    x, y = digits
    a = embed(probe, SPEC, x, y, seed=1)
    b = embed(probe, SPEC, x, y, seed=1)
    c = embed(probe, SPEC, x, y, seed=2)
    assert np.array_equal(a.vector, b.vector)
    assert not np.array_equal(a.vector, c.vector)
    assert d_sym(a.vector, c.vector) < 0.1


def test_label_permutation_invariance(probe: torch.nn.Module, digits) -> None:
    x, y = digits
    perm = np.array([3, 7, 1, 0, 9, 2, 5, 8, 4, 6])
    a = embed(probe, SPEC, x, y, max_samples=90, seed=0)
    b = embed(probe, SPEC, x, perm[y] + 100, max_samples=90, seed=0)  # renamed, shifted ids
    assert np.allclose(a.vector, b.vector, rtol=1e-3, atol=1e-6 * a.vector.max())


def test_montecarlo_scale_independent_of_batch_size(probe: torch.nn.Module, digits) -> None:
    x, y = digits
    a = embed(probe, SPEC, x, y, batch_size=30)
    b = embed(probe, SPEC, x, y, batch_size=120)
    assert a.vector.sum() == pytest.approx(b.vector.sum(), rel=1e-3)
    assert d_sym(a.vector, b.vector) < 1e-4


def test_balanced_subsample() -> None:
    y = np.array([0] * 50 + [1] * 30 + [2] * 5)
    idx = balanced_subsample(y, 40, seed=0)
    counts = np.bincount(y[idx], minlength=3)
    assert len(idx) == 40 and counts[2] == 5 and abs(counts[0] - counts[1]) <= 1
    assert np.array_equal(idx, balanced_subsample(y, 40, seed=0))
    assert np.array_equal(idx, balanced_subsample(np.array([2, 0, 1])[y], 40, seed=0))  # relabelling
    assert not np.array_equal(idx, np.arange(40))
    assert len(balanced_subsample(y, None, seed=0)) == 85


@pytest.mark.parametrize("method", ["montecarlo", "variational"])
def test_degenerate_tasks_give_finite_embeddings(probe: torch.nn.Module, method: str) -> None:
    const = np.full((40, 1, 8, 8), 0.5, dtype=np.float32)
    labels = np.arange(40) % 2
    for yy in (labels, np.zeros(40, dtype=np.int64)):  # two classes on identical images; one class
        emb = embed(probe, SPEC, const, yy, method=method, head_epochs=3, var_epochs=2)
        assert np.isfinite(emb.vector).all()
        if method == "variational" and yy.max() == 0:  # constant loss: exactly the prior (trivial embedding)
            assert np.array_equal(emb.vector, trivial_embedding(probe, "variational"))


def test_variational_first_pass_is_prior_plus_fisher(probe: torch.nn.Module, digits) -> None:
    """var_epochs=1 is the paper's second-order optimum Lambda = lambda2 + (N/beta) F, relative to lambda2."""
    x, y = digits
    mc = embed(probe, SPEC, x, y, seed=3).vector
    var = embed(probe, SPEC, x, y, method="variational", var_epochs=1, beta=0.5, prior_scale=2.0, seed=3).vector
    w2 = np.concatenate([m.weight.detach().double().pow(2).flatten(1).mean(1).numpy() for _, m in feature_convs(probe)])
    expected = 1.0 + (120 / 0.5) * mc.astype(np.float64) * w2 / 2.0
    assert np.allclose(var, expected, rtol=1e-5)
    default = embed(probe, SPEC, x, y, method="variational", var_epochs=1, seed=3).vector
    n_weights = sum(m.weight.numel() for _, m in feature_convs(probe))  # default beta = N / W: data weight N/beta = W
    assert np.allclose(default, 1.0 + n_weights * mc.astype(np.float64) * w2, rtol=1e-5)


def test_variational_defaults_data_dominates_and_deterministic(probe: torch.nn.Module, digits) -> None:
    x, y = digits
    a = embed(probe, SPEC, x, y, method="variational", seed=1)
    b = embed(probe, SPEC, x, y, method="variational", seed=1)
    c = embed(probe, SPEC, x, y, method="variational", seed=2)
    assert a.method == "variational" and a.vector.shape == (336,) and a.vector.dtype == np.float32
    assert np.array_equal(a.vector, b.vector)
    assert not np.array_equal(a.vector, c.vector)
    assert (a.vector >= 1.0 - 1e-6).all()  # precision never below the prior's
    assert np.median(a.vector - 1.0) > 10  # the data term, not the prior, makes the embedding
    t0 = trivial_embedding(probe, "variational")
    assert d_sym(a.vector, c.vector) < 0.25 * d_sym(a.vector, t0)  # seeds agree far better than task vs prior


@pytest.mark.parametrize("solver", ["sgvb", "fixed_point"])
def test_variational_refinement_moves_from_the_laplace_solution(probe: torch.nn.Module, digits, solver: str) -> None:
    """Passes after the first optimise the variational objective: a different, deterministic answer that
    stays at or above the prior and correlates with the second-order (Laplace) one."""
    x, y = digits
    laplace = embed(probe, SPEC, x, y, method="variational", var_epochs=1, seed=4).vector
    a, b = (embed(probe, SPEC, x, y, method="variational", var_epochs=3, var_solver=solver, seed=4).vector
            for _ in range(2))
    assert np.array_equal(a, b) and np.isfinite(a).all() and (a >= 1.0 - 1e-6).all()
    assert not np.allclose(a, laplace, rtol=1e-3)
    assert np.corrcoef(np.log(a), np.log(laplace))[0, 1] > 0.8


def test_variational_invariant_to_filter_rescaling(probe: torch.nn.Module, digits) -> None:
    """conv -> BatchNorm does not change when a filter and its BN statistics are rescaled; F_f changes by
    1/c^2 but the variational embedding (precision relative to a prior on the weights' own scale) does not."""
    x, y = digits
    scaled = copy.deepcopy(probe).eval()
    c = torch.linspace(0.5, 2.0, scaled.conv1.out_channels)
    with torch.no_grad():
        scaled.conv1.weight.mul_(c.view(-1, 1, 1, 1))
        scaled.bn1.running_mean.mul_(c)
        scaled.bn1.running_var.mul_(c * c)
    mc_a, mc_b = (embed(m, SPEC, x, y, max_samples=60).vector[:16] for m in (probe, scaled))
    assert np.allclose(mc_b * c.numpy() ** 2, mc_a, rtol=1e-2)
    var_a, var_b = (embed(m, SPEC, x, y, max_samples=60, method="variational", var_epochs=2).vector
                    for m in (probe, scaled))
    assert np.allclose(var_a, var_b, rtol=1e-2)


def test_variational_near_prior_for_shuffled_labels(probe: torch.nn.Module) -> None:
    """Labels independent of the images: nearer the prior than the real task, with a smaller data term.

    Needs N large against the head (10 classes x 64 features): at N=300 the head memorises shuffled
    labels (train accuracy ~0.4) and the Fisher of a memorising head is as large as a real one's (the
    montecarlo sums agree within 2%), so no Fisher estimator separates the two there.
    """
    d = load_digits()
    x, y = (d.images[:1000] / 16.0).astype(np.float32)[:, None], d.target[:1000]
    t0 = trivial_embedding(probe, "variational")
    assert np.array_equal(t0, np.ones(336, dtype=np.float32))
    assert np.array_equal(t0, trivial_embedding(fisher_layout(probe), "variational"))
    real = embed(probe, SPEC, x, y, method="variational")
    shuffled = embed(probe, SPEC, x, np.random.default_rng(0).permutation(y), method="variational")
    d_real, d_shuf = d_sym(real.vector, t0), d_sym(shuffled.vector, t0)
    assert d_shuf < d_real - 0.02
    assert np.median(shuffled.vector - 1) < 0.7 * np.median(real.vector - 1)


def test_trivial_and_domain_embeddings(probe: torch.nn.Module, digits) -> None:
    t_mc = trivial_embedding(probe, "montecarlo", spec=SPEC)
    assert t_mc.shape == (336,) and np.isfinite(t_mc).all() and t_mc.sum() > 0
    assert np.array_equal(t_mc, trivial_embedding(probe, "montecarlo", spec=SPEC))
    with pytest.raises(TaskregError):
        trivial_embedding(fisher_layout(probe), "montecarlo")
    dom = domain_embedding(probe, SPEC, digits[0])
    assert dom.shape == (64,) and np.isfinite(dom).all()


def test_embed_returns_the_domain_embedding_of_its_images(probe: torch.nn.Module, digits) -> None:
    x, y = digits
    emb = embed(probe, SPEC, x, y, head_epochs=2)  # all images: the same set domain_embedding sees
    assert np.allclose(emb.mean_features, domain_embedding(probe, SPEC, x), rtol=1e-5, atol=1e-6)
    sub = embed(probe, SPEC, x, y, head_epochs=2, max_samples=40, seed=5)
    idx = balanced_subsample(y, 40, 5)
    assert np.allclose(sub.mean_features, domain_embedding(probe, SPEC, x[idx]), rtol=1e-5, atol=1e-6)


def test_single_forward_montecarlo_equals_the_two_pass_one(probe: torch.nn.Module, digits) -> None:
    """Keeping the features pass's graphs (memory permitting) gives exactly the two-pass embedding."""
    x, y = digits
    kept = embed(probe, SPEC, x, y, seed=7, batch_size=32)
    twice = embed(probe, SPEC, x, y, seed=7, batch_size=32, retain_bytes=0)
    tiny = embed(probe, SPEC, x, y, seed=7, batch_size=32, retain_bytes=1000)  # over budget: falls back
    assert np.array_equal(kept.vector, twice.vector) and np.array_equal(kept.vector, tiny.vector)
    assert np.array_equal(kept.mean_features, twice.mean_features)
    assert kept.head_train_loss == twice.head_train_loss
    from taskreg.embedders.task2vec import features_keeping_graphs

    xt = torch.rand(40, 3, 32, 32)
    net = copy.deepcopy(probe).eval()
    assert features_keeping_graphs(net, xt, 16, torch.device("cpu"), 1000) is None
    assert not any(m._forward_hooks for _, m in feature_convs(net))  # the fallback leaves no hook behind
    z, graphs, acc = features_keeping_graphs(net, xt, 16, torch.device("cpu"), 2**30)
    assert z.shape == (40, 64) and len(graphs) == 3 and all(g is not None and g.requires_grad for g in graphs)
    acc.remove()
    # a budget for about two batches: those are kept, the third runs forward again -- still the same embedding
    per_image = _saved_bytes_per_image(net, xt[:1])
    z2, graphs2, acc2 = features_keeping_graphs(net, xt, 16, torch.device("cpu"), int(per_image * 35))
    acc2.remove()
    assert [g is not None for g in graphs2] == [True, True, False] and torch.equal(z2, z)
    partial = embed(probe, SPEC, x, y, seed=7, batch_size=32, retain_bytes=int(per_image * 70))
    assert np.array_equal(kept.vector, partial.vector)


def _saved_bytes_per_image(net: torch.nn.Module, x1: torch.Tensor) -> int:
    """Bytes of the distinct activation storages autograd keeps for one image in the Fisher pass (weights frozen,
    the graph starting at the first conv's output, as the accumulator's hooks make it; weights excluded)."""
    from taskreg.embedders.task2vec_kernels import FisherAccumulator

    seen = {t.untyped_storage().data_ptr() for t in (*net.parameters(), *net.buffers())}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
        return t

    acc = FisherAccumulator(net)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net.features(x1)  # type: ignore[operator]
    finally:
        acc.remove()
    return total


def test_input_validation(probe: torch.nn.Module, digits) -> None:
    x, y = digits
    with pytest.raises(TaskregError, match="method"):
        embed(probe, SPEC, x, y, method="exact")
    with pytest.raises(TaskregError, match="labels"):
        embed(probe, SPEC, x, y[:10])
    with pytest.raises(TaskregError, match="integer"):
        embed(probe, SPEC, x, y.astype(np.float32))
    for kw in ({"beta": 0.0}, {"beta": float("nan")}, {"prior_scale": -1.0}, {"var_epochs": 0},
               {"var_solver": "adam"}, {"var_lr": 0.0}):
        with pytest.raises(TaskregError):
            embed(probe, SPEC, x, y, method="variational", **kw)


def test_the_head_optimizer_is_torch_adam_bit_for_bit() -> None:
    """HeadAdam (no torch._dynamo import) gives exactly torch.optim.Adam's weights, with and without weight decay."""
    from taskreg.embedders.linear_head import HeadAdam

    gen = torch.Generator().manual_seed(3)
    z, y = torch.randn(300, 40, generator=gen), torch.randint(0, 5, (300,), generator=gen)
    for wd in (0.0, 1e-3):
        heads = [torch.nn.Linear(40, 5), torch.nn.Linear(40, 5)]
        heads[1].load_state_dict(heads[0].state_dict())
        opts = [HeadAdam(heads[0].parameters(), lr=0.01, weight_decay=wd),
                torch.optim.Adam(heads[1].parameters(), lr=0.01, weight_decay=wd)]
        for i in range(0, 300, 32):
            for head, opt in zip(heads, opts, strict=True):
                opt.zero_grad()
                F.cross_entropy(head(z[i : i + 32]), y[i : i + 32]).backward()
                opt.step()
        for a, b in zip(heads[0].parameters(), heads[1].parameters(), strict=True):
            assert torch.equal(a, b), wd


def test_embedding_a_query_does_not_import_dynamo() -> None:
    """The probe pass of a fresh process pays no torch._dynamo import (1.6 s): checked in a subprocess."""
    import subprocess
    import sys

    code = ("import sys, torch; from taskreg.embedders.probes import create_model; "
            "from taskreg.embedders.task2vec import embed; from taskreg.data import load; "
            "from taskreg.embedders.probes import default_spec; d = load('builtin:digits?n=60'); "
            "torch.manual_seed(0); embed(create_model('cifar_resnet8'), default_spec('cifar_resnet8'), d.x, d.y, "
            "head_epochs=2); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split()
    assert out == ["False"]
