"""A backend that saturates (``sim.capacity``): beyond that many decoding replies, they share its token rate.

A batching inference server decodes up to its batch size at full speed; past that the total token rate
stays flat and every sequence slows down. :class:`SharedRate` models it as processor sharing on a
virtual clock: every decoding reply advances at the same speed, ``min(1, capacity / decoding)`` of full
speed, so a reply's token deadlines are fixed in virtual seconds (seconds of work at full speed) and only
their mapping to real time moves when a reply joins or leaves. A reply still has one timer armed for its
next token, as without a capacity: no per-token work is added.

Re-arming every member's timer on each join or leave would cost O(decoding) per change. Timers are
re-armed only when the speed has drifted more than :data:`DRIFT` from a speed some timer was armed at
(and always for members that ask, such as non-streaming replies, whose one timer spans the whole reply);
a streaming timer armed at a speed within :data:`DRIFT` fires at most that share of one gap early or
late, and since deadlines are virtual the error never accumulates. Below capacity the speed stays 1 and
nothing is re-armed at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

DRIFT = 0.05  # a speed change smaller than this leaves streaming timers as armed
SLACK_S = 0.002  # a timer firing this early (real seconds) is on time: event loops round timers to ~1 ms


class Member(Protocol):
    """A decoding reply: re-arms its one timer at :meth:`SharedRate.real_time` of its next deadline."""

    def retime(self) -> None: ...


class SharedRate:
    """The virtual clock of the replies decoding on one simulator with a capacity.

    ``clock`` is the event loop's time, ``call_soon`` its scheduler: re-arming is coalesced to once per
    loop iteration, so a burst of joins re-arms each timer once.
    """

    def __init__(self, capacity: int, clock: Callable[[], float], call_soon: Callable[[Callable[[], None]], Any]):
        if capacity < 1:
            raise ValueError("capacity must be at least 1 (0 means no SharedRate at all)")
        self.capacity = capacity
        self._clock = clock
        self._call_soon = call_soon
        self.members: set[Member] = set()
        self.exact: set[Member] = set()
        self.speed = 1.0
        self._t0 = clock()
        self._v0 = 0.0
        self._lo = self._hi = 1.0  # the speeds timers may be armed at since the last full re-arm
        self._full = False
        self._pending = False

    def now(self) -> float:
        """Virtual now: seconds of full-speed work each member has been given so far."""
        return self._v0 + (self._clock() - self._t0) * self.speed

    def real_time(self, virtual: float) -> float:
        """The loop time at which virtual time reaches ``virtual``, if no one joins or leaves before."""
        return self._t0 + (virtual - self._v0) / self.speed

    def due(self, deadline: float, span: float = 0.0) -> bool:
        """Whether a timer for ``deadline`` that fired now is on time, rather than armed at an older, faster speed.

        ``span`` is the virtual length of the wait it ends (one gap for a stream): a timer left armed
        through a small speed change may fire up to :data:`DRIFT` of it early.
        """
        return deadline - self.now() <= 2 * DRIFT * span + SLACK_S * self.speed

    def join(self, member: Member, *, exact: bool = False) -> float:
        """Start decoding ``member`` (re-armed on every speed change if ``exact``); returns virtual now."""
        self.members.add(member)
        if exact:
            self.exact.add(member)
        return self._respeed()

    def leave(self, member: Member) -> None:
        """Stop counting ``member`` (finished, cut, stalled or cancelled); the others speed up. Idempotent."""
        if member in self.members:
            self.members.discard(member)
            self.exact.discard(member)
            self._respeed()

    def _respeed(self) -> float:
        t = self._clock()
        v = self._v0 + (t - self._t0) * self.speed
        self._t0, self._v0 = t, v
        n = len(self.members)
        speed = min(1.0, self.capacity / n) if n else 1.0
        if speed != self.speed:
            self.speed = speed
            self._lo, self._hi = min(self._lo, speed), max(self._hi, speed)
            self._full = self._full or self._hi > self._lo * (1 + DRIFT)
            if not self._pending and (self._full or self.exact):
                self._pending = True
                self._call_soon(self._retime)
        return v

    def _retime(self) -> None:
        self._pending = False
        if self._full:
            self._full = False
            self._lo = self._hi = self.speed
            targets = list(self.members)
        else:
            targets = list(self.exact)
        for member in targets:
            member.retime()
