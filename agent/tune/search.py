"""The search for the chat limit: a coarse doubling, then a bisection, within a time budget.

Throughput rises with the limit while the backend (or this process's CPU) has room, then flattens; past the
knee every reply only gets slower. So: measure limits 1, 2, 4, … until the throughput stops rising by more
than the noise or an SLO breaks; if the SLOs broke while it still rose, bisect up between the last limit that
helped and that one; then bisect down to the smallest limit that serves within the noise of the best.
Among the measured limits whose SLOs hold, the best throughput wins — and any limit within the noise of it
beats it if smaller, since a lower limit serves the same with shorter replies. Repeat measurements of the
finalists decide when their difference is within what repeats disagree by; if that stays so, it is a tie.

The measuring is a callable, so the search is tested against a model of a backend without any server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Measurement:
    """One load at one candidate: what the SLOs and the search look at."""

    limit: int
    workers: int
    users: int
    throughput_rps: float
    ttft_p95: float | None
    e2e_p95: float | None
    error_rate: float
    slo_passed: bool
    slo: dict[str, Any] = field(default_factory=dict)  # expression → {"passed", "value", "limit"}
    seconds: float = 0.0  # wall time the measurement took

    def to_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "workers": self.workers, "users": self.users,
                "throughput_rps": round(self.throughput_rps, 4),
                "ttft_p95": None if self.ttft_p95 is None else round(self.ttft_p95, 4),
                "e2e_p95": None if self.e2e_p95 is None else round(self.e2e_p95, 4),
                "error_rate": round(self.error_rate, 4), "slo_passed": self.slo_passed, "slo": self.slo,
                "seconds": round(self.seconds, 2)}


Measure = Callable[[int], Measurement]


@dataclass
class Candidate:
    """A limit with every measurement taken of it."""

    limit: int
    runs: list[Measurement]

    @property
    def throughput(self) -> float:
        return math.fsum(m.throughput_rps for m in self.runs) / len(self.runs)

    @property
    def passed(self) -> bool:
        return all(m.slo_passed for m in self.runs)

    @property
    def spread(self) -> float:
        """How far this candidate's repeats disagree, relative to their mean (0 with one run)."""
        if len(self.runs) < 2 or self.throughput <= 0:
            return 0.0
        values = [m.throughput_rps for m in self.runs]
        return (max(values) - min(values)) / self.throughput


@dataclass
class SearchResult:
    """The outcome: the chosen limit (None: no candidate met the SLOs), and why."""

    chosen: int | None
    candidates: dict[int, Candidate]
    order: list[Measurement]  # every measurement in the order taken
    cut_short: bool  # the budget ran out before the search finished
    tie: list[int]  # limits the measurements could not separate from the chosen one
    noise: float  # the relative difference below which two throughputs count as equal
    seconds: float

    @property
    def best_throughput(self) -> float | None:
        if self.chosen is None:
            return None
        return self.candidates[self.chosen].throughput


