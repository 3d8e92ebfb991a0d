"""Truncated SVD of weight differences, and the rules that choose a rank.

Two algorithms, both working on float32 batches ``A`` of shape ``(B, m, n)``:

* :func:`randomized_svd`: randomized subspace iteration (Halko, Martinsson & Tropp, SIAM
  Review 53(2), 2011, Algorithms 4.4 and 5.1): a Gaussian test matrix of ``l = k + p``
  columns (``p`` = oversampling), ``niter`` power iterations with a re-orthonormalisation
  after every product, then the SVD of the small ``l x n`` matrix ``Q^T A``; both small
  factorisations go through ``l x l`` Gram matrices in float64 (matrix products and a tiny
  eigendecomposition), so nearly all the time is in the large matrix products. Cost about
  ``(4 + 4 niter) m n l`` flops, against ``O(m n min(m, n))`` for a full SVD. Each matrix of the
  batch has its own generator, seeded by the caller (per layer key), so runs reproduce.
* :func:`exact_svd`: ``torch.linalg.svd(full_matrices=False)`` (LAPACK gesdd on the CPU).

Both return the top singular values and vectors plus ``energy`` = ``||A||_F^2`` per matrix,
so the relative Frobenius error of a rank-r truncation is
``sqrt(max(0, 1 - sum_{i<=r} s_i^2 / ||A||_F^2))`` (Eckart-Young-Mirsky: for the exact
SVD this is the optimum; the randomized one comes within about 1% of it with niter=2).
That formula is only as good as ``||A||_F^2``: a float32 reduction over a 3072 x 12288
matrix loses about 0.5 % of it, which is a third of the truth at a 5 % error. So energies
are summed in float64 over float32 row norms (:func:`squared_norms`, right to ~1e-7), the
formula serves only to choose a rank, and the error a caller reports is measured on the
stored factors themselves (:func:`residual_squared_norm`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class Factors:
    """Truncated SVD of a batch: ``U`` (B, m, l), ``S`` (B, l) descending, ``Vh`` (B, l, n),
    all float32, and ``energy`` (B,) = squared Frobenius norms of the inputs (float64)."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor
    energy: torch.Tensor


