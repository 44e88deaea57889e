"""End-to-end Taskonomy steps I-II on the tiny built-in dictionary, beam search and job keys."""

from __future__ import annotations

import pickle
from itertools import combinations
from math import comb
from pathlib import Path

import numpy as np
import pytest

from taskreg.errors import TaskregError
from taskreg.trainers import transfer as T
from taskreg.trainers.taskonomy_dictionary import RANDOM_TASK, Dictionary, DictionaryRef

FAST = {"epochs": 2, "batch_size": 16}
REF = DictionaryRef(tiny=True)


@pytest.fixture(scope="module")
def tiny() -> Dictionary:
    return REF.load()


@pytest.fixture(scope="module")
def networks(tiny: Dictionary) -> dict[str, T.TaskNetwork]:
    return {t: T.train_task_network(tiny, t, epochs=1, batch_size=16) for t in ("edges2d", "photo", "denoising")}


def test_task_networks(tiny: Dictionary, networks: dict[str, T.TaskNetwork]) -> None:
    n_test = len(tiny.test_idx)
    calls: list[tuple[int, int]] = []
    orient = T.train_task_network(
        tiny, "orientation", epochs=2, batch_size=16, progress=lambda a, b: calls.append((a, b))
    )
    assert calls == [(1, 2), (2, 2)]
    for name, net in {**networks, "orientation": orient}.items():
        assert net.per_image_loss.shape == (n_test,) and net.per_image_loss.dtype == np.float32
        assert np.isfinite(net.per_image_loss).all() and net.mean_loss == pytest.approx(net.per_image_loss.mean())
        res = net.as_result()
        assert (res.kind, res.sources, res.target, res.train_size) == ("self", (name,), name, len(tiny.train_idx))
    with pytest.raises(TaskregError, match="random projection"):
        T.train_task_network(tiny, RANDOM_TASK)
    with pytest.raises(TaskregError, match="unknown task"):
        T.train_task_network(tiny, "depth")


def test_encode_and_first_and_second_order(tiny: Dictionary, networks: dict[str, T.TaskNetwork]) -> None:
    n_test, rows = len(tiny.test_idx), T.feature_indices(tiny)
    full = T.encode(networks["edges2d"].encoder, tiny.images)
    assert full.shape == (tiny.n_images, 16, 4, 4) and full.dtype == np.float32
    compact = T.encode_for_transfers(networks["edges2d"].encoder, tiny, "image")
    assert compact.shape == (len(rows), 16, 4, 4)
    np.testing.assert_allclose(compact, full[rows], atol=1e-5)
    # first order, from full-N or compact features: the same training data, the same result
    r_full = T.train_transfer([full], tiny, "keypoints2d", sources=["edges2d"], **FAST)
    r_compact = T.train_transfer([compact], tiny, "keypoints2d", sources=["edges2d"], **FAST)
    np.testing.assert_allclose(r_full.per_image_loss, r_compact.per_image_loss, rtol=1e-4, atol=1e-6)
    assert r_full.per_image_loss.shape == (n_test,) and np.isfinite(r_full.per_image_loss).all()
    assert (r_full.order, r_full.kind, r_full.train_size) == (1, "transfer", len(T.transfer_train_indices(tiny)))
    assert r_full.train_size == int(np.ceil(len(tiny.train_idx) / 8))
    # second order to a classification target, with the random projection as one source
    rnd = T.encode_for_transfers(T.source_encoder(tiny, RANDOM_TASK, networks), tiny, "image")
    photo = T.encode_for_transfers(networks["photo"].encoder, tiny, "image")
    r2 = T.train_transfer([photo, rnd], tiny, "category", sources=["photo", RANDOM_TASK], **FAST)
    assert r2.order == 2 and r2.sources == ("photo", RANDOM_TASK)
    assert r2.per_image_loss.shape == (n_test,) and np.isfinite(r2.per_image_loss).all()
    # the target's input is what sources see: denoising features come from the noisy images
    noisy = T.encode_for_transfers(networks["denoising"].encoder, tiny, tiny.task("denoising").input_key)
    r3 = T.train_transfer([noisy], tiny, "denoising", sources=["denoising"], **FAST)
    assert np.isfinite(r3.mean_loss)
    # scratch baseline on the same little data
    sc = T.train_scratch(tiny, "keypoints2d", **FAST)
    assert (sc.order, sc.sources, sc.kind, sc.train_size) == (0, (), "scratch", r_full.train_size)
    assert sc.per_image_loss.shape == (n_test,) and np.isfinite(sc.per_image_loss).all()
    # determinism
    again = T.train_transfer([full], tiny, "keypoints2d", sources=["edges2d"], **FAST)
    np.testing.assert_array_equal(again.per_image_loss, r_full.per_image_loss)


def test_transfer_validation(tiny: Dictionary, networks: dict[str, T.TaskNetwork]) -> None:
    feats = T.encode(networks["edges2d"].encoder, tiny.images)
    with pytest.raises(TaskregError, match="source-only"):
        T.train_transfer([feats], tiny, "jigsaw")
    with pytest.raises(TaskregError, match="rows"):
        T.train_transfer([feats[:7]], tiny, "edges2d")
    with pytest.raises(TaskregError, match="at least one"):
        T.train_transfer([], tiny, "edges2d")
    with pytest.raises(TaskregError, match="train_fraction"):
        T.train_transfer([feats], tiny, "edges2d", train_fraction=0.0)
    with pytest.raises(TaskregError, match="epochs"):
        T.train_scratch(tiny, "edges2d", epochs=0)


