"""actadd.stats against reference implementations: statsmodels' Wilson interval, scipy's
Student t quantiles and intervals, and scipy's paired t interval."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actadd.experiments import stats



@pytest.fixture(scope="module")
def sp():
    from conftest import _import_reference

    return _import_reference("scipy.stats")


@pytest.fixture(scope="module")
def proportion_confint():
    from conftest import _import_reference

    return _import_reference("statsmodels.stats.proportion").proportion_confint


CONFIDENCES = st.sampled_from([0.8, 0.9, 0.95, 0.99])


@settings(max_examples=300)
@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))), CONFIDENCES)
def test_wilson_equals_statsmodels(proportion_confint, case, confidence):
    k, n = case
    low, high = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
    e = stats.wilson(k, n, confidence)
    assert e.value == k / n and e.n == n
    assert abs(e.low - low) < 1e-12 and abs(e.high - high) < 1e-12, (e, low, high)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 7, 10, 19, 30, 99, 199, 999, 10_000, 100_000])
@pytest.mark.parametrize("p", [0.5, 0.6, 0.9, 0.95, 0.975, 0.995, 0.9995, 0.025, 0.1])
def test_student_t_quantiles_equal_scipy(sp, df, p):
    ref = sp.t.ppf(p, df)
    assert abs(stats.student_t_ppf(p, df) - ref) <= 1e-9 * max(1.0, abs(ref))
    assert abs(stats.student_t_cdf(ref, df) - p) < 1e-10   # lgamma of df/2 ~ 1e5 costs digits


@settings(max_examples=200)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=300), CONFIDENCES)
def test_mean_interval_equals_scipy_t_interval(sp, values, confidence):
    x = np.array(values)
    e = stats.mean_interval(x, confidence)
    assert e.value == pytest.approx(x.mean(), abs=1e-9) and e.n == len(x)
    if x.std() < 1e-9:                     # scipy's interval degenerates to NaN at zero spread
        assert e.high - e.low == pytest.approx(0, abs=1e-6)
        return
    low, high = sp.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=sp.sem(x))
    assert e.low == pytest.approx(low, rel=1e-9, abs=1e-9) and e.high == pytest.approx(high, rel=1e-9, abs=1e-9)


def test_paired_difference_without_clusters_is_scipys_paired_t_interval(sp):
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 50), rng.normal(0.7, 1, 50)
    ci = sp.ttest_rel(a, b).confidence_interval(0.95)
    e = stats.paired_difference(a, b)
    assert e.value == pytest.approx((a - b).mean()) and e.n == 50
    assert e.low == pytest.approx(ci.low, rel=1e-10) and e.high == pytest.approx(ci.high, rel=1e-10)


def test_paired_difference_with_clusters_is_a_t_interval_over_cluster_means(sp):
    """Five samples of each of 12 prompts: the observations are the 12 prompt means of the
    differences, not the 60 rows (which would claim an interval too narrow)."""
    rng = np.random.default_rng(1)
    clusters = np.repeat(np.arange(12), 5)
    prompt_effect = rng.normal(0, 1, 12)[clusters]
    a, b = prompt_effect + rng.normal(0.3, 0.2, 60), rng.normal(0, 0.2, 60)
    means = np.array([(a - b)[clusters == c].mean() for c in range(12)])
    e = stats.paired_difference(a, b, clusters)
    low, high = sp.t.interval(0.95, 11, loc=means.mean(), scale=sp.sem(means))
    assert e.n == 12 and e.value == pytest.approx(means.mean())
    assert e.low == pytest.approx(low) and e.high == pytest.approx(high)
    rows = stats.paired_difference(a, b)
    assert rows.high - rows.low < e.high - e.low


def test_degenerate_inputs_give_nan_intervals_not_errors():
    assert math.isnan(stats.wilson(0, 0).value)
    one = stats.mean_interval([3.0])
    assert one.value == 3.0 and math.isnan(one.low) and one.n == 1
    assert stats.mean_interval([]).n == 0
    assert stats.wilson(0, 10).low == 0.0 and stats.wilson(10, 10).high == 1.0
    with pytest.raises(ValueError, match="11 successes out of 10"):
        stats.wilson(11, 10)
    with pytest.raises(ValueError, match="confidence=1.5"):
        stats.mean_interval([1, 2], 1.5)
    with pytest.raises(ValueError, match="3 cluster labels for 2 pairs"):
        stats.paired_difference([1, 2], [0, 0], [0, 1, 2])


def test_accuracy_counts_calls_at_the_threshold_and_gives_the_wilson_interval(proportion_confint):
    """One helper for both training scripts (each had its own copy): 3 of 5 right by hand."""
    labels, probabilities = [1, 0, 1, 0, True], [0.5, 0.49, 0.2, 0.9, 0.51]   # right, right, wrong, wrong, right
    e = stats.accuracy(labels, probabilities)
    low, high = proportion_confint(3, 5, alpha=0.05, method="wilson")
    assert e.value == 3 / 5 and e.n == 5
    assert e.low == pytest.approx(low, rel=1e-12) and e.high == pytest.approx(high, rel=1e-12)
    with pytest.raises(ValueError, match="5 labels for 4 probabilities"):
        stats.accuracy(labels, probabilities[:4])
