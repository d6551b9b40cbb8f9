"""srlm.evaluation.metrics against hand-computed values."""

import math

import numpy as np
import pytest

from srlm.evaluation.metrics import (Estimate, PairedTest, bootstrap_ci, kendall_tau_b, length_controlled_win_rate,
                                     paired_bootstrap, pairwise_accuracy, score_distribution, sign_test, spearman,
                                     win_rate)


# ---------------------------------------------------------------- dataclasses


def test_as_dict_keys_and_frozen():
    est = Estimate(value=0.5, low=0.25, high=0.75, n=8)
    assert est.as_dict() == {"value": 0.5, "low": 0.25, "high": 0.75, "n": 8}
    test = PairedTest(diff=0.1, low=0.0, high=0.2, p_value=0.04, n=30, method="sign_test")
    assert test.as_dict() == {"diff": 0.1, "low": 0.0, "high": 0.2, "p_value": 0.04, "n": 30,
                              "method": "sign_test"}
    with pytest.raises(AttributeError):
        est.value = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------- bootstrap_ci


def test_bootstrap_two_values_by_hand():
    # Resampling [0, 1] twice: mean 0 w.p. 1/4, 0.5 w.p. 1/2, 1 w.p. 1/4.
    # 95%: the 2.5% and 97.5% quantiles fall in the 0 and 1 blocks -> [0, 1].
    est = bootstrap_ci([0, 1])
    assert (est.value, est.low, est.high, est.n) == (0.5, 0.0, 1.0, 2)
    # 40%: the 30% and 70% quantiles both fall in the 0.5 block (cumulative 1/4 < 0.3, 0.7 < 3/4).
    narrow = bootstrap_ci([0, 1], confidence=0.4)
    assert (narrow.low, narrow.high) == (0.5, 0.5)


def test_bootstrap_contains_mean_and_is_reproducible():
    values = np.random.default_rng(3).normal(2.0, 1.0, 60)
    est = bootstrap_ci(values, seed=7)
    assert est.value == pytest.approx(values.mean())
    assert est.low < est.value < est.high
    assert est.n == 60
    assert bootstrap_ci(values, seed=7) == est
    assert bootstrap_ci(list(values), seed=7) == est
    assert bootstrap_ci(values, seed=8) != est


def test_bootstrap_shrinks_with_more_data_and_widens_with_confidence():
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.normal(0.0, 1.0, 25))
    large = bootstrap_ci(rng.normal(0.0, 1.0, 400))
    # the width scales like 1/sqrt(n): 4x narrower for 16x the data
    assert (large.high - large.low) < 0.5 * (small.high - small.low)
    values = rng.normal(0.0, 1.0, 50)
    ci90, ci99 = bootstrap_ci(values, confidence=0.90), bootstrap_ci(values, confidence=0.99)
    assert ci99.low < ci90.low < ci90.high < ci99.high


def test_bootstrap_degenerate_cases():
    assert bootstrap_ci([3.5]) == Estimate(value=3.5, low=3.5, high=3.5, n=1)
    assert bootstrap_ci([0.1] * 7) == Estimate(value=pytest.approx(0.1), low=pytest.approx(0.1),
                                               high=pytest.approx(0.1), n=7)
    const = bootstrap_ci([0.1] * 7)
    assert const.low == const.value == const.high


def test_bootstrap_other_statistic():
    est = bootstrap_ci([1, 2, 3, 10], statistic=np.median)
    assert est.value == 2.5
    # every resampled median lies between the smallest and the largest value
    assert 1.0 <= est.low <= est.high <= 10.0


