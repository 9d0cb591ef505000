"""Timed state changes of the reference vehicle, and the standard drive cycle."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """State changes applied ``at`` seconds after the scenario starts."""

    at: float
    label: str
    changes: dict[str, Any] = field(default_factory=dict)


class StateTarget(Protocol):
    """Anything that takes state changes the way ReferenceVehicle.set does."""

    def set(self, **changes: Any) -> None: ...


def _speed_ramp(
    start_at: float, speeds_kmh: Sequence[float], interval: float
) -> list[Step]:
    return [
        Step(start_at + index * interval, f"speed {speed:g} km/h", {"speed_kmh": speed})
        for index, speed in enumerate(speeds_kmh)
    ]


# A short trip, 21 s: walk up to the parked car, drive to 50 km/h and back to a
# stop, park and walk away. The speed changes by 5 km/h every 0.5 s (2.8 m/s²).
DRIVE_CYCLE: list[Step] = [
    Step(
        0.0,
        "parked, locked, alarm ARMED, power OFF",
        {
            "power_mode": "OFF",
            "speed_kmh": 0.0,
            "gear": "P",
            "central_lock": "LOCKED",
            "alarm": "ARMED",
        },
    ),
    Step(
        2.0, "unlock, alarm DISARMED", {"central_lock": "UNLOCKED", "alarm": "DISARMED"}
    ),
    Step(3.0, "ignition ACC", {"power_mode": "ACC"}),
    Step(4.0, "ignition RUN", {"power_mode": "RUN"}),
    Step(5.0, "gear D", {"gear": "D"}),
    *_speed_ramp(6.0, range(5, 55, 5), interval=0.5),
    *_speed_ramp(12.0, range(45, -5, -5), interval=0.5),
    Step(17.5, "gear P", {"gear": "P"}),
    Step(18.5, "ignition OFF", {"power_mode": "OFF"}),
    Step(20.0, "lock, alarm ARMED", {"central_lock": "LOCKED", "alarm": "ARMED"}),
    Step(21.0, "parked", {}),
]


async def run_scenario(
    vehicle: StateTarget,
    steps: Sequence[Step],
    on_step: Callable[[Step], None] | None = None,
    speed: float = 1.0,
) -> None:
    """Apply each step's changes to ``vehicle`` at its time, then call ``on_step``.

    Step times count from the call, divided by ``speed`` (2.0 runs twice as fast).
    Waits are measured from the start, so late steps do not add up to drift. Raises
    ValueError when ``speed`` is not a positive finite number or the steps are not
    in time order, before applying any step.
    """
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"invalid speed {speed!r}: expected a positive number")
    for earlier, later in zip(steps[:-1], steps[1:], strict=True):
        if later.at < earlier.at:
            raise ValueError(
                f"steps out of order: {later.label!r} at {later.at} s follows "
                f"{earlier.label!r} at {earlier.at} s"
            )

    loop = asyncio.get_running_loop()
    start = loop.time()
    for step in steps:
        delay = start + step.at / speed - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        vehicle.set(**step.changes)
        _LOGGER.debug("scenario step at %.1f s: %s", step.at, step.label)
        if on_step is not None:
            on_step(step)