@dataclass
class Search:
    """Search the limit in ``[1, max_limit]``; stop before the budget runs out."""

    measure: Measure
    max_limit: int
    budget_s: float
    noise: float = 0.05
    clock: Callable[[], float] = time.monotonic
    on_measured: Callable[[Measurement, str], None] | None = None  # progress: the measurement, the phase
    candidates: dict[int, Candidate] = field(default_factory=dict)
    order: list[Measurement] = field(default_factory=list)
    cut_short: bool = False
    _start: float = 0.0
    _longest: float = 0.0

    def run(self, first: Measurement | None = None) -> SearchResult:
        """Search; ``first`` is a measurement of limit 1 already taken (the one-user baseline)."""
        self._start = self.clock()
        if first is not None:
            self._record(first, "baseline")
        if not self._take(1, "doubling"):
            return self._result()
        lo = 1 if self.candidates[1].passed else None  # the largest limit so far that holds and helped
        previous, limit, hi = 1, 2, None
        while hi is None and previous < self.max_limit:  # doubling
            limit = min(limit, self.max_limit)
            if not self._take(limit, "doubling"):
                return self._result()
            rose = self._rose(limit, previous)
            if self.candidates[limit].passed and (lo is None or self._helps(limit, lo)):
                lo = limit
            if not rose or (not self.candidates[limit].passed and lo is not None):
                hi = limit  # flat, or the SLOs broke after holding: higher only slows replies
            previous, limit = limit, limit * 2
        if lo is None:
            return self._result()
        # Upward: the SLOs broke at `hi` while the throughput still rose; the best lies between.
        while hi is not None and hi - lo > 1 and self._rose(hi, lo):
            mid = (lo + hi) // 2
            if not self._take(mid, "bisection"):
                return self._result()
            if self._helps(mid, lo):
                lo = mid
            else:
                hi = mid
        if not self._descend():
            return self._result()
        self._confirm()
        return self._result()

    def _descend(self) -> bool:
        """Bisect down to the smallest limit that serves within the noise of the best; False: out of budget."""
        passing = [c for c in self.candidates.values() if c.passed]
        best = max(passing, key=lambda c: c.throughput)
        target = best.throughput * (1 - self.noise)

        def good(candidate: Candidate) -> bool:
            return candidate.passed and candidate.throughput >= target

        upper = min(c.limit for c in passing if good(c))
        lower = max((c.limit for c in self.candidates.values() if c.limit < upper and not good(c)), default=0)
        while upper - lower > 1:
            mid = (lower + upper) // 2
            if not self._take(mid, "bisection"):
                return False
            if good(self.candidates[mid]):
                upper = mid
            else:
                lower = mid
        return True

    def _rose(self, limit: int, than: int) -> bool:
        """Whether the throughput rose from ``than`` to ``limit`` by more than the noise, SLOs aside."""
        return self.candidates[limit].throughput > self.candidates[than].throughput * (1 + self.noise)

    # -- steps

    def _helps(self, limit: int, than: int) -> bool:
        """Whether ``limit`` holds its SLOs and serves more than ``than`` by more than the noise."""
        this, base = self.candidates[limit], self.candidates[than]
        return this.passed and this.throughput > base.throughput * (1 + self.noise)

    def _take(self, limit: int, phase: str) -> bool:
        """Measure ``limit`` unless it is known; False when the budget cannot afford another measurement."""
        if limit in self.candidates:
            return True
        if not self._affordable():
            self.cut_short = True
            return False
        self._record(self.measure(limit), phase)
        return True

    def _affordable(self) -> bool:
        """Another measurement fits: the longest one so far (plus a quarter) is what the next may take."""
        spent = self.clock() - self._start
        return spent + self._longest * 1.25 <= self.budget_s

    def _record(self, measurement: Measurement, phase: str) -> None:
        self.candidates.setdefault(measurement.limit, Candidate(measurement.limit, [])).runs.append(measurement)
        self.order.append(measurement)
        self._longest = max(self._longest, measurement.seconds)
        if self.on_measured is not None:
            self.on_measured(measurement, phase)

    def _confirm(self) -> None:
        """Measure the best and the smallest near-best once more each, so a lucky run cannot decide."""
        passing = [c for c in self.candidates.values() if c.passed]
        if not passing:
            return
        best = max(passing, key=lambda c: c.throughput)
        smallest = self._smallest_near(best, passing)
        for candidate in {best.limit: best, smallest.limit: smallest}.values():
            if not self._affordable():
                self.cut_short = True
                return
            self._record(self.measure(candidate.limit), "repeat")

    def _smallest_near(self, best: Candidate, passing: list[Candidate]) -> Candidate:
        noise = self._noise(passing)
        near = [c for c in passing if c.throughput >= best.throughput * (1 - noise)]
        return min(near, key=lambda c: c.limit)

    def _noise(self, candidates: list[Candidate]) -> float:
        """The floor, or what repeats of one candidate disagreed by, whichever is larger."""
        return max([self.noise, *(c.spread for c in candidates)])

    def _result(self) -> SearchResult:
        passing = [c for c in self.candidates.values() if c.passed]
        seconds = self.clock() - self._start
        if not passing:
            return SearchResult(None, self.candidates, self.order, self.cut_short, [], self.noise, seconds)
        noise = self._noise(passing)
        best = max(passing, key=lambda c: c.throughput)
        chosen = self._smallest_near(best, passing)
        # Limits that measured more than the chosen one, by less than the noise: the measurements cannot
        # separate them, and the smaller limit is preferred.
        tie = sorted(c.limit for c in passing if c.throughput > chosen.throughput
                     and c.throughput - chosen.throughput <= chosen.throughput * noise)
        return SearchResult(chosen.limit, self.candidates, self.order, self.cut_short, tie, noise, seconds)
