"""Ratios measured in alternating blocks (profilers.blocks): the interval, the stopping
rule and the order of the blocks, on simulated block medians whose behaviour is known."""
import math

import numpy as np
import pytest

from profilers.blocks import interval, ratio_in_blocks


class Host:
    """Block medians of two models on a host: ``ratio`` x a reference that
    drifts by ``drift`` per block, with relative noise ``noise`` per block."""

    def __init__(self, ratio, noise=0.0, drift=0.0, seed=0):
        self.ratio, self.noise, self.drift = ratio, noise, drift
        self.rng = np.random.default_rng(seed)
        self.calls = []
        self.speed = 1.0

    def _block(self, ms, who):
        self.calls.append(who)
        self.speed *= 1.0 + self.drift
        return ms * self.speed * math.exp(self.rng.normal(0.0, self.noise))

    def reference(self):
        return self._block(2.0, "ref")

    def candidate(self):
        return self._block(2.0 * self.ratio, "cand")


def test_a_quiet_host_is_certified_in_the_fewest_rounds():
    host = Host(0.5)
    est = ratio_in_blocks(host.reference, host.candidate, min_rounds=3)
    assert est.rounds == 3 and est.sure
    assert est.ratio == pytest.approx(0.5) and est.ratio_lo == pytest.approx(0.5)


def test_the_order_of_the_blocks_alternates_so_drift_cancels():
    host = Host(0.6, drift=0.02)  # the host slows 2 % per block
    est = ratio_in_blocks(host.reference, host.candidate, min_rounds=4, max_rounds=4)
    assert host.calls == ["ref", "cand", "cand", "ref", "ref", "cand", "cand", "ref"]
    assert est.ratio == pytest.approx(0.6, rel=2e-4)  # a fixed order would read 0.6 x 1.02
    assert est.drift_rel == pytest.approx(1.02 ** 7 - 1, rel=1e-6)  # reference blocks 1, 4, 5 and 8


@pytest.mark.parametrize("seed", range(5))
def test_the_interval_covers_the_true_ratio_and_meets_the_target(seed):
    host = Host(0.7, noise=0.03, seed=seed)
    est = ratio_in_blocks(host.reference, host.candidate, target_rel=0.02, max_rounds=60)
    assert est.sure and est.half_width_rel <= 0.02
    assert est.ratio_lo <= 0.7 <= est.ratio_hi
    assert est.rounds > 3  # 3 % noise per block needs more than the minimum


def test_a_noisy_host_stops_at_the_cap_and_says_it_is_not_sure():
    host = Host(0.7, noise=0.3)
    est = ratio_in_blocks(host.reference, host.candidate, target_rel=0.02, max_rounds=8)
    assert est.rounds == 8 and not est.sure and est.half_width_rel > 0.02
    assert est.ratio_lo < est.ratio < est.ratio_hi


def test_the_t_interval_widens_with_few_rounds():
    r, lo, hi = interval([0.0, 0.1])
    assert r == pytest.approx(math.exp(0.05)) and lo < math.exp(-0.5) and hi > math.exp(0.6)
    r, lo, hi = interval([0.0, 0.1] * 10)
    assert hi / lo < 1.1


def test_bad_block_medians_and_arguments_are_refused():
    with pytest.raises(ValueError, match="positive"):
        ratio_in_blocks(lambda: 1.0, lambda: 0.0)
    with pytest.raises(ValueError, match="min_rounds"):
        ratio_in_blocks(lambda: 1.0, lambda: 1.0, min_rounds=1)
