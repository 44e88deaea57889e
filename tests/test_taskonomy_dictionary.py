"""Tests of the Taskonomy task dictionary (built-in and user .npz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from taskreg.errors import TaskregError
from taskreg.trainers.taskonomy_dictionary import (
    JIGSAW_PERMUTATIONS,
    RANDOM_TASK,
    Dictionary,
    DictionaryRef,
    build_builtin_dictionary,
    dictionary_fingerprint,
    load_dictionary_npz,
    save_dictionary_npz,
)


@pytest.fixture(scope="module")
def tiny() -> Dictionary:
    return build_builtin_dictionary(tiny=True)


def test_every_image_has_every_annotation(tiny: Dictionary) -> None:
    n, c, h, w = tiny.images.shape
    assert (c, h, w) == (3, 16, 16) and n == 160
    assert tiny.images.dtype == np.float32 and tiny.images.min() >= 0 and tiny.images.max() <= 1
    for name, spec in tiny.tasks.items():
        x = tiny.input_of(name)
        assert x.shape == tiny.images.shape and x.dtype == np.float32, name
        assert x.min() >= 0.0 and x.max() <= 1.0, name
        if spec.kind == "none":
            assert name not in tiny.targets
            continue
        y = tiny.target_of(name)
        assert y.shape[0] == n and np.isfinite(y).all(), name
        if spec.kind == "pixel":
            assert y.shape == (n, spec.out_channels, h, w) and y.dtype == np.float32
        elif spec.kind == "classification":
            assert y.shape == (n,) and y.dtype == np.int64
            assert y.min() >= 0 and y.max() < spec.n_classes
        else:
            assert y.shape == (n, spec.out_channels) and y.dtype == np.float32


def test_task_kinds_and_split(tiny: Dictionary) -> None:
    specs = tiny.tasks
    assert len(specs) >= 12
    targets = [s for s in specs.values() if not s.source_only]
    assert sum(s.kind == "pixel" for s in targets) >= 4
    assert sum(s.kind == "regression" for s in targets) >= 1  # low-dimensional (scale, orientation)
    assert specs["photo"].kind == "classification" and specs["photo"].n_classes == len(tiny.photo_names)
    source_only = {n for n, s in specs.items() if s.source_only}
    assert {"jigsaw", "colorization", RANDOM_TASK} <= source_only and len(source_only) >= 2
    assert set(tiny.target_names) == set(specs) - source_only
    assert "disparity" in specs and "motorcycle" in tiny.photo_names
    # split: disjoint, complete, sorted
    tr, te = tiny.train_idx, tiny.test_idx
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == tiny.n_images
    assert (np.diff(tr) > 0).all() and (np.diff(te) > 0).all()
    # every photo appears in both splits
    assert set(tiny.photo_index[tr]) == set(tiny.photo_index[te]) == set(range(len(tiny.photo_names)))


def test_determinism_with_seed(tiny: Dictionary) -> None:
    again = build_builtin_dictionary(tiny=True)
    np.testing.assert_array_equal(again.images, tiny.images)
    for name in tiny.targets:
        np.testing.assert_array_equal(again.targets[name], tiny.targets[name])
    for key in tiny.inputs:
        np.testing.assert_array_equal(again.inputs[key], tiny.inputs[key])
    assert dictionary_fingerprint(again) == dictionary_fingerprint(tiny)
    other = build_builtin_dictionary(tiny=True, seed=1)
    assert not np.array_equal(other.images, tiny.images)
    assert dictionary_fingerprint(other) != dictionary_fingerprint(tiny)


def test_modified_inputs_are_what_the_targets_say(tiny: Dictionary) -> None:
    x = tiny.images
    # rotation: undoing the rotation recovers the image
    rot, k = tiny.input_of("rotation"), tiny.target_of("rotation")
    assert len(set(k.tolist())) > 1
    for i in range(10):
        np.testing.assert_array_equal(np.rot90(rot[i], -int(k[i]), axes=(1, 2)), x[i])
    # jigsaw: tile i of the image is found at slot perm[i]
    jig, cls = tiny.input_of("jigsaw"), tiny.target_of("jigsaw")
    h2 = x.shape[2] // 2
    for i in range(10):
        for tile, slot in enumerate(JIGSAW_PERMUTATIONS[int(cls[i])]):
            (r, c), (rs, cs) = divmod(tile, 2), divmod(slot, 2)
            np.testing.assert_array_equal(
                jig[i, :, rs * h2 : (rs + 1) * h2, cs * h2 : (cs + 1) * h2],
                x[i, :, r * h2 : (r + 1) * h2, c * h2 : (c + 1) * h2],
            )
    # denoising input is noisy, its target is the clean image
    assert np.abs(tiny.input_of("denoising") - x).mean() > 0.02
    np.testing.assert_array_equal(tiny.target_of("denoising"), x)
    # colorization input is grey
    g = tiny.input_of("colorization")
    np.testing.assert_allclose(g[:, 0], g[:, 1])
    # scale: zoom 1 (target 0) leaves the image nearly unchanged, larger zoom changes it more
    s = tiny.target_of("scale")[:, 0]
    err = np.abs(tiny.input_of("scale") - x).mean(axis=(1, 2, 3))
    assert s.min() >= 0.0 and s.max() <= 2.0
    assert np.corrcoef(s, err)[0, 1] > 0.3


def test_disparity_only_on_the_stereo_photo(tiny: Dictionary) -> None:
    m = tiny.photo_names.index("motorcycle")
    disp = tiny.target_of("disparity")
    is_moto = tiny.photo_index == m
    assert is_moto.mean() > 0.1  # the stereo photo gets a share of the crops
    assert (disp[~is_moto] == 0).all()
    assert disp[is_moto].mean() > 0.05 and disp.max() <= 1.0


def test_losses(tiny: Dictionary) -> None:
    inp = tiny.tasks["inpainting"]
    y = torch.from_numpy(tiny.target_of("inpainting")[:4])
    pred = y.clone()
    pred[:, :, :2, :2] += 1.0  # outside the central hole: does not count
    assert torch.allclose(inp.per_image_loss(pred, y), torch.zeros(4))
    pred[:, :, 8, 8] += 1.0  # inside the hole
    assert (inp.per_image_loss(pred, y) > 0).all()
    cls = tiny.tasks["photo"]
    logits = torch.zeros(5, cls.n_classes)
    t = torch.arange(5)
    np.testing.assert_allclose(cls.per_image_loss(logits, t).numpy(), np.log(cls.n_classes), rtol=1e-5)
    assert cls.loss(logits, t).shape == ()
    reg = tiny.tasks["orientation"]
    assert reg.per_image_loss(torch.ones(3, 2), torch.zeros(3, 2)).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(TaskregError):
        tiny.tasks[RANDOM_TASK].per_image_loss(torch.zeros(1), torch.zeros(1))


def test_npz_round_trip(tiny: Dictionary, tmp_path: Path) -> None:
    path = save_dictionary_npz(tiny, tmp_path / "d.npz")
    back = load_dictionary_npz(path)
    np.testing.assert_array_equal(back.images, tiny.images)
    np.testing.assert_array_equal(back.test_idx, tiny.test_idx)
    assert list(back.tasks) == list(tiny.tasks)
    for name, spec in tiny.tasks.items():
        b = back.tasks[name]
        assert (b.kind, b.out_channels, b.source_only, b.input_key) == (
            spec.kind,
            spec.out_channels if spec.kind != "classification" else int(tiny.targets[name].max()) + 1,
            spec.source_only,
            spec.input_key,
        ), name
        if spec.kind != "none":
            np.testing.assert_array_equal(back.target_of(name), tiny.target_of(name))
            np.testing.assert_array_equal(back.input_of(name), tiny.input_of(name))
    ref = DictionaryRef(source="npz", path=str(path))
    assert ref.load() is ref.load()


def _write(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_kind_inference(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 20
    p = _write(
        tmp_path / "u.npz",
        images=rng.integers(0, 256, size=(n, 1, 8, 8), dtype=np.uint8),
        label=rng.integers(0, 3, size=n),
        value=rng.normal(size=n),
        vec=rng.normal(size=(n, 4)),
        mask=rng.random((n, 8, 8)),
        seg=rng.random((n, 2, 8, 8)).astype(np.float32),
    )
    d = load_dictionary_npz(p)
    assert d.images.shape == (n, 3, 8, 8) and d.images.dtype == np.float32 and d.images.max() <= 1.0
    kinds = {k: (s.kind, s.out_channels) for k, s in d.tasks.items()}
    assert kinds == {
        "label": ("classification", 3),
        "value": ("regression", 1),
        "vec": ("regression", 4),
        "mask": ("pixel", 1),
        "seg": ("pixel", 2),
        RANDOM_TASK: ("none", 0),
    }
    assert d.target_of("value").shape == (n, 1) and d.target_of("mask").shape == (n, 1, 8, 8)
    assert len(d.test_idx) == 4 and len(d.train_idx) == 16
    np.testing.assert_array_equal(load_dictionary_npz(p).test_idx, d.test_idx)  # deterministic split


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"label": np.zeros(20, np.int64)}, "missing the 'images'"),
        ({"images": np.zeros((20, 3, 8, 8), np.float32)}, "no task arrays"),
        ({"images": np.zeros((20, 3, 8, 8), np.float32), "label": np.zeros(19, np.int64)}, "has 19 rows"),
        ({"images": np.zeros((20, 3, 8, 8), np.float32), "m": np.zeros((20, 1, 4, 4), np.float32)}, "4x4"),
        ({"images": np.zeros((20, 3, 8, 8), np.float32), "v": np.full(20, np.nan)}, "NaN"),
        ({"images": np.full((20, 3, 8, 8), 2.0, np.float32), "v": np.zeros(20)}, "must be in [0, 1]"),
        ({"images": np.zeros((20, 3, 6, 6), np.float32), "v": np.zeros(20)}, "multiples of 4"),
        ({"images": np.zeros((20, 3, 8, 8), np.float32), "v": np.zeros((20, 2, 2, 2, 2))}, "cannot infer"),
        ({"images": np.zeros((20, 3, 8, 8), np.float32), "label": -np.ones(20, np.int64)}, ">= 0"),
        ({"images": np.zeros((20, 3, 8, 8), np.float32), "random": np.zeros(20)}, "reserved"),
        ({"images": np.zeros((5, 3, 8, 8), np.float32), "v": np.zeros(5)}, "at least 10 images"),
        (
            {"images": np.zeros((20, 3, 8, 8), np.float32), "v": np.zeros(20), "source_only": np.array(["v"])},
            "every task is source-only",
        ),
    ],
)
def test_npz_validation(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    p = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(TaskregError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_dictionary_npz(p)


def test_npz_missing_file_and_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(TaskregError, match="not found"):
        load_dictionary_npz(tmp_path / "nope.npz")
    with pytest.raises(TaskregError, match="size"):
        build_builtin_dictionary(size=10)
    with pytest.raises(TaskregError, match="n_images"):
        build_builtin_dictionary(size=16, n_images=10)
