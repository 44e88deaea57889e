"""The demo report renders offline in headless Chromium (skipped where no Chromium is installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from taskreg.registry.report import _table, find_chromium, screenshot
from taskreg.selection.plots import plot_distance_matrix


@pytest.mark.skipif(find_chromium() is None, reason="Debian's chromium package is not installed")
def test_report_page_renders_with_its_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    d = rng.random((5, 5))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    plot_distance_matrix(d, [f"t{i}" for i in range(5)], tmp_path / "m.png", groups=["a", "a", "b", "b", "b"])
    page = tmp_path / "index.html"
    page.write_text("<!doctype html><html><body style='margin:0;background:#fff'>"
                    "<h1>taskreg report</h1>" + _table(["method", "error"], [["asym", 0.1]]) +
                    "<img src='m.png' style='width:900px'></body></html>")
    png = screenshot(page, tmp_path / "shot.png")
    assert png is not None
    from PIL import Image

    img = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    assert img.shape[0] > 500 and img.shape[1] > 500
    # the heatmap was loaded from disk and drawn: a large share of the page is not white
    assert (img < 200).mean() > 0.05
