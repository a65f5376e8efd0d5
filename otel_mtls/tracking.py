"""Early warning inside the process: clients that fail too often, and log floods.

``FailureTracker`` counts failed server-side handshakes per client certificate
fingerprint and per client address over a sliding window, and reports a key once
when it crosses the threshold. ``LogLimiter`` caps the failure log records per key
and remembers how many it held back. Both keep their per-key state in a bounded
least-recently-used map, so a flood of distinct certificates or addresses costs a
fixed amount of memory, and both take a clock so that tests need not sleep.

Neither talks to the OpenTelemetry API: they return what happened and the
``Recorder`` turns it into telemetry, outside their locks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Final, Optional

_logger = logging.getLogger(__name__)

Clock = Callable[[], float]

KIND_FINGERPRINT: Final = "fingerprint"
KIND_ADDRESS: Final = "address"
KIND_UNKNOWN: Final = "unknown"


@dataclass(frozen=True)
class Crossing:
    """A key that just had more than ``threshold`` failures within one window."""

    kind: str
    key: str
    count: int
    window: float
    reasons: tuple[str, ...]


class _Failures:
    """The last ``threshold + 1`` failures of one key, as a ring buffer.

    More than ``threshold`` failures fall within a window exactly when the oldest
    of the last ``threshold + 1`` does, so older ones never need to be kept and
    each failure costs O(1) whatever the rate.
    """

    __slots__ = ("alerted_at", "filled", "position", "reasons", "times")

    def __init__(self, size: int) -> None:
        self.times: list[float] = [0.0] * size
        self.reasons: list[str] = [""] * size
        self.position = 0
        self.filled = 0
        self.alerted_at: Optional[float] = None

    def add(self, now: float, reason: str) -> None:
        size = len(self.times)
        self.times[self.position] = now
        self.reasons[self.position] = reason
        self.position = (self.position + 1) % size
        self.filled = min(self.filled + 1, size)

    def oldest(self) -> float:
        """The time of the oldest failure kept (the slot written next)."""
        if self.filled < len(self.times):
            return self.times[0]

        return self.times[self.position]


class FailureTracker:
    """Failures per client fingerprint and per client address, thread-safe.

    A key crosses when its failure count within the last ``window`` seconds
    exceeds ``threshold``: with the defaults, the sixth failure within a minute.
    A key that crossed stays quiet for one ``window`` after the crossing, then
    crosses again on the next failure that finds the count still above the
    threshold. At most ``max_keys`` keys of each kind are tracked; beyond that
    the least recently failing one is forgotten and counted in ``evictions``.
    """

    def __init__(
        self,
        threshold: int = 5,
        window: float = 60.0,
        max_keys: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        if threshold < 1 or window <= 0 or max_keys < 1:
            raise ValueError("threshold, window and max_keys must be positive")

        self.threshold = threshold
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, OrderedDict[str, _Failures]] = {
            KIND_FINGERPRINT: OrderedDict(),
            KIND_ADDRESS: OrderedDict(),
        }
        self.evictions: dict[str, int] = dict.fromkeys(self._keys, 0)

    def tracked(self, kind: str) -> int:
        """How many keys of ``kind`` are tracked now."""
        with self._lock:
            return len(self._keys[kind])

    def failure(
        self, fingerprint: Optional[str], address: Optional[str], reason: str
    ) -> tuple[list[Crossing], dict[str, int]]:
        """Count one failure; return the crossings and the evictions it caused."""
        now = self._clock()
        crossings: list[Crossing] = []
        evicted: dict[str, int] = {}

        with self._lock:
            for kind, key in ((KIND_FINGERPRINT, fingerprint), (KIND_ADDRESS, address)):
                if not key:
                    continue

                crossing, dropped = self._count(kind, key, reason, now)
                if crossing is not None:
                    crossings.append(crossing)
                if dropped:
                    evicted[kind] = dropped

        return crossings, evicted

    def _count(
        self, kind: str, key: str, reason: str, now: float
    ) -> tuple[Optional[Crossing], int]:
        keys = self._keys[kind]
        dropped = 0

        state = keys.get(key)
        if state is None:
            state = keys[key] = _Failures(self.threshold + 1)
            while len(keys) > self.max_keys:
                keys.popitem(last=False)
                dropped += 1
            self.evictions[kind] += dropped
        else:
            keys.move_to_end(key)

        state.add(now, reason)

        if state.filled <= self.threshold or now - state.oldest() >= self.window:
            return None, dropped

        if state.alerted_at is not None and now - state.alerted_at < self.window:
            return None, dropped

        state.alerted_at = now
        reasons = tuple(sorted(set(state.reasons)))
        return Crossing(kind, key, state.filled, self.window, reasons), dropped


@dataclass(frozen=True)
class Suppressed:
    """Failure log records held back for one key during one interval."""

    kind: str
    key: str
    attribute: str
    count: int
    interval: float


class _Budget:
    __slots__ = ("attribute", "emitted", "key", "kind", "started", "suppressed")

    def __init__(self, kind: str, attribute: str, key: str, started: float) -> None:
        self.kind = kind
        self.key = key
        self.attribute = attribute
        self.started = started
        self.emitted = 0
        self.suppressed = 0


class LogLimiter:
    """At most ``limit`` failure log records per key per ``interval``, thread-safe.

    The records held back in an interval are reported once it has ended: at the
    key's next record, or when the key reaches the old end of the LRU map during
    any later call, or when it is evicted (at most ``max_keys`` keys).
    """

    def __init__(
        self,
        limit: int = 10,
        interval: float = 60.0,
        max_keys: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        if limit < 1 or interval <= 0 or max_keys < 1:
            raise ValueError("limit, interval and max_keys must be positive")

        self.limit = limit
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._budgets: OrderedDict[str, _Budget] = OrderedDict()

    def admit(
        self, kind: str, attribute: str, key: str
    ) -> tuple[bool, list[Suppressed]]:
        """Whether this record may be emitted, and the summaries now due."""
        now = self._clock()
        due: list[Suppressed] = []

        with self._lock:
            budget = self._budgets.get(key)
            if budget is not None and now - budget.started >= self.interval:
                self._close(budget, due)
                del self._budgets[key]
                budget = None

            if budget is None:
                budget = self._budgets[key] = _Budget(kind, attribute, key, now)
                while len(self._budgets) > self.max_keys:
                    self._close(self._budgets.popitem(last=False)[1], due)
            else:
                self._budgets.move_to_end(key)

            allowed = budget.emitted < self.limit
            if allowed:
                budget.emitted += 1
            else:
                budget.suppressed += 1

            self._expire(now, due)

        return allowed, due

    def due(self) -> list[Suppressed]:
        """Summaries of intervals that have ended, for a caller with no record."""
        due: list[Suppressed] = []
        if not self._budgets:
            return due

        with self._lock:
            self._expire(self._clock(), due)

        return due

    def flush(self) -> list[Suppressed]:
        """Every pending summary, whether or not its interval has ended."""
        due: list[Suppressed] = []

        with self._lock:
            for budget in self._budgets.values():
                self._close(budget, due)
            self._budgets.clear()

        return due

    def _expire(self, now: float, due: list[Suppressed]) -> None:
        # The oldest entries are the likeliest to have ended; stopping at the first
        # live one keeps this O(1) amortized, each budget is closed once.
        while self._budgets:
            budget = next(iter(self._budgets.values()))
            if now - budget.started < self.interval:
                return

            del self._budgets[budget.key]
            self._close(budget, due)

    def _close(self, budget: _Budget, due: list[Suppressed]) -> None:
        if not budget.suppressed:
            return

        due.append(
            Suppressed(
                budget.kind,
                budget.key,
                budget.attribute,
                budget.suppressed,
                self.interval,
            )
        )
