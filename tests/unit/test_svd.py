"""Truncated SVD and rank policies on synthetic layers with known spectra."""

from __future__ import annotations

import math

import pytest
import torch

from lora_ops.svd import choose_rank, exact_svd, randomized_svd, relative_errors


def known_spectrum(m, n, alpha, seed):
    """A (1, m, n) float32 matrix with singular values i^-alpha, and those values."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    s = torch.arange(1, k + 1, dtype=torch.float64) ** -alpha
    return ((u * s) @ v.T).float()[None], s


def optimum(s, r):
    return math.sqrt(float((s[r:] ** 2).sum() / (s**2).sum()))


@pytest.mark.parametrize("m, n, alpha, r", [(320, 768, 1.0, 16), (640, 320, 0.5, 32), (768, 2304, 0.3, 8)])
def test_randomized_error_within_2_percent_of_the_optimum(m, n, alpha, r):
    a, s = known_spectrum(m, n, alpha, seed=m + n)
    f = randomized_svd(a, r, oversample=8, niter=2, generators=[torch.Generator().manual_seed(1)])
    got = relative_errors(f.S[0][:r], float(f.energy[0]))[r]
    # the reported error is the true error of the stored factors
    recon = (f.U[0][:, :r] * f.S[0][:r]) @ f.Vh[0][:r]
    true = float(torch.linalg.norm(a[0] - recon) / torch.linalg.norm(a[0]))
    assert got == pytest.approx(true, rel=1e-3)
    assert optimum(s, r) <= true <= 1.02 * optimum(s, r)


def test_exact_mode_is_the_optimum():
    a, s = known_spectrum(200, 300, 0.7, seed=5)
    f = exact_svd(a)
    for r in (1, 5, 50):
        assert relative_errors(f.S[0], float(f.energy[0]))[r] == pytest.approx(optimum(s, r), rel=1e-4)


def test_batches_match_single_runs_and_seeds_reproduce():
    a1, _ = known_spectrum(96, 64, 1.0, seed=1)
    a2, _ = known_spectrum(96, 64, 1.0, seed=2)
    gens = lambda: [torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]  # noqa: E731
    batch = randomized_svd(torch.cat([a1, a2]), 8, 4, 2, gens())
    again = randomized_svd(torch.cat([a1, a2]), 8, 4, 2, gens())
    single = randomized_svd(a2, 8, 4, 2, [torch.Generator().manual_seed(12)])
    assert torch.equal(batch.S, again.S)
    assert torch.allclose(batch.S[1], single.S[0], rtol=1e-5)


def test_target_error_picks_the_smallest_rank_that_meets_it():
    a, s = known_spectrum(120, 90, 0.8, seed=9)
    f = exact_svd(a)
    for target in (0.5, 0.2, 0.05):
        r = choose_rank("target_error", target, f.S[0], float(f.energy[0]), max_rank=90)
        assert optimum(s, r) <= target + 1e-6
        assert r == 1 or optimum(s, r - 1) > target
    # unreachable within the cap: the cap
    assert choose_rank("target_error", 0.0, f.S[0], float(f.energy[0]), max_rank=7) == 7


def test_kohya_policies_follow_their_definitions():
    s = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.1])
    e = float((s**2).sum())
    # sv_ratio(t): count(s > s0/t), clamped to [1, n-1], +1
    assert choose_rank("sv_ratio", 4, s, e, 99) == 2 + 1          # 10, 5 > 2.5
    assert choose_rank("sv_ratio", 1000, s, e, 99) == 5 + 1       # clamped to n-1 = 5
    # sv_fro(t): searchsorted(cumsum(s^2)/sum(s^2), t^2) + 1, clamped, +1
    frac = torch.cumsum(s**2, 0) / (s**2).sum()
    expect = min(max(int(torch.searchsorted(frac, torch.tensor([0.9**2]))) + 1, 1), 5) + 1
    assert choose_rank("sv_fro", 0.9, s, e, 99) == expect
    # sv_cumulative(t): the same on cumsum(s)/sum(s)
    cfrac = torch.cumsum(s, 0) / s.sum()
    expect = min(max(int(torch.searchsorted(cfrac, torch.tensor([0.5]))) + 1, 1), 5) + 1
    assert choose_rank("sv_cumulative", 0.5, s, e, 99) == expect
    # the cap applies to every policy, and a vanishing spectrum gives rank 1
    assert choose_rank("sv_ratio", 1000, s, e, 3) == 3
    assert choose_rank("sv_fro", 0.9, torch.zeros(4), 0.0, 8) == 1


@pytest.mark.parametrize("policy, value", [("rank", 0), ("rank", 2.5), ("target_error", 1.0), ("sv_ratio", 0.5),
                                           ("sv_fro", 0), ("nope", 1)])
def test_bad_policy_values_are_refused(policy, value):
    with pytest.raises(ValueError):
        choose_rank(policy, value, torch.ones(4), 4.0, 8)
