"""Layer profiles put on one footing against a reference layer (profilers.anchor)."""
from dataclasses import replace

import pytest

from profilers import LayerSpec, Timing
from profilers.anchor import REFERENCE, measure_anchored

SPECS = [LayerSpec("conv", n, n, (3, 3), (1, 1), (1, 1), (1, 1), 1, 16, 16) for n in range(8, 200, 8)]
TRUE_MS = {s: 0.01 * s.in_channels for s in SPECS} | {REFERENCE: 0.5}


class DriftingHost:
    """Every measurement is the true time times the host's speed, which drifts
    from 1.0 to ``end`` linearly over the calls."""

    def __init__(self, end: float, calls: int):
        self.end, self.calls, self.n = end, calls, 0

    def __call__(self, spec: LayerSpec) -> Timing:
        speed = 1.0 + (self.end - 1.0) * self.n / self.calls
        self.n += 1
        return Timing(median_ms=TRUE_MS[spec] * speed, iqr_ms=0.0, runs=20, ci_rel=0.01, stable=True)


def test_drift_cancels_against_the_reference():
    host = DriftingHost(end=1.5, calls=len(SPECS) + len(SPECS) // 8 + 2)
    raw = DriftingHost(end=1.5, calls=host.calls)
    out, anchor = measure_anchored(host, SPECS, None, every=8)
    assert anchor == pytest.approx(0.5)  # the first reading becomes the anchor
    got = [t.median_ms / TRUE_MS[s] for s, t in zip(SPECS, out)]
    assert max(abs(g - 1) for g in got) < 0.02  # within 2 % of the truth at the anchor's speed
    plain = [raw(s).median_ms / TRUE_MS[s] for s in SPECS]
    assert max(plain) > 1.3  # uncorrected, the last shapes read 30 %+ slow


def test_a_later_session_lands_on_the_first_footing_and_keeps_what_it_finished():
    """A stored anchor from a faster moment: today's host is 2x slower, and the
    corrected times are those of the anchor's moment; every finished chunk is
    handed over as it completes."""
    slow = lambda spec: replace(DriftingHost(1.0, 1)(spec), median_ms=2 * TRUE_MS[spec])
    seen = []
    out, anchor = measure_anchored(slow, SPECS[:10], 0.5, every=4, done=lambda s, t: seen.append(s))
    assert anchor == 0.5 and seen == SPECS[:10]
    assert [t.median_ms for t in out] == pytest.approx([TRUE_MS[s] for s in SPECS[:10]])
    assert measure_anchored(slow, [], 0.5) == ([], 0.5)  # nothing to measure: nothing measured


class SessionNoise:
    """The k-th session of a shape reads ``factors(spec)[k]`` times its true
    time (the reference reads true); records the order of the calls."""

    def __init__(self, factors=lambda spec: (1.02, 1 / 1.02)):
        self.factors, self.seen, self.calls = factors, {}, []

    def __call__(self, spec: LayerSpec) -> Timing:
        self.calls.append(spec)
        if spec == REFERENCE:
            return Timing(median_ms=TRUE_MS[spec], iqr_ms=0.0, runs=20, ci_rel=0.01, stable=True)
        k = self.seen[spec] = self.seen.get(spec, 0) + 1
        return Timing(median_ms=TRUE_MS[spec] * self.factors(spec)[k - 1], iqr_ms=0.001, runs=20, ci_rel=0.01,
                      stable=k < 2)


def test_two_passes_measure_each_chunk_forward_then_backward_and_average_the_sessions():
    one, two = SessionNoise(), SessionNoise()
    out1, _ = measure_anchored(one, SPECS[:10], 0.5, every=4)
    out2, _ = measure_anchored(two, SPECS[:10], 0.5, every=4, passes=2)
    assert [t.median_ms / TRUE_MS[s] for s, t in zip(SPECS, out1)] == pytest.approx([1.02] * 10)
    assert [t.median_ms / TRUE_MS[s] for s, t in zip(SPECS, out2)] == pytest.approx([1.0] * 10)
    assert all(t.runs == 40 and not t.stable for t in out2)  # both sessions counted; unstable if one was
    chunks = [SPECS[0:4], SPECS[4:8], SPECS[8:10]]
    expected = [REFERENCE]
    for c in chunks:
        expected += c + c[::-1] + [REFERENCE]
    assert two.calls == expected  # sessions 4 % apart agree: no third
    with pytest.raises(ValueError):
        measure_anchored(one, SPECS[:2], 0.5, passes=3)


def test_two_sessions_that_disagree_call_for_a_third_and_the_median_wins():
    odd = SPECS[1]  # its second session is 30 % slow
    host = SessionNoise(lambda spec: (1.0, 1.3, 1.01) if spec == odd else (1.0, 1.0))
    out, _ = measure_anchored(host, SPECS[:4], 0.5, every=4, passes=2)
    assert [t.median_ms / TRUE_MS[s] for s, t in zip(SPECS, out)] == pytest.approx([1.0, 1.01, 1.0, 1.0])
    assert host.calls == [REFERENCE, *SPECS[:4], *SPECS[:4][::-1], odd, REFERENCE]
    assert out[1].runs == 60


def test_two_passes_still_cancel_drift():
    host = DriftingHost(end=1.5, calls=2 * len(SPECS) + len(SPECS) // 8 + 2)
    out, _ = measure_anchored(host, SPECS, None, every=8, passes=2)
    assert max(abs(t.median_ms / TRUE_MS[s] - 1) for s, t in zip(SPECS, out)) < 0.02


def test_sessions_per_shape_come_from_the_environment(monkeypatch):
    from hwprune.errors import UserError
    from hwprune.latency.profiling import PASSES, profile_sessions
    monkeypatch.delenv("HWPRUNE_PROFILE_SESSIONS", raising=False)
    assert profile_sessions() == PASSES == 2
    monkeypatch.setenv("HWPRUNE_PROFILE_SESSIONS", "1")
    assert profile_sessions() == 1
    monkeypatch.setenv("HWPRUNE_PROFILE_SESSIONS", "3")
    with pytest.raises(UserError, match="give 1 or 2"):
        profile_sessions()
