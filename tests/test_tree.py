from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from taskreg.errors import TaskregError
from taskreg.selection.affinity_sets import AffinitySet, Transfer, builtin_affinity
from taskreg.selection.tree import plot_tree, similarity_tree, transfer_out_features

THREE_D = {"curvature", "edge3d", "keypoint3d", "reshade", "rgb2depth", "rgb2mist", "rgb2sfnorm", "segment25d"}


def _two_family_set(seed: int = 0) -> AffinitySet:
    """Sources g0..g2 transfer well to targets x*, sources h0..h2 to targets y*: two clear families."""
    rng = np.random.default_rng(seed)
    fam_g, fam_h = ["g0", "g1", "g2"], ["h0", "h1", "h2"]
    transfers = []
    for t in ["x0", "x1", "x2", "y0", "y1", "y2"]:
        good = fam_g if t.startswith("x") else fam_h
        vals = {s: (1.0 if s in good else 0.1) * rng.uniform(0.8, 1.2) for s in fam_g + fam_h}
        total = sum(vals.values()) + 1.0
        transfers.append(Transfer(("self",), t, 1, 1.0 / total))
        transfers += [Transfer((s,), t, 1, v / total) for s, v in vals.items()]
    return AffinitySet("fam", transfers, source_only=tuple(fam_g + fam_h))


def test_two_families_are_recovered() -> None:
    tree = similarity_tree(_two_family_set())
    assert tree.linkage.shape == (5, 4)
    c = tree.clusters(2)
    assert len({c[s] for s in ["g0", "g1", "g2"]}) == 1
    assert len({c[s] for s in ["h0", "h1", "h2"]}) == 1
    assert c["g0"] != c["h0"]
    for metric in ("cosine", "euclidean"):
        c2 = similarity_tree(_two_family_set(), metric=metric).clusters(2)
        assert c2["g1"] == c2["g2"] != c2["h0"]


def test_features_are_column_normalised() -> None:
    aff = builtin_affinity("taskonomy")
    labels, X = transfer_out_features(aff)
    assert len(labels) == 26 and X.shape == (26, 22)
    np.testing.assert_allclose(X.sum(axis=0), np.ones(22))
    targets = aff.targets
    for j, t in enumerate(targets):
        assert X[labels.index(t), j] == 0.0  # own encoder -> itself is excluded


def test_taskonomy_3d_tasks_cluster_together() -> None:
    tree = similarity_tree(builtin_affinity("taskonomy"))
    assert len(tree.labels) == 26
    assert np.all(np.isfinite(tree.linkage))
    c = tree.clusters(4)
    three_d = {c[t] for t in THREE_D}
    assert len(three_d) == 1
    members = {t for t, k in c.items() if k in three_d}
    assert members == THREE_D  # exactly the paper's 3D group, no 2D or semantic task in it
    order = tree.leaf_order()
    pos = sorted(order.index(t) for t in THREE_D)
    assert pos[-1] - pos[0] == len(THREE_D) - 1  # adjacent in the dendrogram


def test_errors_and_plot(tmp_path) -> None:
    aff = builtin_affinity("taskonomy-16k")
    with pytest.raises(TaskregError, match="metric"):
        similarity_tree(aff, metric="manhattan")
    with pytest.raises(TaskregError, match="method"):
        similarity_tree(aff, method="ward2")
    with pytest.raises(TaskregError, match="did you mean"):
        similarity_tree(aff, sources=["rgb2depth", "rgb2mst"])
    with pytest.raises(TaskregError, match="at least 2"):
        similarity_tree(aff, sources=["rgb2depth"])
    tree = similarity_tree(aff)
    with pytest.raises(TaskregError, match="k must be"):
        tree.clusters(0)
    path = tmp_path / "tree.png"
    plot_tree(tree, str(path))
    with Image.open(path) as im:
        assert im.size[1] > 300


def test_constant_columns_do_not_produce_nan() -> None:
    aff = AffinitySet("flat", [
        Transfer(("a",), "t", 1, 0.5), Transfer(("b",), "t", 1, 0.5),
        Transfer(("a",), "u", 1, 0.5), Transfer(("b",), "u", 1, 0.5),
        Transfer(("c",), "t", 1, 0.0),
    ], source_only=("a", "b", "c"))
    tree = similarity_tree(aff)
    assert np.all(np.isfinite(tree.linkage))
