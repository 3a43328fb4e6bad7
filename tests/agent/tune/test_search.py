"""The limit search against a model of a batching backend: no server, the measurements are the model's."""

from __future__ import annotations

from collections.abc import Callable

from agent.tune.search import Measurement, Search

SERVICE_S = 1.0


class Backend:
    """``capacity`` streams at full speed, the rest share: throughput flattens, replies slow past the knee."""

    def __init__(self, capacity: int, *, wobble: Callable[[int, int], float] | None = None,
                 slo: Callable[[float, float], bool] | None = None) -> None:
        self.capacity = capacity
        self.now = 0.0
        self.measured: list[int] = []
        self.wobble = wobble or (lambda limit, nth: 1.0)
        self.slo = slo or (lambda throughput, e2e: e2e <= 1.5 * SERVICE_S)

    def clock(self) -> float:
        return self.now

    def measure(self, limit: int) -> Measurement:
        self.measured.append(limit)
        e2e = SERVICE_S * max(1.0, limit / self.capacity)
        throughput = min(limit, self.capacity) / SERVICE_S * self.wobble(limit, self.measured.count(limit))
        seconds = 4 * e2e
        self.now += seconds
        return Measurement(limit, 1, limit, throughput, 0.1, e2e, 0.0, self.slo(throughput, e2e), seconds=seconds)


def test_the_knee_of_a_batching_backend_is_found_in_a_few_measurements() -> None:
    backend = Backend(capacity=8)
    result = Search(backend.measure, max_limit=32, budget_s=10_000, clock=backend.clock).run()
    assert result.chosen == 8  # 9..12 serve no more and slow replies down; 16 breaks the e2e SLO
    assert not result.cut_short
    assert len(set(backend.measured)) <= 32 // 3  # a search, not a sweep
    assert result.tie == []


def test_a_limit_not_a_power_of_two_is_found_by_bisection() -> None:
    backend = Backend(capacity=11)
    result = Search(backend.measure, max_limit=64, budget_s=10_000, clock=backend.clock).run()
    assert result.chosen == 11


def test_the_cap_ends_the_doubling() -> None:
    backend = Backend(capacity=100)
    result = Search(backend.measure, max_limit=20, budget_s=10_000, clock=backend.clock).run()
    assert 20 in backend.measured and max(backend.measured) == 20
    assert result.chosen in (19, 20)  # 19 serves within the 5% noise of 20: the smaller is preferred


def test_no_candidate_meeting_the_slos_chooses_nothing() -> None:
    backend = Backend(capacity=8, slo=lambda throughput, e2e: False)
    result = Search(backend.measure, max_limit=32, budget_s=10_000, clock=backend.clock).run()
    assert result.chosen is None


def test_a_throughput_slo_failing_at_one_user_does_not_stop_the_search() -> None:
    backend = Backend(capacity=8, slo=lambda throughput, e2e: throughput > 3 and e2e <= 1.5 * SERVICE_S)
    result = Search(backend.measure, max_limit=32, budget_s=10_000, clock=backend.clock).run()
    assert result.chosen == 8


def test_an_exhausted_budget_keeps_the_best_so_far_and_says_so() -> None:
    backend = Backend(capacity=8)
    result = Search(backend.measure, max_limit=32, budget_s=12.5, clock=backend.clock).run()
    assert result.cut_short and result.chosen == 2  # 1 (4 s) and 2 (4 s) fit; a third at 5 s would not
    assert backend.now <= 12.5


def test_repeats_that_disagree_more_than_the_difference_make_a_tie() -> None:
    # limit 8 measures 8.0, then 6.4 on its repeat (a 22% spread): 7 (7.0) cannot be told from it
    backend = Backend(capacity=8, wobble=lambda limit, nth: 0.8 if (limit, nth) == (8, 2) else 1.0)
    result = Search(backend.measure, max_limit=32, budget_s=10_000, clock=backend.clock).run()
    assert result.noise > 0.2  # the repeats' disagreement, not the 5% floor
    assert result.chosen is not None and result.chosen < 8
    assert 8 in result.tie