def test_win_rate() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([2.0, 2.0, 1.0, 5.0])
    assert T.win_rate(a, b) == pytest.approx((2 + 0.5) / 4)
    assert T.win_rate(a, b) + T.win_rate(b, a) == pytest.approx(1.0)
    with pytest.raises(TaskregError):
        T.win_rate(a, b[:3])


def test_beam_candidates() -> None:
    losses = {"a": 0.5, "b": 0.1, "c": 0.3, "d": 0.2, "e": 0.4, "f": 0.9, "g": 0.6}
    top5 = ["b", "d", "c", "e", "a"]
    cands = T.beam_candidates(losses, beam=5, max_order=3)
    expected = {tuple(sorted(c)) for k in (2, 3) for c in combinations(top5, k)}
    assert len(cands) == comb(5, 2) + comb(5, 3) == 20
    assert set(cands) == expected and len(set(cands)) == len(cands)
    assert all(list(c) == sorted(c) for c in cands)
    assert [len(c) for c in cands] == [2] * 10 + [3] * 10
    assert cands[0] == ("b", "d")  # the two best first
    # win rates: higher is better -> the worst losses become the best scores
    flipped = T.beam_candidates({k: -v for k, v in losses.items()}, beam=5, max_order=2, higher_is_better=True)
    assert set(flipped) == {tuple(sorted(c)) for c in combinations(top5, 2)}
    # k > beam: a beam of size 1, the top-k sources
    wide = T.beam_candidates(losses, beam=2, max_order=4)
    assert wide == [("b", "d"), ("b", "c", "d"), ("b", "c", "d", "e")]
    assert T.beam_candidates(losses, max_order=1) == []
    assert T.beam_candidates({"a": 1.0}, max_order=3) == []
    with pytest.raises(TaskregError):
        T.beam_candidates(losses, beam=0)
    with pytest.raises(TaskregError, match="not finite"):
        T.beam_candidates({"a": float("nan"), "b": 1.0})


def test_job_keys_are_stable() -> None:
    job = T.TransferJob(("photo", "edges2d"), "category", feature_paths=("/p.npy", "/e.npy"))
    assert job.sources == ("edges2d", "photo") and job.feature_paths == ("/e.npy", "/p.npy")
    assert job.key == "transfer:edges2d+photo->category|f=0.125,e=30,b=32,lr=0.002,s=0"
    same = T.TransferJob(("edges2d", "photo"), "category", feature_paths=("/x.npy", "/y.npy"))
    assert same.key == job.key and same == job
    assert pickle.loads(pickle.dumps(job)).key == job.key
    assert T.TransferJob(("photo",), "category").key != job.key
    assert T.TransferJob(("edges2d", "photo"), "category", epochs=5).key != job.key
    assert T.TransferJob(("edges2d", "photo"), "category", tag="abc").key.endswith(",t=abc")
    selfjob = T.TransferJob((), "photo", "self", epochs=8)
    assert selfjob.sources == ("photo",) and selfjob.key.startswith("self:photo->photo|f=1,e=8")
    assert T.TransferJob(("x",), "photo", "scratch").sources == ()
    with pytest.raises(TaskregError):
        T.TransferJob(("a",), "b", "finetune")
    with pytest.raises(TaskregError, match="repeats"):
        T.TransferJob(("a", "a"), "b")
    with pytest.raises(TaskregError, match="no sources"):
        T.TransferJob((), "b")


def test_plans_and_run_job(tiny: Dictionary, networks: dict[str, T.TaskNetwork], tmp_path: Path) -> None:
    def path(source: str, key: str) -> str:
        return str(tmp_path / f"{source}__{key}.npy")

    n_sources, n_targets = len(tiny.source_names), len(tiny.target_names)
    selfs = T.plan_self(tiny, ref=REF)
    assert {j.target for j in selfs} == set(tiny.tasks) - {RANDOM_TASK}
    first = T.plan_first_order(tiny, path, ref=REF, **FAST)
    assert len(first) == n_targets * (n_sources - 1) + n_targets
    assert len({j.key for j in first}) == len(first)
    assert all(j.target not in j.sources for j in first)
    # run one job through files, as a worker would
    job = next(j for j in first if j.sources == ("edges2d",) and j.target == "keypoints2d")
    np.save(job.feature_paths[0], T.encode_for_transfers(networks["edges2d"].encoder, tiny, "image"))
    via_job = T.run_job(job)
    direct = T.train_transfer(
        [np.load(job.feature_paths[0])], tiny, "keypoints2d", sources=["edges2d"], **FAST
    )
    np.testing.assert_array_equal(via_job.per_image_loss, direct.per_image_loss)
    # higher order from first-order results
    fake = [
        T.TransferResult((s,), t, 1, np.zeros(1, np.float32), float(i), 0.0, 1)
        for t in tiny.target_names
        for i, s in enumerate(s for s in tiny.source_names if s != t)
    ]
    higher = T.plan_higher_order(tiny, fake, path, beam=5, max_order=3, ref=REF)
    assert len(higher) == n_targets * (comb(5, 2) + comb(5, 3))
    assert all(len(j.feature_paths) == j.order for j in higher)
    with pytest.raises(TaskregError, match="feature cache"):
        T.run_job(T.TransferJob(("edges2d",), "keypoints2d", feature_paths=(path("none", "x"),), dictionary=REF))
