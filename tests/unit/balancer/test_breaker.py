"""The circuit breaker state machine and outlier detection, on a fake monotonic clock."""

from __future__ import annotations

import pytest

from balancer.breaker import BreakerState, CircuitBreaker
from balancer.latency import LatencyWindow, PeakEwma
from balancer.outlier import EjectionPolicy, FailureWindow
from tests.fake_clock import FakeClock

POLICY = EjectionPolicy(consecutive_failures=3, error_rate=0.5, min_requests=6, base_ejection_s=1, max_ejection_s=8)


def test_consecutive_failures_open_then_half_open_then_close(clock: FakeClock) -> None:
    breaker = CircuitBreaker(POLICY, clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_success()  # a success in between resets the run
    for _ in range(2):
        breaker.record_failure()
    assert breaker.allows()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allows()
    assert breaker.snapshot().open_for_s == pytest.approx(1.0)
    clock.advance(0.99)
    assert not breaker.allows()
    clock.advance(0.02)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.wants_trial
    assert breaker.acquire() is True  # the one trial slot
    assert not breaker.allows()  # nothing else while the trial runs
    breaker.record_success(trial=True)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allows()


def test_failed_trials_double_the_ejection_up_to_the_cap(clock: FakeClock) -> None:
    breaker = CircuitBreaker(POLICY, clock)
    for _ in range(3):
        breaker.record_failure()
    seen = []
    for _ in range(6):
        seen.append(breaker.snapshot().open_for_s)
        clock.advance(breaker.snapshot().open_for_s + 0.001)
        assert breaker.acquire()
        breaker.record_failure(trial=True)
    assert seen == [1, 2, 4, 8, 8, 8]
    assert breaker.snapshot().trips == 7


def test_backoff_is_forgotten_after_staying_healthy(clock: FakeClock) -> None:
    breaker = CircuitBreaker(POLICY, clock)
    for round_ in range(2):
        for _ in range(3):
            breaker.record_failure()
        clock.advance(10)
        breaker.acquire()
        breaker.record_success(trial=True)
        assert breaker.snapshot().trips == round_ + 1
    clock.advance(POLICY.max_ejection_s + 1)  # closed for longer than the longest ejection
    for _ in range(3):
        breaker.record_failure()
    assert breaker.snapshot().trips == 1
    assert breaker.snapshot().open_for_s == pytest.approx(1.0)


def test_error_rate_trips_without_a_run_of_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker(POLICY, clock)
    outcomes = [True, False, True, False, True]  # alternating: never 3 in a row
    for failed in outcomes:
        (breaker.record_failure if failed else breaker.record_success)()
    assert breaker.state is BreakerState.CLOSED  # 5 calls: under min_requests
    breaker.record_failure()  # 6 calls, 4 failed
    assert breaker.state is BreakerState.OPEN


def test_old_failures_leave_the_window(clock: FakeClock) -> None:
    policy = EjectionPolicy(consecutive_failures=100, error_rate=0.6, min_requests=4, window_s=10)
    breaker = CircuitBreaker(policy, clock)
    for failed in (True, False, False, True, False, True, False):  # never at 60 % once 4 are in
        (breaker.record_failure if failed else breaker.record_success)()
    assert breaker.state is BreakerState.CLOSED
    clock.advance(11)
    for failed in (True, True, False, True):  # 3 of 4 now; 6 of 11 had the old ones stayed
        (breaker.record_failure if failed else breaker.record_success)()
    assert breaker.state is BreakerState.OPEN


def test_half_open_ignores_stragglers_and_released_trials(clock: FakeClock) -> None:
    breaker = CircuitBreaker(POLICY, clock)
    for _ in range(3):
        breaker.record_failure()
    breaker.record_failure()  # a straggler while open: ignored
    assert breaker.snapshot().trips == 1
    clock.advance(1.5)
    assert breaker.acquire()
    breaker.record_success()  # a request sent before the trip says nothing now
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.release_trial()  # the trial was cancelled: the slot is free again
    assert breaker.wants_trial
    breaker.record_failure()  # not the trial: ignored
    assert breaker.state is BreakerState.HALF_OPEN


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EjectionPolicy(consecutive_failures=0)
    with pytest.raises(ValueError, match="error_rate"):
        EjectionPolicy(error_rate=0)
    with pytest.raises(ValueError, match="max_ejection_s"):
        EjectionPolicy(base_ejection_s=10, max_ejection_s=5)


def test_failure_window_is_bounded() -> None:
    window = FailureWindow(100.0, max_entries=10)
    for index in range(25):
        window.add(float(index), failed=index % 2 == 0)
    assert window.counts(25.0) == (10, 5)


def test_peak_ewma_jumps_up_decays_down_and_ages_when_idle(clock: FakeClock) -> None:
    ewma = PeakEwma(clock, decay_s=10, idle_decay_s=10)
    assert ewma.value() is None
    ewma.observe(0.010)
    clock.advance(0.1)
    ewma.observe(0.100)  # a peak replaces the average at once
    assert ewma.value() == pytest.approx(0.100)
    for _ in range(100):
        clock.advance(1)
        ewma.observe(0.010)
    settled = ewma.value()
    assert settled == pytest.approx(0.010, rel=0.01)
    clock.advance(30)  # idle: the cost decays so the node is tried again
    assert ewma.value() == pytest.approx(settled * 2.718281828**-3, rel=0.001)


def test_peak_ewma_blends_fast_and_idles_slowly(clock: FakeClock) -> None:
    ewma = PeakEwma(clock, decay_s=1.0)  # idle decay defaults to 10x
    ewma.observe(0.050)  # a hiccup...
    for _ in range(200):  # ...fades with a 1 s time constant under traffic every 5 ms
        clock.advance(0.005)
        ewma.observe(0.010)
    assert ewma.value() == pytest.approx(0.010 + 0.040 / 2.718281828, rel=0.01)
    for _ in range(400):
        clock.advance(0.005)
        ewma.observe(0.010)
    assert ewma.value() == pytest.approx(0.010, rel=0.2)
    slow = PeakEwma(clock, decay_s=1.0)
    slow.observe(0.100)
    clock.advance(10)
    assert slow.value() == pytest.approx(0.100 / 2.718281828, rel=0.001)
    with pytest.raises(ValueError, match="positive"):
        PeakEwma(clock, decay_s=1, idle_decay_s=0)


def test_peak_ewma_with_samples_fades_a_peak_after_that_many_faster_answers(clock: FakeClock) -> None:
    # A 50 ms pause of the gateway lands on a node answering every 5 ms in 10 ms. Time alone keeps
    # most of it for a second (200 answers); with samples=16 it is gone after a few dozen answers.
    timed, counted = PeakEwma(clock, decay_s=1.0), PeakEwma(clock, decay_s=1.0, samples=16)
    for ewma in (timed, counted):
        ewma.observe(0.050)
    for _ in range(32):
        clock.advance(0.005)
        for ewma in (timed, counted):
            ewma.observe(0.010)
    assert timed.value() == pytest.approx(0.010 + 0.040 * 2.718281828**-0.16, rel=0.01)
    assert counted.value() == pytest.approx(0.010 + 0.040 * (15 / 16) ** 32, rel=0.01)
    assert counted.value() < 0.016
    spaced = PeakEwma(clock, decay_s=1.0, samples=16)  # few answers: time decides, as before
    spaced.observe(0.050)
    clock.advance(1.0)
    spaced.observe(0.010)
    assert spaced.value() == pytest.approx(0.010 + 0.040 / 2.718281828, rel=0.01)
    with pytest.raises(ValueError, match="samples"):
        PeakEwma(clock, samples=0)


def test_peak_ewma_mean_and_load_are_weighted_as_the_latencies(clock: FakeClock) -> None:
    ewma = PeakEwma(clock, decay_s=1.0, samples=4)
    assert ewma.load() is None
    ewma.observe(0.100, load=7)  # taught under round robin: 7 in flight
    assert ewma.load() == 7
    clock.advance(30)  # shunned for a long time, then one request sent alone
    ewma.observe(0.100, load=1)
    assert ewma.load() == pytest.approx(1.0, abs=0.01)  # the old load is as stale as the old latency
    for load in (2, 2, 2, 2):
        ewma.observe(0.010, load=load)  # same instant: each answer still counts for 1/4
    assert ewma.load() == pytest.approx(2 - (3 / 4) ** 4, rel=0.01)
    before = ewma.mean()
    assert before is not None
    ewma.observe(0.500, load=1)  # a peak takes the latency at once, but not the load: one request
    assert ewma.value() == 0.500  # sent alone must not make the node's usual queue look like none
    assert ewma.mean() == pytest.approx(before + (0.500 - before) / 4)  # nor the mean: blended
    assert ewma.load() == pytest.approx(2 - (3 / 4) ** 4 - (1 - (3 / 4) ** 4) / 4, rel=0.01)


def test_latency_window_p95() -> None:
    window = LatencyWindow(size=100, min_samples=10)
    for index in range(9):
        window.observe(index / 1000)
    assert window.quantile() is None
    for index in range(9, 100):
        window.observe(index / 1000)
    assert window.quantile(0.95) == pytest.approx(0.094)
