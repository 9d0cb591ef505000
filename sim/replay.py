"""Replay of recorded CAN logs with their recorded timing."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import can

_LOGGER = logging.getLogger(__name__)

# Frames due sooner than this (seconds) are sent without sleeping first.
_MIN_SLEEP = 0.001
# Yield to the event loop at least this often, so that sockets get written
# while the replay is behind its schedule.
_FRAMES_PER_YIELD = 64


async def replay_log(
    path: str | Path,
    sink: Callable[[can.Message], None],
    speed: float = 1.0,
    on_frame: Callable[[can.Message], None] | None = None,
    recorded_timestamps: bool = False,
) -> int:
    """Send the frames of a CAN log to ``sink``, spaced as recorded over ``speed``.

    Reads every format that ``can.LogReader`` reads (.log, .asc, .trc, .blf and
    more). The first frame is sent at once. Each frame's timestamp is rewritten
    to the wall-clock time (``time.time()``, seconds) at which it is due: replay
    start plus its recorded offset from the first frame, divided by ``speed``.
    With ``recorded_timestamps`` the timestamp is replay start plus the
    recorded offset, not divided by ``speed``: frames arrive faster but keep
    their recorded spacing, so a receiver whose clock follows the frames
    gets the same timeline at any speed. Error frames and remote frames are
    skipped. ``on_frame`` is called after
    ``sink`` with each sent frame. Returns the number of frames sent.
    Raises ValueError for a speed that is not a positive finite number.
    """
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"invalid speed {speed!r}: expected a positive number")

    loop = asyncio.get_running_loop()
    first_recorded: float | None = None
    start_loop = start_wall = 0.0
    sent = skipped = 0

    with can.LogReader(path) as reader:
        for msg in reader:
            if msg.is_error_frame or msg.is_remote_frame:
                skipped += 1
                _LOGGER.debug("skipping error or remote frame: %s", msg)
                continue

            if first_recorded is None:
                first_recorded = msg.timestamp
                start_loop, start_wall = loop.time(), time.time()
            offset = (msg.timestamp - first_recorded) / speed

            delay = start_loop + offset - loop.time()
            if delay > _MIN_SLEEP:
                await asyncio.sleep(delay)
            elif sent % _FRAMES_PER_YIELD == 0:
                await asyncio.sleep(0)

            recorded_offset = msg.timestamp - first_recorded
            msg.timestamp = start_wall + (recorded_offset if recorded_timestamps else offset)
            sink(msg)
            if on_frame is not None:
                on_frame(msg)
            sent += 1

    _LOGGER.info(
        "replayed %d frames from %s at speed %g, skipped %d error or remote frames",
        sent,
        path,
        speed,
        skipped,
    )
    return sent