@contextmanager
def _one_thread():
    """Run the enclosed small steps on this thread alone (thread-local in torch's OpenMP).

    An l x l eigendecomposition or a rows x l x l product takes a millisecond; split over
    OpenMP workers it waits for each of them to be scheduled, and on a machine whose cores are
    busy (the extraction's reader thread takes one) that wait made these steps 4x slower.
    """
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _orth(y: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of the columns of each ``y`` (B, rows, l), float32.

    Built from the l x l Gram matrix (its eigendecomposition in float64), twice, as
    CholeskyQR2 is, not by Householder QR: LAPACK's QR of a tall, thin matrix is
    panel-by-panel BLAS-2 work that took 50-1000 ms per 12288 x 40 block on a busy 2-core
    machine, against ~1 ms for the two float32 matrix products here. The first pass leaves
    columns nearly orthonormal, the second makes them so to float32 precision. ``y`` is
    always a product with an orthonormal (or Gaussian) block, so its condition number is
    that of one power of the spectrum; directions whose eigenvalue is below 1e-12 of the
    largest (an exactly rank-deficient ``y``) become zero columns instead of noise.
    """
    with _one_thread():
        for _ in range(2):
            lam, v = torch.linalg.eigh((y.transpose(-1, -2) @ y).double())
            floor = lam[..., -1:].clamp_min(1e-300) * 1e-12
            scale = torch.where(lam > floor, lam.clamp_min(1e-300).rsqrt(), torch.zeros_like(lam))
            y = y @ (v * scale[..., None, :]).to(y.dtype)
    return y


def _small_svd(small: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of each wide ``small`` (B, l, n), l << n, through the l x l matrix ``small small^T``
    in float64: ``ub`` (B, l, l), ``s`` (B, l) descending, ``vh`` (B, l, n), float32.

    ``s_i = ||small^T u_i||`` and ``vh_i = small^T u_i / s_i``, so ``ub diag(s) vh`` is exactly
    the projection of ``small`` onto the ``u_i``; a zero ``s_i`` gets a zero row.
    """
    with _one_thread():
        return _small_svd_body(small)


def _small_svd_body(small: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    sd = small.double()
    _, ub = torch.linalg.eigh(sd @ sd.transpose(-1, -2))
    ub = ub.flip(-1)  # descending
    v = ub.transpose(-1, -2) @ sd  # (B, l, n): rows u_i^T small
    s = torch.linalg.vector_norm(v, dim=-1)
    s, order = s.sort(dim=-1, descending=True)
    ub = ub.gather(-1, order[..., None, :].expand_as(ub))
    v = v.gather(-2, order[..., None].expand_as(v))
    vh = v / torch.where(s > 0, s, torch.ones_like(s))[..., None]
    return ub.to(small.dtype), s.to(small.dtype), vh.to(small.dtype)


def randomized_svd(a: torch.Tensor, k: int, oversample: int, niter: int,
                   generators: list[torch.Generator], energy: torch.Tensor | None = None) -> Factors:
    """Top-``min(k + oversample, m, n)`` SVD of every matrix of ``a`` (B, m, n), float32.

    ``generators``: one CPU ``torch.Generator`` per matrix (seeded by the caller);
    ``energy``: the (B,) float64 squared norms when the caller has them already. Raises
    ``ValueError`` for a non-float32 or non-3-D input or a generator count that differs from B.
    """
    if a.dtype != torch.float32 or a.ndim != 3:
        raise ValueError(f"randomized_svd needs a float32 (B, m, n) batch, got {a.dtype} {tuple(a.shape)}")
    b, m, n = a.shape
    if len(generators) != b:
        raise ValueError(f"{len(generators)} generators for a batch of {b}")
    transposed = m < n  # work on the tall orientation: the basis has the smaller side
    if transposed:
        a = a.transpose(1, 2)
        m, n = n, m
    cols = min(k + oversample, n)
    omega = torch.stack([torch.randn(n, cols, generator=g) for g in generators]).to(a.device)
    q = _orth(a @ omega)
    for _ in range(niter):
        z = _orth(a.transpose(1, 2) @ q)
        q = _orth(a @ z)
    small = q.transpose(1, 2) @ a  # (B, l, n)
    ub, s, vh = _small_svd(small)
    u = q @ ub
    energy = squared_norms(a) if energy is None else energy
    if transposed:
        u, vh = vh.transpose(1, 2), u.transpose(1, 2)
    return Factors(u, s, vh, energy)


def exact_svd(a: torch.Tensor, energy: torch.Tensor | None = None) -> Factors:
    """Economical SVD of every matrix of ``a`` (B, m, n), float32 (never full_matrices)."""
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    return Factors(u, s, vh, squared_norms(a) if energy is None else energy)


def squared_norms(a: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius norm of each matrix of ``a`` (B, m, n) as a (B,) float64 tensor.

    Row norms in float32 (a row is at most a few 10^4 values: relative error ~1e-7), summed
    in float64; no float64 copy of the batch. A float32 reduction over the whole matrix
    instead loses ~0.5 % at 3072 x 12288.
    """
    return torch.linalg.vector_norm(a, dim=2).double().square().sum(dim=1)


def residual_squared_norm(a: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                          chunk_values: int = 2**22) -> float:
    """``||a - up @ down||_F^2`` in float64, measured, not derived from singular values.

    ``a`` (m, n), ``up`` (m, r), ``down`` (r, n), all float32 on one device: pass the factors
    as they are stored (after rounding to fp16/bf16) and this is the error of the file. Rows
    are taken ``chunk_values // n`` at a time, so the extra memory is one chunk; each chunk's
    row norms are float32, their squares are summed in float64. Costs ``2 m n r`` flops.
    """
    m, n = a.shape
    rows = max(1, chunk_values // max(n, 1))
    total = 0.0
    for i in range(0, m, rows):
        r = torch.addmm(a[i:i + rows], up[i:i + rows], down, alpha=-1)
        total += float(torch.linalg.vector_norm(r, dim=1).double().square().sum())
    return total


def relative_errors(s: torch.Tensor, energy: float) -> list[float]:
    """Relative Frobenius error after keeping the first r values, for r = 0..len(s)."""
    kept = torch.cumsum(s.double().square(), 0).tolist()
    if energy <= 0:
        return [0.0] * (len(kept) + 1)
    return [1.0] + [math.sqrt(max(0.0, 1.0 - c / energy)) for c in kept]


# ---- rank policies -----------------------------------------------------------------------

RANK_POLICIES = ("rank", "target_error", "sv_ratio", "sv_fro", "sv_cumulative")


def choose_rank(policy: str, value: float, s: torch.Tensor, energy: float, max_rank: int) -> int:
    """The rank one layer keeps, at most ``max_rank`` and at most ``len(s)``, at least 1.

    ``s``: singular values, descending; ``energy``: ``||A||_F^2``. Policies:

    * ``rank``: ``value`` (an integer).
    * ``target_error``: the smallest r whose relative Frobenius error
      ``sqrt(1 - sum_{i<=r} s_i^2 / ||A||_F^2)`` is at most ``value``; ``max_rank`` when none is.
    * ``sv_ratio``, ``sv_fro``, ``sv_cumulative``: kohya sd-scripts' ``resize_lora.py`` rules,
      exactly as it computes them (each index clamped to ``[1, len(s) - 1]``, then **+1**, so
      one more value than the criterion needs is kept; rank 1 when ``s_0 <= 1e-6``):

      - ``sv_ratio(t)``: ``count(s > s_0 / t) + 1``;
      - ``sv_cumulative(t)``: ``searchsorted(cumsum(s) / sum(s), t) + 1 + 1`` (a fraction of the
        nuclear norm);
      - ``sv_fro(t)``: ``searchsorted(cumsum(s^2) / sum(s^2), t^2) + 1 + 1`` (t is a fraction of
        the Frobenius *norm*: t = 0.9 keeps at least 81% of the energy).

    Raises ``ValueError`` for an unknown policy or a value outside its range.
    """
    n = len(s)
    cap = max(1, min(max_rank, n))
    if policy == "rank":
        if value < 1 or value != int(value):
            raise ValueError(f"rank must be a whole number of at least 1, not {value}")
        return min(int(value), cap)
    if policy == "target_error":
        if not 0 <= value < 1:
            raise ValueError(f"target_error must be in [0, 1), not {value}")
        errors = relative_errors(s[:cap], energy)
        for r in range(1, cap + 1):
            if errors[r] <= value:
                return r
        return cap
    if policy not in ("sv_ratio", "sv_fro", "sv_cumulative"):
        raise ValueError(f"unknown rank policy {policy!r}; use one of {', '.join(RANK_POLICIES)}")
    if n == 0 or float(s[0]) <= 1e-6:
        return 1
    sd = s.double()
    if policy == "sv_ratio":
        if value < 1:
            raise ValueError(f"sv_ratio must be at least 1, not {value}")
        index = int((sd > sd[0] / value).sum())
    elif policy == "sv_cumulative":
        if not 0 < value <= 1:
            raise ValueError(f"sv_cumulative must be in (0, 1], not {value}")
        index = int(torch.searchsorted(torch.cumsum(sd, 0) / sd.sum(), torch.tensor([value], dtype=sd.dtype))) + 1
    else:
        if not 0 < value <= 1:
            raise ValueError(f"sv_fro must be in (0, 1], not {value}")
        sq = sd.square()
        index = int(torch.searchsorted(torch.cumsum(sq, 0) / sq.sum(), torch.tensor([value**2], dtype=sd.dtype))) + 1
    index = max(1, min(index, n - 1))
    return min(index + 1, cap)
