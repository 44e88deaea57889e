"""The extension points and shared helpers of taskreg.data (the dataset-source package)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from taskreg.data import canonical_source, list_builtins, load, parse_source
from taskreg.data.dataset import RawData
from taskreg.data.images import load_photograph, resize_image, short_side_shape
from taskreg.data.sources import KINDS, SourceKind
from taskreg.data.sources.builtin import BUILTINS, Builtin
from taskreg.data.validation import fail
from taskreg.errors import TaskregError


def _digits_raw(domain: str) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return RawData((bunch.images[:, None] / 16.0).astype(np.float32), bunch.target.astype(np.int64),
                   [str(d) for d in range(10)], domain)


def test_a_new_file_kind_is_one_loader_plus_one_table_entry(tmp_path: pathlib.Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []

    def load_digits_file(source: str, path: str) -> RawData:
        seen.append((source, path))
        if not pathlib.Path(path).exists():
            fail(source, f"no such file: {path}")
        return _digits_raw("digitsfile")

    monkeypatch.setitem(KINDS, "digitsfile", SourceKind(load_digits_file, suffix=".DIGITS"))
    path = tmp_path / "my.digits"
    path.write_text("")
    ds = load(f"{path}?classes=1,7&split=test&transform=invert")
    assert parse_source(str(path)).kind == "digitsfile" and seen == [(f"{path}?classes=1,7&split=test&transform=invert",
                                                                       str(path))]
    assert ds.class_names == ["1", "7"] and ds.domain == "digitsfile+invert" and ds.n > 0
    assert ds.source == f"{path}?classes=1,7&split=test&transform=invert"
    with pytest.raises(TaskregError, match=r"^dataset '.*missing.digits': no such file"):
        load(str(tmp_path / "missing.digits"))
    assert parse_source(str(tmp_path / "imgs")).kind == "folder"  # the fallback still takes other paths


def test_a_new_scheme_and_a_new_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    def resolve(source: str, text: str) -> str:
        if text != "all":
            fail(source, f"unknown collection {text!r}")
        return text

    monkeypatch.setitem(KINDS, "collection", SourceKind(lambda s, loc: _digits_raw("coll"), scheme="coll",
                                                        resolve=resolve))
    assert canonical_source("COLL:all?seed=0&n=20") == "coll:all?n=20"
    assert load("coll:all?n=20").n == 20
    with pytest.raises(TaskregError, match="unknown collection 'some'"):
        load("coll:some")

    monkeypatch.setitem(BUILTINS, "digits16", Builtin("digits again", lambda: _digits_raw("digits16")))
    assert "builtin:digits16" in list_builtins()
    assert load("builtin:digits16?classes=0,1").domain == "digits16"


def test_one_photograph_loader_and_one_resizer() -> None:
    camera = load_photograph("camera")  # grey in scikit-image: replicated to 3 channels
    assert camera.dtype == np.uint8 and camera.shape == (512, 512, 3)
    assert (camera[:, :, 0] == camera[:, :, 2]).all()
    assert load_photograph("china").shape == (427, 640, 3)  # scikit-learn's sample image
    assert load_photograph("motorcycle").shape == (500, 741, 3)  # left view of the stereo pair
    with pytest.raises(TaskregError, match="unknown bundled photograph 'nonsense'"):
        load_photograph("nonsense")

    assert short_side_shape(300, 451, 160) == (160, 241)
    small = resize_image(camera, (64, 48))
    assert small.dtype == np.uint8 and small.shape == (64, 48, 3)
    smooth = resize_image(camera.astype(np.float32) / 255, (64, 48), kernel="linear")
    assert smooth.dtype == np.float32 and smooth.shape == (64, 48, 3) and 0.0 <= smooth.min() <= smooth.max() <= 1.0
    assert np.abs(smooth - small / 255.0).mean() < 0.05  # two kernels, the same picture
    with pytest.raises(TaskregError, match="unknown resize kernel 'cubic'"):
        resize_image(camera, (8, 8), kernel="cubic")


def test_pyplot_helper_selects_agg() -> None:
    import matplotlib

    from taskreg.plotting import pyplot

    plt = pyplot()
    assert plt.__name__ == "matplotlib.pyplot" and matplotlib.get_backend().lower() == "agg"


def test_builtin_animals_reads_the_wheel_without_running_its_pickles(tmp_path: pathlib.Path) -> None:
    import gzip
    import importlib.util
    import os
    import pickle

    from taskreg.data.sources import animals

    # a tampered data file: a pickle whose global would run code is refused, and nothing runs
    class Exploit:
        def __reduce__(self):  # noqa: ANN204
            return (os.mkdir, (str(tmp_path / "pwned"),))

    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        pickle.dump(Exploit(), f)
    with pytest.raises(TaskregError, match="not a plain pickled array.*posix.mkdir is not allowed"):
        animals.read_array(bad)
    assert not (tmp_path / "pwned").exists()
    good = tmp_path / "good.gz"
    with gzip.open(good, "wb") as f:
        pickle.dump(np.arange(6, dtype=np.uint8).reshape(2, 3), f)
    np.testing.assert_array_equal(animals.read_array(good), np.arange(6).reshape(2, 3))

    if importlib.util.find_spec("animal_mnist") is None:
        with pytest.raises(TaskregError, match="pip install --no-deps animal-mnist"):
            load("builtin:animals")
        pytest.skip("the animal-mnist wheel is not installed (make installs it)")
    ds = load("builtin:animals?split=test")
    assert ds.x.shape == (2500, 1, 28, 28) and ds.n_classes == 10
    assert np.bincount(ds.y).tolist() == [250] * 10 and 0.0 <= ds.x.min() < ds.x.max() <= 1.0
    assert "builtin:animals" in list_builtins()
