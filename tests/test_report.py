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


def test_the_demo_frontier_is_each_methods_ratio_of_means_and_mean_seconds(tmp_path: Path) -> None:
    """Issue 15: the demo report draws every method's cost against its accuracy over the held-out queries."""
    from taskreg.errors import TaskregError
    from taskreg.registry.report import frontier_points
    from taskreg.selection.plots import FrontierPoint, plot_frontier

    def query(errors: dict[str, float], chosen: dict[str, str], seconds: dict[str, float]) -> dict:
        return {"truth": errors, "oracle": min(errors, key=errors.__getitem__),
                "rankings": {m: {"chosen": e, "error": errors[e], "seconds": seconds[m]} for m, e in chosen.items()}}

    selections = [query({"a": 0.10, "b": 0.30}, {"asym": "a", "logme": "b", "prior": "b"},
                        {"asym": 1.0, "logme": 5.0, "prior": 0.0}),
                  query({"a": 0.40, "b": 0.20}, {"asym": "a", "logme": "b", "prior": "b"},
                        {"asym": 3.0, "logme": 7.0, "prior": 0.0})]
    points = {p.method: p for p in frontier_points(selections)}
    oracle = (0.10 + 0.20) / 2
    assert points["asym"] == FrontierPoint("asym", 2.0, pytest.approx((0.10 + 0.40) / 2 / oracle - 1))
    assert points["logme"].seconds == 6.0 and points["logme"].regret == pytest.approx(0.25 / oracle - 1)
    assert points["prior"].seconds == 0.0
    png = plot_frontier(list(points.values()), tmp_path / "f.png", title="t")
    from PIL import Image

    assert Image.open(png).size == (1320, 780)  # 11 x 6.5 inches at 120 dpi
    for bad in ([], [FrontierPoint("x", float("nan"), 0.1)], [FrontierPoint("x", 1.0, float("inf"))],
                [FrontierPoint("x", -1.0, 0.1)]):
        with pytest.raises(TaskregError, match="plot_frontier"):
            plot_frontier(bad, tmp_path / "g.png", title="t")
    assert not (tmp_path / "g.png").exists()
