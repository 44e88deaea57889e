"""Task2Vec distances (Achille et al. 2019, Sect. 3.3) and the cosine distance of the domain baseline.

Symmetric distance::

    d_sym(a, b) = d_cos(a / (a + b), b / (a + b))        (element-wise division)

Coordinates where a_i + b_i = 0 carry no information and count as equal (1/2, 1/2). Embeddings are
non-negative (Fisher values, precisions), so d_sym lies in [0, 1]; if one normalised vector is all
zero (a = 0 where b > 0 everywhere) the distance is 1.

Asymmetric score for model selection (paper: ``d_asym(t_a -> t_b) = d_sym(t_a, t_b) - alpha d_sym(t_a, t0)``
where t_a is the task transferred *from*, i.e. the source, and "complexity of the first" favours
complex sources). Here the argument order is ``d_asym(a, b, t0)`` with

    a = the query / target task,  b = the source task or expert,
    d_asym(a, b, t0) = d_sym(a, b) - alpha * d_sym(b, t0).

The complexity term is the *source's* distance from the trivial embedding t0: a term on the query
would be the same for every candidate and could never change a ranking. Smaller is better; the
score may be negative.
"""

from __future__ import annotations

import numpy as np

from taskreg.errors import TaskregError

__all__ = ["cosine_distance", "d_asym", "d_asym_many", "d_sym", "d_sym_many", "pairwise_sym"]

_TINY = 1e-30


def _vec(a: np.ndarray, name: str, *, nonneg: bool = True) -> np.ndarray:
    v = np.asarray(a, dtype=np.float64)
    if v.ndim != 1 or v.shape[0] == 0:
        raise TaskregError(f"{name} must be a non-empty 1-D embedding, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise TaskregError(f"{name} contains NaN or infinite values")
    if nonneg and (v < 0).any():
        raise TaskregError(f"{name} has negative entries; Task2Vec embeddings are non-negative")
    return v


def _mat(b: np.ndarray, name: str, dim: int, *, nonneg: bool = True) -> np.ndarray:
    m = np.asarray(b, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] != dim:
        raise TaskregError(f"{name} must have shape (M, {dim}), got {m.shape}")
    if not np.isfinite(m).all():
        raise TaskregError(f"{name} contains NaN or infinite values")
    if nonneg and (m < 0).any():
        raise TaskregError(f"{name} has negative entries; Task2Vec embeddings are non-negative")
    return m


def _d_sym_rows(a: np.ndarray, bm: np.ndarray) -> np.ndarray:
    """a : (D,), bm : (M, D), both validated -> (M,) d_sym."""
    s = a[None, :] + bm
    zero = s <= 0
    safe = np.where(zero, 1.0, s)
    u = np.where(zero, 0.5, a[None, :] / safe)
    v = np.where(zero, 0.5, bm / safe)
    nu = np.linalg.norm(u, axis=1)
    nv = np.linalg.norm(v, axis=1)
    denom = nu * nv
    cos = np.where(denom > _TINY, (u * v).sum(1) / np.maximum(denom, _TINY), 0.0)
    return np.clip(1.0 - cos, 0.0, 1.0)


def d_sym(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Task2Vec distance in [0, 1]. a, b : (D,) non-negative embeddings."""
    av = _vec(a, "a")
    bv = _vec(b, "b")
    if av.shape != bv.shape:
        raise TaskregError(f"embeddings differ in length: a has {av.shape[0]}, b has {bv.shape[0]}")
    return float(_d_sym_rows(av, bv[None, :])[0])


def d_sym_many(a: np.ndarray, bm: np.ndarray) -> np.ndarray:
    """d_sym of one embedding a (D,) against each row of bm (M, D) -> (M,)."""
    av = _vec(a, "a")
    return _d_sym_rows(av, _mat(bm, "B", av.shape[0]))


def d_asym(a: np.ndarray, b: np.ndarray, t0: np.ndarray, alpha: float = 0.15) -> float:
    """Asymmetric score of transferring from source b to query task a: d_sym(a, b) - alpha d_sym(b, t0).

    a : (D,) query / target task, b : (D,) source task or expert, t0 : (D,) trivial embedding.
    Smaller is better; may be negative.
    """
    return float(d_asym_many(a, np.asarray(b, dtype=np.float64)[None, :], t0, alpha)[0])


def d_asym_many(a: np.ndarray, bm: np.ndarray, t0: np.ndarray, alpha: float = 0.15) -> np.ndarray:
    """d_asym of query a (D,) against each source row of bm (M, D), trivial embedding t0 (D,) -> (M,)."""
    if not np.isfinite(alpha):
        raise TaskregError(f"alpha must be a finite number, got {alpha}")
    av = _vec(a, "a")
    tv = _vec(t0, "t0")
    if tv.shape != av.shape:
        raise TaskregError(f"t0 has length {tv.shape[0]}, the embeddings have {av.shape[0]}")
    bmat = _mat(bm, "B", av.shape[0])
    return _d_sym_rows(av, bmat) - float(alpha) * _d_sym_rows(tv, bmat)


def pairwise_sym(am: np.ndarray) -> np.ndarray:
    """(N, N) matrix of d_sym between the rows of am (N, D); exactly symmetric, zero diagonal."""
    m = np.asarray(am, dtype=np.float64)
    if m.ndim != 2:
        raise TaskregError(f"A must have shape (N, D), got {m.shape}")
    m = _mat(m, "A", m.shape[1])
    n = m.shape[0]
    out = np.zeros((n, n), dtype=np.float64)
    for i in range(n - 1):
        out[i, i + 1 :] = _d_sym_rows(m[i], m[i + 1 :])
    return out + out.T


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """1 - cos(a, b) in [0, 2], for the domain-embedding baseline (values may be negative).

    a : (D,); b : (D,) -> float, or (M, D) -> (M,). A zero vector is at distance 1 from anything.
    """
    av = _vec(a, "a", nonneg=False)
    bm = np.asarray(b, dtype=np.float64)
    single = bm.ndim == 1
    bm = _mat(bm[None, :] if single else bm, "b", av.shape[0], nonneg=False)
    denom = np.linalg.norm(av) * np.linalg.norm(bm, axis=1)
    cos = np.where(denom > _TINY, bm @ av / np.maximum(denom, _TINY), 0.0)
    out = np.clip(1.0 - cos, 0.0, 2.0)
    return float(out[0]) if single else out
