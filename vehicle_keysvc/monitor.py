"""Vehicle monitor: feeds frames to the vehicle state and re-runs the gate.

The monitor keeps the current gate decision. It is driven by two calls,
``on_frame`` for each received frame and ``tick`` between frames, both with
the time on the frames' clock, so a live bus and a replay behave the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import can

from .gate import Decision, Gate
from .profile import Profile
from .vehicle_state import FactChange, FactView, VehicleState

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class LockEvent:
    """The gate decision changed: locked flipped, or its reason changed."""

    decision: Decision
    timestamp: float
    lock_changed: bool


Event = LockEvent | FactChange
Listener = Callable[[Event], None]


class FrameClock:
    """Clock that follows the timestamps of received frames.

    Between frames it advances with the monotonic clock of this process, so
    a silent bus still ages its facts. It never runs backwards.
    """

    def __init__(self) -> None:
        self._frame_time: float | None = None
        self._observed_at = 0.0

    def observe(self, frame_time: float) -> float:
        now = self.now()
        if self._frame_time is None or frame_time > now:
            self._frame_time = frame_time
            self._observed_at = time.monotonic()
            return frame_time
        return now

    def now(self) -> float:
        if self._frame_time is None:
            return time.time()
        return self._frame_time + (time.monotonic() - self._observed_at)


class VehicleMonitor:
    """Current vehicle state and gate decision, with change listeners."""

    def __init__(
        self,
        profile: Profile,
        gate: Gate | None = None,
        clock: FrameClock | None = None,
    ) -> None:
        self.profile = profile
        self.clock = clock or FrameClock()
        self.state = VehicleState(profile)
        self.gate = gate or Gate(profile)
        self.decision = Decision(True, "no vehicle state received yet")
        # Incremented on every change to locked, so a request that started
        # while unlocked can tell that a lock happened while it ran.
        self.lock_epoch = 0
        self._listeners: list[Listener] = []
        self._last_time: float | None = None

    @property
    def locked(self) -> bool:
        return self.decision.locked

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def current_time(self) -> float:
        return self.clock.now()

    def on_frame(self, frame: can.Message, now: float | None = None) -> None:
        """Apply a frame received at ``now`` (seconds on the frames' clock).

        Without ``now``, the frame's own timestamp drives the clock.
        """
        if now is None:
            now = self.clock.observe(frame.timestamp or self.clock.now())
        changes = self.state.process_frame(frame, now)
        for change in changes:
            self._notify(change)
        self.tick(now)

    def tick(self, now: float) -> Decision:
        """Re-run the gate at time ``now``; lock at once if it forbids use."""
        self._last_time = now
        decision = self.gate.evaluate(self.state.view(now))
        previous = self.decision
        if decision == previous:
            return decision
        self.decision = decision
        lock_changed = decision.locked != previous.locked
        if lock_changed and decision.locked:
            self.lock_epoch += 1
        if lock_changed:
            _LOGGER.info(
                "keys %s: %s",
                "locked" if decision.locked else "unlocked",
                decision.reason,
            )
        self._notify(LockEvent(decision, now, lock_changed))
        return decision

    def view(self, now: float | None = None) -> dict[str, FactView]:
        if now is None:
            now = self._last_time if self._last_time is not None else 0.0
        return self.state.view(now)

    def _notify(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                _LOGGER.exception("vehicle state listener failed on %s", event)
