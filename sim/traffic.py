"""Unrelated CAN traffic: frames on ids that the vehicle profile does not read.

A busy bus carries far more frames than the few state messages the key
service reads. These frame sources add such traffic, for tests and the
benchmark, on 11-bit ids outside the reference vehicle's DBC.
"""

from __future__ import annotations

import random

import can

# Ids of dbc/vehicle.dbc, which the traffic never uses.
_STATE_IDS = frozenset({0x110, 0x120, 0x130, 0x140, 0x150})


def unrelated_ids(count: int, seed: int = 1) -> list[int]:
    """Return ``count`` distinct 11-bit ids outside the reference vehicle's DBC."""
    candidates = [i for i in range(0x000, 0x800) if i not in _STATE_IDS]
    return random.Random(seed).sample(candidates, count)


def burst(count: int, timestamp: float, ids: list[int] | None = None) -> list[can.Message]:
    """Return ``count`` 8-byte frames on unrelated ids, cycling through ``ids``."""
    ids = ids or unrelated_ids(64)
    return [
        can.Message(
            timestamp=timestamp,
            arbitration_id=ids[index % len(ids)],
            is_extended_id=False,
            data=index.to_bytes(8, "little"),
        )
        for index in range(count)
    ]


class UnrelatedTraffic:
    """Frame source (like ReferenceVehicle.due_frames) of unrelated frames.

    Returns frames at ``rate`` frames per second on average, spread over
    ``ids``. A late call returns the frames that fell due since the last
    call, so the average rate holds when the caller polls irregularly.
    """

    def __init__(self, rate: float, ids: list[int] | None = None) -> None:
        if not rate > 0:
            raise ValueError(f"invalid rate {rate!r}: expected frames per second > 0")
        self.rate = rate
        self.ids = ids or unrelated_ids(64)
        self._start: float | None = None
        self._sent = 0

    def due_frames(self, now: float) -> list[can.Message]:
        if self._start is None:
            self._start = now
        due = int((now - self._start) * self.rate) - self._sent
        if due <= 0:
            return []
        frames = burst(due, now, self.ids)
        for offset, frame in enumerate(frames):
            frame.arbitration_id = self.ids[(self._sent + offset) % len(self.ids)]
        self._sent += due
        return frames
