"""Asyncio task that sends a frame source's due frames to a sink."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

import can

_LOGGER = logging.getLogger(__name__)

FrameSink = Callable[[can.Message], None]


class FrameSource(Protocol):
    """Anything with ReferenceVehicle.due_frames."""

    def due_frames(self, now: float) -> list[can.Message]: ...


class PeriodicTransmitter:
    """Task passing each frame of ``source.due_frames(clock())`` to ``sink``.

    It polls every ``interval`` seconds. The sink is a plain callable, for example
    ``bus.send`` of a python-can bus or ``SocketcandServer.broadcast``. A sink that
    raises can.CanError or OSError loses that frame, the error is logged and
    sending goes on. Any other error ends the task and is raised again by stop().
    """

    def __init__(
        self,
        source: FrameSource,
        sink: FrameSink,
        interval: float = 0.005,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"invalid interval {interval!r}: expected seconds > 0")
        self._source = source
        self._sink = sink
        self._interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.frames_sent = 0
        self.send_errors = 0

    @property
    def running(self) -> bool:
        """True while the task is running."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the task on the running event loop.

        Raises RuntimeError if it already runs.
        """
        if self.running:
            raise RuntimeError("transmitter is already running")
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="sim-transmitter"
        )
        self._task.add_done_callback(_log_crash)

    async def stop(self) -> None:
        """Stop the task and wait for it to end. Does nothing if it is not running."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        _LOGGER.debug("transmitter stopped after %d frames", self.frames_sent)

    async def _run(self) -> None:
        failing = False
        while True:
            for frame in self._source.due_frames(self._clock()):
                try:
                    self._sink(frame)
                except (can.CanError, OSError) as err:
                    self.send_errors += 1
                    if not failing:
                        _LOGGER.error(
                            "sending frame 0x%X failed: %s", frame.arbitration_id, err
                        )
                    failing = True
                    continue
                if failing:
                    _LOGGER.info(
                        "sending works again, %d frames failed so far", self.send_errors
                    )
                    failing = False
                self.frames_sent += 1
            await asyncio.sleep(self._interval)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.error("transmitter stopped by an error", exc_info=task.exception())
