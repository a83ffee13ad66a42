"""``FrameClock``: how long the GUI's event loop is blocked per tick, and how often ticks come."""

from __future__ import annotations

from collections import deque

__all__ = ["FrameClock"]


class FrameClock:
    """Keeps the last ``keep`` ticks that trained: each tick's duration (the time the window could not react to
    input) and the period since the previous tick's start (one frame as the user sees it)."""

    def __init__(self, keep: int = 2048) -> None:
        self.durations: deque[float] = deque(maxlen=keep)  #: seconds each tick blocked the event loop
        self.periods: deque[float] = deque(maxlen=keep)  #: seconds from one training tick's start to the next's
        self.ticks = 0  #: training ticks recorded in all
        self._last_start: float | None = None

    def record(self, start: float, end: float) -> None:
        """One training tick ran from ``start`` to ``end`` (``time.perf_counter()`` values)."""
        if self._last_start is not None:
            self.periods.append(start - self._last_start)
        self.durations.append(end - start)
        self._last_start = start
        self.ticks += 1

    def idle(self) -> None:
        """A tick that did not train: the next training tick starts a new period."""
        self._last_start = None

    def summary(self) -> dict[str, float]:
        """Milliseconds: median, 95th percentile and maximum of tick durations and frame periods (empty before
        two training ticks)."""
        if not self.periods:
            return {}
        return {
            **_stats("tick", self.durations),
            **_stats("frame", self.periods),
            "frames": float(len(self.periods)),
        }

    def text(self) -> str:
        stats = self.summary()
        if not stats:
            return "frame times: not training"
        return (
            f"frame {stats['frame_p50_ms']:.0f} ms (p95 {stats['frame_p95_ms']:.0f}, max {stats['frame_max_ms']:.0f})"
            f" \u00b7 event loop blocked {stats['tick_p50_ms']:.0f} ms per tick (p95 {stats['tick_p95_ms']:.0f})"
        )


def _stats(name: str, values: deque[float]) -> dict[str, float]:
    ordered = sorted(values)
    last = len(ordered) - 1
    return {
        f"{name}_p50_ms": ordered[last // 2] * 1e3,
        f"{name}_p95_ms": ordered[round(last * 0.95)] * 1e3,
        f"{name}_max_ms": ordered[last] * 1e3,
    }
