"""DP-SGD's privacy budget: dp-accounting's ε against closed forms computed here, its
monotonicity, the Poisson sampling the accountant assumes, and (ε, δ) in the table and JSON."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import per_example_gradients as peg

from .helpers import smoke


def analytic_gaussian_epsilon(mu: float, delta: float) -> float:
    """ε of a Gaussian mechanism of sensitivity 1 and noise 1/mu at δ (Balle & Wang 2018,
    Theorem 8): δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2), solved for ε by bisection."""
    def phi(x):
        return 0.5 * math.erfc(-x / math.sqrt(2))

    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if phi(-mid / mu + mu / 2) - math.exp(mid) * phi(-mid / mu - mu / 2) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def rdp_binomial_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """ε from the RDP of the Poisson-subsampled Gaussian at integer orders α (Mironov,
    Talwar & Zhang 2019, Sec. 3.3): RDP(α) = log Σ_k C(α,k) (1−q)^(α−k) q^k
    exp((k² − k) / (2σ²)) / (α − 1), composed over the steps, then converted with
    ε = T·RDP(α) + log(1 − 1/α) − log(δ α) / (α − 1) (Balle et al. 2020), least over α."""
    best = math.inf
    for alpha in (*range(2, 64), 128, 256):
        logs = [math.lgamma(alpha + 1) - math.lgamma(k + 1) - math.lgamma(alpha - k + 1)
                + (alpha - k) * math.log1p(-q) + k * math.log(q) + (k * k - k) / (2 * sigma**2)
                for k in range(alpha + 1)]
        top = max(logs)
        rdp = (top + math.log(sum(math.exp(v - top) for v in logs))) / (alpha - 1)
        best = min(best, steps * rdp + math.log1p(-1 / alpha)
                   - math.log(delta * alpha) / (alpha - 1))
    return best


@pytest.mark.parametrize("sigma, steps", [(10.0, 10), (3.0, 5), (1.0, 1)])
def test_full_batch_epsilon_is_the_analytic_gaussian_mechanism(sigma, steps):
    # q = 1: T compositions of a Gaussian mechanism are one with noise σ / √T
    eps = peg.privacy_budget(500, 500, steps, sigma, 1e-5, "pld")
    assert eps == pytest.approx(analytic_gaussian_epsilon(math.sqrt(steps) / sigma, 1e-5),
                                rel=1e-3)


def test_rdp_epsilon_is_the_binomial_expansion_and_pld_is_tighter():
    # the default run: digits training set n = 1438, batch 64, 15 epochs of 22 steps, σ = 1
    n, batch, steps, sigma, delta = 1438, 64, 15 * 22, 1.0, 1e-5
    rdp = peg.privacy_budget(n, batch, steps, sigma, delta, "rdp")
    mine = rdp_binomial_epsilon(batch / n, sigma, steps, delta)
    # dp-accounting also tries fractional orders, so its least ε is at most ours
    assert rdp <= mine * (1 + 1e-9) and mine < 1.05 * rdp
    pld = peg.privacy_budget(n, batch, steps, sigma, delta, "pld")
    # PLD is nearly exact, RDP an upper bound: below it, and not far below
    assert 0.8 * rdp < pld < rdp
    assert 5.0 < pld < 6.0  # the figure the run prints: ε ≈ 5.4 at δ = 1e-5


def test_epsilon_grows_with_epochs_and_falls_with_sigma():
    n, batch, delta = 1438, 64, 1e-5
    by_epochs = [peg.privacy_budget(n, batch, e * 22, 1.0, delta) for e in (1, 5, 15)]
    assert by_epochs[0] < by_epochs[1] < by_epochs[2]
    by_sigma = [peg.privacy_budget(n, batch, 330, s, delta) for s in (0.8, 1.0, 2.0)]
    assert by_sigma[0] > by_sigma[1] > by_sigma[2]
    assert peg.privacy_budget(n, batch, 330, 0.0, delta) == math.inf  # no noise, no privacy
    with pytest.raises(ValueError, match="delta"):
        peg.privacy_budget(n, batch, 330, 1.0, 0.0)


def test_poisson_masks_include_each_example_with_probability_q():
    masks = np.asarray(peg.poisson_masks(jax.random.key(0), 1000, 50))
    assert masks.shape == (20, 1000) and masks.dtype == bool
    q, count = 50 / 1000, masks.size
    assert abs(masks.mean() - q) < 4 * math.sqrt(q * (1 - q) / count)
    assert len(set(masks.sum(axis=1))) > 1  # batch sizes vary: not fixed-size batches


def test_dp_gradient_sums_the_sample_and_divides_by_the_expected_batch():
    g = jnp.array([[3.0, 4.0], [0.3, 0.4], [6.0, 8.0]])
    mask = jnp.array([True, True, False])
    grad, fraction = peg.dp_gradient([g], jax.random.key(0), 1.0, 0.0, mask, 4)
    # example 1 scaled to norm 1, example 2 kept, example 3 not in the sample; / 4
    np.testing.assert_allclose(grad[0], [(0.6 + 0.3) / 4, (0.8 + 0.4) / 4], rtol=1e-6)
    assert float(fraction) == 0.5
    noisy, _ = peg.dp_gradient([g], jax.random.key(0), 1.0, 2.0, mask, 4)
    noise = jax.random.normal(jax.random.split(jax.random.key(0), 1)[0], (2,), g.dtype)
    np.testing.assert_allclose(noisy[0], grad[0] + 2.0 * noise / 4, rtol=1e-6)


def test_smoke_reports_epsilon_and_delta_in_table_and_json(tmp_path, capsys):
    result = peg.main(smoke(tmp_path, "--delta", "1e-6"))
    saved = json.loads((Path(result["folder"]) / "results.json").read_text())
    dp = saved["dp_sgd"]
    assert dp["sampling"] == "Poisson" and dp["n"] == 256 and dp["steps"] == 4
    private = dp["runs"]["DP-SGD (C=5.0, σ=1.0)"]
    assert private["delta"] == 1e-6
    assert private["epsilon"] == pytest.approx(peg.privacy_budget(256, 64, 4, 1.0, 1e-6))
    assert private["epsilon"] < private["epsilon_rdp"]
    assert dp["runs"]["non-private"]["epsilon"] is None  # inf is stored as null
    table = saved["tables"]["DP-SGD on the digits, (ε, δ) by dp-accounting"]
    assert [r["ε (PLD)"] for r in table][2] == private["epsilon"]
    out = capsys.readouterr().out
    assert "ε (PLD)" in out and "δ = 1e-06 (below 1/n" in out


@pytest.mark.parametrize("flag, value", [("--delta", "1"), ("--noise", "-1"),
                                         ("--batch-sizes", "8,x"), ("--batch-size", "5000")])
def test_bad_options_exit_2(tmp_path, flag, value):
    with pytest.raises(SystemExit) as e:
        peg.main(smoke(tmp_path, flag, value))
    assert e.value.code == 2
