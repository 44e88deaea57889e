"""The demo's offline HTML report: PNG figures and tables, readable in any browser without a network."""

from __future__ import annotations

import html
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from taskreg.registry import Registry
    from taskreg.registry.demo import DemoResult
    from taskreg.selection.plots import FrontierPoint

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
img{max-width:100%;border:1px solid #eee;margin:.5em 0} table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left} th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums} .best{background:#e6f4ea;font-weight:600}
.note{color:#555;font-size:.92em} code{background:#f4f4f4;padding:0 .25em}
"""


def write_report(reg: Registry, demo: DemoResult, affinity: str, log: Callable[[str], None]) -> Path:
    """Write ``<root>/report/index.html`` plus PNGs; returns the HTML path."""
    from taskreg.selection.plots import embedding_map, plot_distance_matrix, plot_embedding_map, plot_frontier
    from taskreg.selection.taxonomy_plots import plot_affinity_matrices, plot_policy
    from taskreg.selection.tree import plot_tree, similarity_tree

    out = reg.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    names, dist, domains = reg.distance_matrix()
    plot_distance_matrix(dist, names, out / "task_distances.png", groups=domains,
                         title="Task2Vec d_sym between registered tasks")
    _, vecs = reg.task_vectors("default", "montecarlo", names)
    plot_embedding_map(embedding_map(vecs), names, domains, out / "task_map.png",
                       title="Task2Vec embeddings (t-SNE), coloured by domain")
    aff = reg.affinity(affinity)
    targets, sources, rows = aff.first_order_matrix()
    raw = reg.first_order_winrates(affinity, targets, sources)
    plot_affinity_matrices(raw, np.where(np.asarray(rows) > 0, rows, np.nan), sources, targets,
                           str(out / "affinities.png"), raw_label="first-order win rate vs scratch (before AHP)")
    plot_tree(similarity_tree(aff), str(out / "tree.png"), title=f"task similarity tree ({affinity})")
    for item in demo.policies:
        plot_policy(item["policy"], str(out / f"policy_budget{item['budget']}.png"),
                    title=f"{affinity}: budget {item['budget']}")
    if demo.selections:
        plot_frontier(frontier_points(demo.selections), out / "frontier.png",
                      title=f"cost and accuracy of every selection method on the demo's {len(demo.selections)} "
                            "held-out queries (no intervals: see benchmarks/RESULTS.md for 100 tasks)")

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>taskreg demo report</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>taskreg demo report</h1>",
             f"<p class='note'>Registry <code>{html.escape(str(reg.root))}</code>, built from built-in data only: "
             f"{html.escape(demo.plan)}. "
             f"Stage times (s): {html.escape(', '.join(f'{k} {v:.1f}' for k, v in demo.seconds.items()))}.</p>"]
    counts = reg.check().counts
    parts.append(_table(["probes", "tasks", "experts", "expert × task results", "transfers", "policies"],
                        [[counts["probes"], counts["tasks"], counts["experts"], counts["expert_task_results"],
                          counts["transfers"], counts["policies"]]]))
    parts += ["<h2>1. The task space</h2>",
              "<p>Each labelled dataset is embedded as the per-filter Fisher information of the probe network "
              "(Task2Vec, Monte Carlo estimator). Tasks from the same domain cluster together.</p>",
              "<img src='task_map.png' alt='task embedding map'>",
              "<img src='task_distances.png' alt='task distance heatmap with dendrogram'>",
              "<h2>2. Which feature extractor for a new dataset?</h2>",
              "<p>Three held-out datasets (never registered). Every expert was also measured on each one with the "
              "fixed linear-probe protocol, so each method's choice can be compared with the oracle.</p>"]
    parts += [_selection_section(s) for s in demo.selections]
    parts.append(_selection_summary(demo.selections))
    if demo.selections:
        parts += ["<p>Cost against accuracy: seconds per query (log) of each method, and how far the mean error of "
                  "its choice is above the oracle's. The methods at the lower left are the ones to use.</p>",
                  "<img src='frontier.png' alt='cost-accuracy frontier of the selection methods'>"]
    parts += ["<h2>3. Which tasks to label? (Taskonomy)</h2>",
              f"<p>The built-in dictionary: {len(aff.targets)} targets computed from bundled photographs. "
              "Left: first-order win rates against a network trained from scratch on the same little data; "
              "right: the AHP-normalised affinities.</p>",
              "<img src='affinities.png' alt='affinity matrix before and after AHP'>",
              "<img src='tree.png' alt='task similarity tree'>"]
    for item in demo.policies:
        pol = item["policy"]
        parts.append(f"<h3>Budget {item['budget']}: supervise {html.escape(', '.join(pol.supervised))}</h3>")
        parts.append(f"<img src='policy_budget{item['budget']}.png' alt='taxonomy at budget {item['budget']}'>")
        parts.append(_table(["target", "from", "affinity p"],
                            [[t.target, " + ".join(t.sources), f"{t.value:.3f}"] for t in pol.transfers]))
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts))
    shot = screenshot(path, out / "screenshot.png")
    log(f"report: {path}" + (f" (screenshot checked: {shot})" if shot else " (no headless chromium for a screenshot)"))
    return path


def _table(header: list[str], rows: list[list[Any]], best_col: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for v in row:
            cls = " class='num'" if isinstance(v, int | float) or _is_number(v) else ""
            cells.append(f"<td{cls}>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _is_number(v: Any) -> bool:
    try:
        float(str(v))
        return True
    except ValueError:
        return False


def _selection_section(s: dict[str, Any]) -> str:
    truth = s["truth"]
    rows = []
    for method, r in s["rankings"].items():
        rows.append([method, r["chosen"], f"{r['error']:.3f}", f"{(r['error'] - truth[s['oracle']]):+.3f}",
                     f"{r['seconds']:.2f}", r["cost"]])
    measured = _table(["expert", "measured test error"], [[k, f"{v:.3f}"] for k, v in sorted(truth.items(),
                                                                                              key=lambda kv: kv[1])])
    verified = s["rankings"]["model2vec"]["verified"]
    return (f"<h3>{html.escape(s['label'])}</h3><p class='note'><code>{html.escape(s['source'])}</code> — "
            f"{s['n']} images, {s['classes']} classes. Oracle: <b>{html.escape(s['oracle'])}</b>; "
            f"Model2Vec top-3 verified by linear probes: <b>{html.escape(str(verified))}</b>.</p>"
            + _table(["method", "chosen expert", "its error", "vs oracle", "seconds", "cost"], rows) + measured)


def _selection_summary(selections: list[dict[str, Any]]) -> str:
    if not selections:
        return ""
    methods = list(selections[0]["rankings"])
    rows = []
    for m in methods:
        regret = [s["rankings"][m]["error"] - s["truth"][s["oracle"]] for s in selections]
        hits = sum(s["rankings"][m]["chosen"] == s["oracle"] for s in selections)
        rows.append([m, f"{np.mean(regret):.3f}", f"{hits}/{len(selections)}"])
    return ("<h3>Summary over the three queries</h3>" +
            _table(["method", "mean error above oracle", "picked the oracle"], rows) +
            "<p class='note'>The full benchmark over 60+ tasks is in <code>benchmarks/RESULTS.md</code>.</p>")


def frontier_points(selections: list[dict[str, Any]]) -> list[FrontierPoint]:
    """Each method's mean seconds per query and ratio of means (mean chosen error / mean oracle error - 1) over
    the demo's queries, for :func:`taskreg.selection.plots.plot_frontier`."""
    from taskreg.selection.plots import FrontierPoint

    oracle = float(np.mean([s["truth"][s["oracle"]] for s in selections]))
    points = []
    for method in selections[0]["rankings"]:
        chosen = float(np.mean([s["rankings"][method]["error"] for s in selections]))
        seconds = float(np.mean([s["rankings"][method]["seconds"] for s in selections]))
        regret = chosen / oracle - 1 if oracle > 0 else chosen - oracle  # a perfect oracle: the error itself
        points.append(FrontierPoint(method, seconds, regret))
    return points


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(page: Path, png: Path, *, timeout: float = 90.0) -> Path | None:
    """Render ``page`` in headless Chromium and save a PNG; None when Chromium is not installed."""
    browser = find_chromium()
    if browser is None:
        return None
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1200,2400",
               f"--screenshot={png}", page.resolve().as_uri()]
        subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    return png if png.exists() and png.stat().st_size > 0 else None
