"""CAN transport: receives the profile's frames with python-can.

Frames reach the monitor on the asyncio loop through a python-can Notifier.
Between frames a ticker re-runs the gate, so a bus that goes silent locks
the keys once its facts are stale. A bus silent for ``reopen_after``
seconds is closed and opened again with backoff, because python-can reports
no error to listeners when, for example, a socketcand server goes away.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
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
        reopen_after: float = 2.0,
    ) -> None:
        self.monitor = monitor
        self.interface = interface
        self.channel = channel
        self.options = dict(options or {})
        self.tick_interval = tick_interval
        self._bus: can.BusABC | None = None
        self._notifier: can.Notifier | None = None
        self.reopen_after = reopen_after
        self._tasks: list[asyncio.Task[None]] = []
        self._connect_task: asyncio.Task[None] | None = None
        self._last_frame = time.monotonic()
        self._silent_episode = False
        self.frames_received = 0
        self.reopen_count = 0

    @property
    def connected(self) -> bool:
        return self._notifier is not None

    async def start(self) -> None:
        """Start ticking at once and connect to the bus in the background."""
        self._tasks.append(asyncio.create_task(self._tick_forever(), name="gate-ticker"))
        self._start_connecting()

    async def stop(self) -> None:
        tasks = list(self._tasks)
        if self._connect_task is not None:
            tasks.append(self._connect_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        self._connect_task = None
        self._close_bus()

    def _start_connecting(self) -> None:
        self._connect_task = asyncio.create_task(self._connect(), name="can-connect")

    def _close_bus(self) -> None:
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None
        if self._bus is not None:
            self._bus.shutdown()
            self._bus = None

    def _server_reachable(self) -> bool:
        """Check that a socketcand server accepts connections.

        python-can's socketcand client retries for 10 s without pausing and
        logs every attempt, so the service probes first.
        """
        if self.interface != "socketcand":
            return True
        address = (str(self.options.get("host")), int(self.options.get("port", 29536)))
        try:
            with socket.create_connection(address, timeout=1.0):
                return True
        except OSError:
            return False

    async def _connect(self) -> None:
        delay = 0.5
        failures = 0
        filters = self.monitor.profile.can_filters()
        while True:
            try:
                if not await asyncio.to_thread(self._server_reachable):
                    raise OSError(f"no socketcand server at {self.options.get('host')}:"
                                  f"{self.options.get('port')}")
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
                failures += 1
                # Log the first failure and then every 10th, not every retry.
                level = logging.ERROR if failures % 10 == 1 else logging.DEBUG
                _LOGGER.log(
                    level,
                    "cannot open CAN interface %s channel %s (attempt %d): %s; "
                    "retrying in %.1f s",
                    self.interface, self.channel, failures, err, delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        _LOGGER.info(
            "receiving %d CAN ids on %s channel %s",
            len(filters), self.interface, self.channel,
        )
        self._last_frame = time.monotonic()
        self._notifier = can.Notifier(
            self._bus, [self._on_frame], timeout=0.1, loop=asyncio.get_running_loop()
        )

    def _on_frame(self, frame: can.Message) -> None:
        self.frames_received += 1
        self._last_frame = time.monotonic()
        if self._silent_episode:
            self._silent_episode = False
            _LOGGER.info("CAN frames received again on %s channel %s",
                         self.interface, self.channel)
        self.monitor.on_frame(frame)

    def _reopen_if_silent(self) -> None:
        if self._notifier is None:
            return
        silent_for = time.monotonic() - self._last_frame
        if silent_for < self.reopen_after:
            return
        if not self._silent_episode:
            self._silent_episode = True
            _LOGGER.warning(
                "no CAN frame on %s channel %s for %.1f s; reopening the interface",
                self.interface, self.channel, silent_for,
            )
        self.reopen_count += 1
        self._close_bus()
        self._start_connecting()

    async def _tick_forever(self) -> None:
        while True:
            self.monitor.tick(self.monitor.current_time())
            self._reopen_if_silent()
            await asyncio.sleep(self.tick_interval)