@pytest.mark.parametrize("values, message", [
    ([], "empty"),
    ([1.0, float("nan")], "NaN at index 1"),
    ([1.0, float("inf")], "infinite"),
    ([[1.0, 2.0], [3.0, 4.0]], "1-D"),
    (["a", "b"], "numbers"),
])
def test_bootstrap_rejects_bad_values(values, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(values)


@pytest.mark.parametrize("kwargs, message", [
    ({"confidence": 1.0}, "confidence"),
    ({"confidence": 0.0}, "confidence"),
    ({"resamples": 0}, "resamples"),
    ({"resamples": 2.5}, "resamples"),
])
def test_bootstrap_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_ci([1.0, 2.0], **kwargs)


# ---------------------------------------------------------------- paired_bootstrap


def test_paired_bootstrap_clear_shift():
    rng = np.random.default_rng(1)
    b = rng.normal(0.0, 1.0, 100)
    a = b + 1.0 + rng.normal(0.0, 0.1, 100)
    test = paired_bootstrap(a, b)
    assert test.method == "paired_bootstrap"
    assert test.n == 100
    assert test.diff == pytest.approx(a.mean() - b.mean())
    assert test.low < test.diff < test.high
    assert 0.9 < test.low < test.high < 1.1
    # no resampled mean difference reaches 0: the floor 1/(resamples+1)
    assert test.p_value == pytest.approx(1 / 2001)
    assert test.p_value < 0.01
    reverse = paired_bootstrap(b, a)
    assert reverse.diff == pytest.approx(-test.diff)
    assert reverse.p_value == test.p_value


def test_paired_bootstrap_identical_arrays():
    values = [0.2, 0.9, 0.4, 0.4]
    assert paired_bootstrap(values, values) == PairedTest(diff=0.0, low=0.0, high=0.0, p_value=1.0, n=4,
                                                          method="paired_bootstrap")


def test_paired_bootstrap_p_value_by_hand():
    # Differences [1, 1, 1, -1]: a resampled mean is <= 0 iff at least 2 of the 4 draws are the -1:
    # P = 1 - (3/4)^4 - 4 (1/4)(3/4)^3 = 1 - 81/256 - 108/256 = 67/256; P(mean >= 0) = 243/256,
    # so p = 2 * 67/256 = 0.5234 (Monte Carlo: standard error ~0.006 at 20000 resamples).
    test = paired_bootstrap([1, 1, 1, 0], [0, 0, 0, 1], resamples=20000)
    assert test.diff == 0.5
    assert test.p_value == pytest.approx(2 * 67 / 256, abs=0.03)
    # resampled means take the values -1, -0.5, 0, 0.5, 1: P(-1) = 1/256 < 2.5%, P(<= -0.5) = 13/256 > 2.5%
    assert (test.low, test.high) == (-0.5, 1.0)


def test_paired_bootstrap_no_shift_and_edge_cases():
    symmetric = np.array([-2.0, -1.0, 1.0, 2.0] * 10)
    test = paired_bootstrap(symmetric, np.zeros(40))
    assert test.diff == 0.0
    assert test.p_value > 0.5
    assert test.low < 0.0 < test.high
    assert paired_bootstrap(symmetric, np.zeros(40), seed=3) == paired_bootstrap(symmetric, np.zeros(40), seed=3)
    single = paired_bootstrap([1.0], [0.0])
    assert (single.diff, single.low, single.high, single.p_value) == (1.0, 1.0, 1.0, 1.0)
    constant = paired_bootstrap([2.0, 3.0, 4.0], [1.0, 2.0, 3.0], resamples=99)
    assert (constant.diff, constant.low, constant.high, constant.p_value) == (1.0, 1.0, 1.0, 0.01)


def test_paired_bootstrap_validation():
    with pytest.raises(ValueError, match="mismatched lengths: a has 3 items, b has 2"):
        paired_bootstrap([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="b: empty"):
        paired_bootstrap([1.0], [])
    with pytest.raises(ValueError, match="a: contains NaN"):
        paired_bootstrap([float("nan")], [1.0])


# ---------------------------------------------------------------- sign_test


def test_sign_test_eight_wins_two_losses():
    # p = 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * (1 + 10 + 45) / 1024 = 112/1024 = 0.109375
    a, b = [1] * 8 + [0] * 2, [0] * 8 + [1] * 2
    test = sign_test(a, b)
    assert test.p_value == 0.109375
    assert test.method == "sign_test"
    assert test.n == 10
    assert test.diff == pytest.approx(0.6)
    assert test.low <= test.diff <= test.high
    assert sign_test(b, a).p_value == 0.109375


def test_sign_test_ties_dropped_and_extremes():
    # ties add nothing: 8 wins, 2 losses, 3 ties is still 0.109375 (n counts all 13 pairs)
    tied = sign_test([1] * 8 + [0] * 2 + [5] * 3, [0] * 8 + [1] * 2 + [5] * 3)
    assert tied.p_value == 0.109375
    assert tied.n == 13
    # 9 of 9: p = 2 * C(9,0) / 2^9 = 2/512
    assert sign_test([2] * 9, [1] * 9).p_value == 2 / 512
    # 5 wins, 5 losses: 2 * (1+10+45+120+210+252)/1024 = 1276/1024 > 1 -> 1
    assert sign_test([1] * 5 + [0] * 5, [0] * 5 + [1] * 5).p_value == 1.0
    # every pair tied: no evidence
    assert sign_test([0.5, 0.7], [0.5, 0.7]).p_value == 1.0
    # the magnitude is ignored: one huge win and 3 small losses is 1 vs 3 -> 2 * (1 + 4)/16 = 0.625
    assert sign_test([100, 0, 0, 0], [0, 0.1, 0.1, 0.1]).p_value == 0.625


def test_sign_test_validation():
    with pytest.raises(ValueError, match="mismatched lengths"):
        sign_test([1, 2], [1])


# ---------------------------------------------------------------- win_rate, pairwise_accuracy


def test_win_rate():
    # (1 + 0 + 0.5 + 1) / 4 = 0.625
    est = win_rate([1, 0, 0.5, 1])
    assert est.value == 0.625
    assert est.n == 4
    assert 0.0 <= est.low <= est.value <= est.high <= 1.0
    assert win_rate([1, 1, 1]) == Estimate(value=1.0, low=1.0, high=1.0, n=3)
    with pytest.raises(ValueError, match=r"wins: values must lie in \[0, 1\], got 2.0 at index 1"):
        win_rate([1, 2])


def test_pairwise_accuracy_tie_gets_half_credit():
    # credits: 3>1 -> 1, 2=2 -> 0.5, 5>4 -> 1, 1<2 -> 0; mean = 2.5/4 = 0.625
    est = pairwise_accuracy([3, 2, 5, 1], [1, 2, 4, 2])
    assert est.value == 0.625
    assert est.n == 4
    assert est.low <= 0.625 <= est.high
    assert pairwise_accuracy([1, 1], [1, 1]) == Estimate(value=0.5, low=0.5, high=0.5, n=2)
    with pytest.raises(ValueError, match="better_scores has 2 items, worse_scores has 1"):
        pairwise_accuracy([1, 2], [1])


# ---------------------------------------------------------------- rank correlations


def test_spearman_by_hand():
    # rank differences d = [0, 1, -1, 0], sum d^2 = 2: rho = 1 - 6*2 / (4 (16 - 1)) = 1 - 12/60 = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # only the ranks count
    assert spearman([10, 20, 30, 40], [0.1, 3.0, 2.0, 400.0]) == pytest.approx(0.8)
    assert spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_with_ties_by_hand():
    # average ranks: x = [1, 2.5, 2.5, 4], y = [1, 2, 3.5, 3.5], both mean 2.5
    # centred: x' = [-1.5, 0, 0, 1.5], y' = [-1.5, -0.5, 1, 1]
    # sum x'y' = 2.25 + 0 + 0 + 1.5 = 3.75; sum x'^2 = 4.5; sum y'^2 = 2.25 + 0.25 + 1 + 1 = 4.5
    # rho = 3.75 / sqrt(4.5 * 4.5) = 0.8333
    assert spearman([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(3.75 / 4.5)


def test_kendall_tau_b_by_hand():
    # pairs of (1,2,3,4) vs (1,3,2,4): (1,2) C, (1,3) C, (1,4) C, (2,3) D [3 > 2], (2,4) C, (3,4) C
    # 5 concordant, 1 discordant, no ties: tau = (5 - 1) / 6 = 0.6667
    assert kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
    assert kendall_tau_b([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)


def test_kendall_tau_b_with_ties_by_hand():
    # x = [1, 2, 2, 3], y = [1, 2, 3, 3]; pairs by index:
    # (0,1) C, (0,2) C, (0,3) C, (1,2) tied in x, (1,3) C, (2,3) tied in y -> C = 4, D = 0
    # n0 = 6, ties in x: one pair, ties in y: one pair -> tau_b = 4 / sqrt((6-1)(6-1)) = 0.8
    assert kendall_tau_b([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    # x = [1, 1, 2, 3], y = [2, 1, 1, 3]: (0,1) tied x, (0,2) D [1<2, 2>1], (0,3) C, (1,2) tied y, (1,3) C,
    # (2,3) C -> C = 3, D = 1; tau_b = (3 - 1) / sqrt((6-1)(6-1)) = 0.4
    assert kendall_tau_b([1, 1, 2, 3], [2, 1, 1, 3]) == pytest.approx(0.4)


def test_rank_correlations_constant_input_is_zero():
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0
    assert kendall_tau_b([1, 2, 3], [4, 4, 4]) == 0.0
    assert spearman([7], [3]) == 0.0
    assert kendall_tau_b([7], [3]) == 0.0


def test_rank_correlations_random_agree_in_sign_and_bounds():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 6, 200).astype(float)  # many ties, like judge scores
    y = x + rng.normal(0.0, 1.5, 200)
    rho, tau = spearman(x, y), kendall_tau_b(x, y)
    assert 0.0 < tau < rho < 1.0
    assert spearman(x, -y) == pytest.approx(-rho)
    assert kendall_tau_b(x, -y) == pytest.approx(-tau)


@pytest.mark.parametrize("func", [spearman, kendall_tau_b])
def test_rank_correlations_validation(func):
    with pytest.raises(ValueError, match="mismatched lengths: x has 3 items, y has 2"):
        func([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="y: contains NaN at index 0"):
        func([1, 2], [float("nan"), 1])
    with pytest.raises(ValueError, match="x: empty"):
        func([], [])


# ---------------------------------------------------------------- length-controlled win rate


def test_lc_win_rate_independent_of_length_equals_raw():
    # The win rate is 3/4 both among longer and among shorter answers, so theta = 0 solves the fit exactly
    # (sum_i tanh_i (0.75 - w_i) = 0) and the LC rate is sigmoid(logit(0.75)) = 0.75.
    lengths = np.array([1.0] * 4 + [-1.0] * 4)
    wins = np.array([1, 1, 1, 0] * 2, dtype=float)
    assert length_controlled_win_rate(wins, lengths) == pytest.approx(0.75, abs=1e-9)


def test_lc_win_rate_random_independent_is_close_to_raw():
    rng = np.random.default_rng(11)
    lengths = rng.normal(0.0, 300.0, 2000)
    wins = (rng.random(2000) < 0.3).astype(float)
    assert length_controlled_win_rate(wins, lengths) == pytest.approx(wins.mean(), abs=0.02)


def test_lc_win_rate_symmetric_length_only_wins_is_one_half():
    # Half the answers longer, winning exactly those: the data are symmetric under
    # (length, win) -> (-length, 1 - win), so the (unique, penalised) fit has intercept 0 -> 0.5.
    lengths = np.array([1.0, 2.0, 3.0, 4.0, -1.0, -2.0, -3.0, -4.0])
    wins = (lengths > 0).astype(float)
    assert length_controlled_win_rate(wins, lengths) == pytest.approx(0.5, abs=1e-9)


def test_lc_win_rate_discounts_wins_bought_by_length():
    # Longer on 3/4 of the prompts (tanh = +t) and winning exactly those; shorter on 1/4 (tanh = -t), losing.
    # Raw rate 0.75. With p+ = 1 - e, p- = e' near 0, the intercept gradient sum(p - w) = 0 gives e' = 3e, so
    # b0 = (logit p+ + logit p-) / 2 -> (log(1/e) + log(3e)) / 2 = log(3)/2 as the L2 on theta vanishes:
    # LC -> sigmoid(log(3)/2) = sqrt(3) / (1 + sqrt(3)) = 0.6340. The default penalty keeps it slightly above.
    lengths = np.array([1.0, 1.0, 1.0, -1.0] * 4)
    wins = (lengths > 0).astype(float)
    limit = math.sqrt(3) / (1 + math.sqrt(3))
    lc = length_controlled_win_rate(wins, lengths)
    assert limit < lc < 0.65 < wins.mean()
    assert length_controlled_win_rate(wins, lengths, l2=1e-6) == pytest.approx(limit, abs=1e-4)


def test_lc_win_rate_degenerate_cases():
    assert length_controlled_win_rate([1, 0, 0.5], [10, 10, 10]) == 0.5  # std 0 -> plain mean
    assert length_controlled_win_rate([1, 1, 1], [5, -5, 1]) == 1.0
    assert length_controlled_win_rate([0, 0], [5, -5]) == 0.0
    # all ties: fractional targets 0.5 everywhere -> 0.5
    assert length_controlled_win_rate([0.5] * 6, [1, 2, 3, -1, 0, 9]) == pytest.approx(0.5, abs=1e-9)


def test_lc_win_rate_validation():
    with pytest.raises(ValueError, match="mismatched lengths: wins has 2 items, length_diffs has 1"):
        length_controlled_win_rate([1, 0], [3])
    with pytest.raises(ValueError, match=r"wins: values must lie in \[0, 1\]"):
        length_controlled_win_rate([1, -0.5], [3, 4])
    with pytest.raises(ValueError, match="length_diffs: contains NaN"):
        length_controlled_win_rate([1, 0], [3, float("nan")])
    with pytest.raises(ValueError, match="l2"):
        length_controlled_win_rate([1, 0], [3, 4], l2=-1.0)


# ---------------------------------------------------------------- score_distribution


def test_score_distribution():
    # 4.6 -> 5, 2.5 rounds half up -> 3
    assert score_distribution([0, 1, 1, 5, 4.6, 2.5]) == {"0": 1, "1": 2, "2": 0, "3": 1, "4": 0, "5": 2}
    assert score_distribution([10], max_score=10) == {str(k): int(k == 10) for k in range(11)}
    with pytest.raises(ValueError, match="rounds outside 0..5"):
        score_distribution([6])
    with pytest.raises(ValueError, match="rounds outside 0..5"):
        score_distribution([-0.6])
    with pytest.raises(ValueError, match="values: empty"):
        score_distribution([])
    with pytest.raises(ValueError, match="max_score"):
        score_distribution([1], max_score=-1)
