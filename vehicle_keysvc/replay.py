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

from .logfiles import LogStats, read_log
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
    signal: str | None = None  # Message.Signal whose frame changed the fact
    e2e: str | None = None  # E2E status of that frame, None if unprotected

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": round(self.time, 4),
            "kind": self.kind,
            "fact": self.fact,
            "signal": self.signal,
            "value": self.value,
            "e2e": self.e2e,
            "locked": self.locked,
            "reason": self.reason,
        }

    def __str__(self) -> str:
        gate = "locked" if self.locked else "unlocked"
        if self.kind == "gate":
            return f"{self.time:8.3f}s  gate   {gate.upper():8s}  {self.reason}"
        shown = self.value if self.value is not None else "(none)"
        e2e = f" E2E {self.e2e}" if self.e2e else ""
        return (
            f"{self.time:8.3f}s  state  {self.fact} = {shown}  from {self.signal}"
            f"{e2e}  [{self.reason}]"
        )


def read_frames(path: str | Path, stats: LogStats | None = None) -> Iterator[can.Message]:
    """Yield the data frames of a recording; malformed lines are skipped.

    Error and remote frames are counted in ``stats`` and not yielded.
    """
    for frame in read_log(path, stats):
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
            e2e = event.e2e_status.value if event.e2e_status is not None else None
            timeline.append(
                TimelineEntry(event.timestamp - start, "state", event.fact, event.new,
                              monitor.locked, reason, event.source, e2e)
            )
        elif isinstance(event, LockEvent):
            timeline.append(
                TimelineEntry(event.timestamp - start, "gate", None, None,
                              event.decision.locked, event.decision.reason)
            )

    monitor.add_listener(record)
    # The live service receives only the mapped ids (its CAN filters), so
    # the replay passes only those to the monitor too.
    mapped = {(m.frame_id, m.is_extended_id) for m in profile.messages.values()}
    next_tick = 0.0
    last = 0.0
    for frame in frames:
        if start is None:
            start = frame.timestamp
            next_tick = start
        while next_tick < frame.timestamp:
            monitor.tick(next_tick)
            next_tick += tick
        if (frame.arbitration_id, frame.is_extended_id) in mapped:
            monitor.on_frame(frame, frame.timestamp)
        last = frame.timestamp
    if start is not None:
        # Let the state run out after the last frame so staleness shows.
        end = last + profile.max_age + max(
            m.cycle_time for m in profile.messages.values()
        )
        while next_tick <= end:
            monitor.tick(next_tick)
            next_tick += tick
    return timeline
