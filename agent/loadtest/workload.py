"""What a load test sends and for how long: the workload, validated before anything starts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class WorkloadError(ValueError):
    """A workload that cannot run as given; one line per problem."""


@dataclass(frozen=True)
class Workload:
    """What to send and for how long; every run is bounded by ``duration`` and ``max_requests``."""

    users: int = 10
    turns: int = 3
    think_time: float = 0.0
    ramp_up: float = 0.0
    rate: float | None = None
    duration: float = 300.0
    max_requests: int = 10_000
    warmup_s: float = 0.0
    warmup_turns: int = 0
    timeout: float = 120.0
    seed: int | None = None
    prime: int = 1  # uncounted turns before the run, from a session of their own

    @property
    def mode(self) -> str:
        return "open" if self.rate is not None else "closed"

    @property
    def planned(self) -> int:
        """Requests the run will send unless it is cut short."""
        if self.rate is None:
            return min(self.users * self.turns, self.max_requests)
        expected = math.ceil(self.rate * self.duration)
        if self.users:
            expected = min(expected, self.users * self.turns)
        return min(expected, self.max_requests)

    def validate(self) -> list[str]:
        """Problems, phrased for the command line."""
        problems = []
        if self.users < 0 or (self.rate is None and self.users < 1):
            problems.append(f"--users {self.users}: need at least 1")
        if self.turns < 1:
            problems.append(f"--turns {self.turns}: need at least 1")
        if self.rate is not None and not self.rate > 0:
            problems.append(f"--rate {self.rate}: need a positive number of requests per second")
        for name, value in (("--think-time", self.think_time), ("--ramp-up", self.ramp_up),
                            ("--warmup", self.warmup_s)):
            if value < 0:
                problems.append(f"{name} {value}: cannot be negative")
        if not self.duration > 0:
            problems.append(f"--duration {self.duration}: need a positive number of seconds")
        if not self.timeout > 0:
            problems.append(f"--timeout {self.timeout}: need a positive number of seconds")
        if self.max_requests < 1:
            problems.append(f"--max-requests {self.max_requests}: need at least 1")
        if self.prime < 0:
            problems.append(f"--prime {self.prime}: cannot be negative")
        if self.warmup_turns < 0:
            problems.append(f"--warmup-turns {self.warmup_turns}: cannot be negative")
        return problems

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "users": self.users,
            "turns": self.turns,
            "think_time_s": self.think_time,
            "ramp_up_s": self.ramp_up,
            "rate_rps": self.rate,
            "duration_s": self.duration,
            "max_requests": self.max_requests,
            "warmup_s": self.warmup_s,
            "warmup_turns": self.warmup_turns,
            "timeout_s": self.timeout,
            "seed": self.seed,
            "prime": self.prime,
        }
