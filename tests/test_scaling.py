"""The scaling-law helper: the fit recovers a known law, the optimum follows from it, and a
small sweep of real runs produces points and a plot."""

import numpy as np
import pytest

from tinyllm.analysis import parameter_count
from tinyllm.recipes.scaling import (
    ScalingLaw,
    ScalingPoint,
    chinchilla_optimal,
    compute_optimal,
    fit_scaling_law,
    model_family,
    plot_scaling,
    scaling_sweep,
)

TRUE = ScalingLaw(E=1.5, A=30.0, alpha=0.4, B=200.0, beta=0.35)


def synthetic_points(noise=0.002):
    rng = np.random.default_rng(0)
    points = []
    for budget in (1e11, 3e11, 1e12):
        for n in (2e4, 5e4, 1e5, 2e5):
            d = budget / (6 * n)
            loss = float(TRUE.loss(n, d)) * (1 + rng.normal(0, noise))
            points.append(ScalingPoint(budget, int(n), int(d), 0, 0, loss))
    return points


def test_the_fit_recovers_a_known_law():
    law = fit_scaling_law(synthetic_points())
    assert law.alpha == pytest.approx(TRUE.alpha, abs=0.02)
    assert law.beta == pytest.approx(TRUE.beta, abs=0.02)
    assert law.E == pytest.approx(TRUE.E, abs=0.05)
    with pytest.raises(ValueError, match="3 points are too few"):
        fit_scaling_law(synthetic_points()[:3])


def test_compute_optimal_is_the_bottom_of_the_isoflop_curve():
    budget = 1e15
    n, d = compute_optimal(TRUE, budget)
    assert 6 * n * d == pytest.approx(budget)
    for other in (n / 2, n * 2):  # either side of the optimum is worse
        assert TRUE.loss(other, budget / (6 * other)) > TRUE.loss(n, d)
    n, d = chinchilla_optimal(budget)
    assert d / n == pytest.approx(20) and 6 * n * d == pytest.approx(budget)


def test_a_small_sweep_trains_every_model_at_every_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLLM_CACHE", str(tmp_path / "cache"))
    configs = model_family(widths=(16, 32), n_layer=1, context_length=16)
    points = scaling_sweep([1e8, 2e8], configs, batch_size=4)
    assert [(p.budget, p.d_model) for p in points] == [(1e8, 16), (1e8, 32), (2e8, 16), (2e8, 32)]
    for point, config in zip(points, configs * 2):
        assert point.n_params == parameter_count(config.replace(vocab_size=65)).non_embedding
        assert point.n_tokens % (4 * 16) == 0 and np.isfinite(point.val_loss)
    smaller, bigger = points[0], points[2]  # same model, twice the budget: twice the tokens
    assert bigger.n_tokens == pytest.approx(2 * smaller.n_tokens, rel=0.1)
    path = plot_scaling(points, TRUE, tmp_path / "scaling.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
