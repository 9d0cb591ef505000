"""CAN transport: receives the profile's frames with python-can.

Frames reach the monitor on the asyncio loop through a python-can Notifier.
Between frames a ticker re-runs the gate, so a bus that goes silent locks
the keys once its facts are stale.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import can

from .monitor import VehicleMonitor

_LOGGER = logging.getLogger(__name__)


class CanStateSource:
    """Feeds a VehicleMonitor from a python-can bus."""

    def __init__(
        self,
        monitor: VehicleMonitor,
        interface: str,
        channel: str,
        options: dict[str, Any] | None = None,
        tick_interval: float = 0.02,
    ) -> None:
        self.monitor = monitor
        self.interface = interface
        self.channel = channel
        self.options = dict(options or {})
        self.tick_interval = tick_interval
        self._bus: can.BusABC | None = None
        self._notifier: can.Notifier | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.frames_received = 0

    @property
    def connected(self) -> bool:
        return self._notifier is not None

    async def start(self) -> None:
        """Start ticking at once and connect to the bus in the background."""
        self._tasks.append(asyncio.create_task(self._tick_forever(), name="gate-ticker"))
        self._tasks.append(asyncio.create_task(self._connect(), name="can-connect"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None
        if self._bus is not None:
            self._bus.shutdown()
            self._bus = None

    async def _connect(self) -> None:
        delay = 0.5
        filters = self.monitor.profile.can_filters()
        while True:
            try:
                # Opening a socketcand bus blocks while it connects.
                self._bus = await asyncio.to_thread(
                    can.Bus,
                    interface=self.interface,
                    channel=self.channel,
                    can_filters=filters,
                    **self.options,
                )
                break
            except (can.CanError, OSError, ValueError, TimeoutError) as err:
                _LOGGER.error(
                    "cannot open CAN interface %s channel %s: %s; retrying in %.1f s",
                    self.interface, self.channel, err, delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        _LOGGER.info(
            "receiving %d CAN ids on %s channel %s",
            len(filters), self.interface, self.channel,
        )
        # TODO: python-can's Notifier keeps no receive errors for listeners,
        # and the socketcand client returns no error when the server closes
        # the connection. Until that is detected, a lost bus locks the keys
        # through staleness only, and is not reopened.
        self._notifier = can.Notifier(
            self._bus, [self._on_frame], timeout=0.1, loop=asyncio.get_running_loop()
        )

    def _on_frame(self, frame: can.Message) -> None:
        self.frames_received += 1
        self.monitor.on_frame(frame)

    async def _tick_forever(self) -> None:
        while True:
            self.monitor.tick(self.monitor.current_time())
            await asyncio.sleep(self.tick_interval)
