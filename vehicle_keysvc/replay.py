"""Offline replay of a CAN recording through the vehicle state and the gate.

The recording's own timestamps drive the clock, and the gate is re-run every
``tick`` seconds of recording time between frames, exactly as the live
service does, so the timeline does not depend on how fast the file is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can

from .monitor import Event, LockEvent, VehicleMonitor
from .profile import Profile
from .vehicle_state import FactChange

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimelineEntry:
    """One line of a replay timeline; ``time`` is seconds from the first frame."""

    time: float
    kind: str  # "state" or "gate"
    fact: str | None
    value: Any
    locked: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": round(self.time, 4),
            "kind": self.kind,
            "fact": self.fact,
            "value": self.value,
            "locked": self.locked,
            "reason": self.reason,
        }

    def __str__(self) -> str:
        gate = "locked" if self.locked else "unlocked"
        if self.kind == "gate":
            return f"{self.time:8.3f}s  gate   {gate.upper():8s}  {self.reason}"
        shown = self.value if self.value is not None else "(none)"
        return f"{self.time:8.3f}s  state  {self.fact} = {shown}  [{self.reason}]"


def read_frames(path: str | Path) -> Iterator[can.Message]:
    """Yield the data frames of any log format python-can reads."""
    with can.LogReader(str(path)) as reader:
        for frame in reader:
            if frame.is_error_frame or frame.is_remote_frame:
                continue
            yield frame


def replay(
    profile: Profile, frames: Iterable[can.Message], tick: float = 0.02
) -> list[TimelineEntry]:
    """Run frames through a fresh monitor; return the state and gate timeline."""
    monitor = VehicleMonitor(profile)
    timeline: list[TimelineEntry] = []
    start: float | None = None

    def record(event: Event) -> None:
        assert start is not None
        if isinstance(event, FactChange):
            reason = event.problem or "valid"
            timeline.append(
                TimelineEntry(event.timestamp - start, "state", event.fact, event.new,
                              monitor.locked, reason)
            )
        elif isinstance(event, LockEvent):
            timeline.append(
                TimelineEntry(event.timestamp - start, "gate", None, None,
                              event.decision.locked, event.decision.reason)
            )

    monitor.add_listener(record)
    next_tick = 0.0
    last = 0.0
    for frame in frames:
        if start is None:
            start = frame.timestamp
            next_tick = start
        while next_tick < frame.timestamp:
            monitor.tick(next_tick)
            next_tick += tick
        monitor.on_frame(frame, frame.timestamp)
        last = frame.timestamp
    if start is not None:
        # Let the state run out after the last frame so staleness shows.
        end = last + max(m.cycle_time for m in profile.messages.values()) * (
            profile.stale_after_cycles + 1
        )
        while next_tick <= end:
            monitor.tick(next_tick)
            next_tick += tick
    return timeline
