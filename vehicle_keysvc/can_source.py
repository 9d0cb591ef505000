"""CAN transport: receives the profile's frames with python-can.

Frames reach the monitor on the asyncio loop through a python-can Notifier.
Between frames a ticker re-runs the gate, so a bus that goes silent locks
the keys once its facts are stale.

Bus faults lock the keys at once: a receive error (python-can's Notifier
passes it only to listeners with an ``on_error`` method and then ends its
thread), an error frame such as bus-off, and a socketcand connection that
the server closed (python-can 4.6 reads end of file as "no frame" and never
raises). Each fault episode is logged once. The interface is then closed
and opened again with backoff, and the keys unlock only after fresh frames
confirm the state again. A bus silent for ``reopen_after`` seconds is
reopened the same way.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import can

from .bus_errors import describe_error_frame
from .monitor import VehicleMonitor

_LOGGER = logging.getLogger(__name__)


# Receive filter that lets error frames through python-can's software
# filtering (virtual, socketcand), which matches their error class as an
# extended id below 0x800. Extended data frames with such ids pass too, and
# the monitor drops them as unmapped. On socketcan the kernel delivers error
# frames anyway.
ERROR_FRAME_FILTER = {"can_id": 0, "can_mask": 0x1FFFF800, "extended": True}

# Seconds without a new fault after which frames end a fault episode, so a
# bus that alternates error frames and data frames logs one episode.
_EPISODE_QUIET_TIME = 1.0


class _Listener(can.Listener):
    def __init__(self, source: CanStateSource, notifier_number: int) -> None:
        self._source = source
        self._notifier_number = notifier_number

    def on_message_received(self, msg: can.Message) -> None:
        self._source._on_frame(msg)

    def on_error(self, exc: Exception) -> None:
        self._source._on_receive_error(exc, self._notifier_number)


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
        self._fault_episode: str | None = None
        self._last_fault = 0.0
        self._notifier_number = 0
        # Seconds to wait before reconnecting after the next fault. It grows
        # while faults follow each other, because a bus that opens but fails
        # at once would otherwise be reopened every Notifier timeout.
        self.fault_backoff = 0.0
        self.frames_received = 0
        self.error_frames = 0
        self.reopen_count = 0
        self.fault_count = 0

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

    def _start_connecting(self, wait: float = 0.0) -> None:
        self._connect_task = asyncio.create_task(self._connect(wait), name="can-connect")

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

    async def _connect(self, wait: float = 0.0) -> None:
        if wait > 0:
            await asyncio.sleep(wait)
        delay = 0.5
        failures = 0
        filters = [*self.monitor.profile.can_filters(), ERROR_FRAME_FILTER]
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
            "receiving %d CAN ids and error frames on %s channel %s",
            len(filters) - 1, self.interface, self.channel,
        )
        self._last_frame = time.monotonic()
        self._notifier_number += 1
        listener = _Listener(self, self._notifier_number)
        self._notifier = can.Notifier(
            self._bus, [listener], timeout=0.1, loop=asyncio.get_running_loop()
        )

    def _on_frame(self, frame: can.Message) -> None:
        self._last_frame = time.monotonic()
        if frame.is_error_frame:
            self.error_frames += 1
            self._start_fault_episode(describe_error_frame(frame))
            self.monitor.on_frame(frame)
            return
        self.frames_received += 1
        episode_over = (
            self._fault_episode is not None
            and time.monotonic() - self._last_fault >= _EPISODE_QUIET_TIME
        )
        if self._silent_episode or episode_over:
            _LOGGER.info(
                "CAN frames received again on %s channel %s%s",
                self.interface, self.channel,
                f" after a bus fault ({self._fault_episode})"
                if self._fault_episode else "",
            )
            self._silent_episode = False
            self._fault_episode = None
            self.fault_backoff = 0.0
        self.monitor.on_frame(frame)

    def _on_receive_error(self, exc: Exception, notifier_number: int) -> None:
        """Lock for a receive error and reopen, since the Notifier thread has ended."""
        if self._notifier is None or notifier_number != self._notifier_number:
            return  # the ticker already reopened for this error
        self._fault(f"receive failed: {exc}")

    def _fault(self, reason: str) -> None:
        """Lock at once, then close the interface and connect again with backoff."""
        self._start_fault_episode(reason)
        self.monitor.report_bus_fault(reason)
        self.reopen_count += 1
        self._close_bus()
        self._start_connecting(self.fault_backoff)
        self.fault_backoff = min(max(self.fault_backoff * 2, 0.5), 10.0)

    def _start_fault_episode(self, reason: str) -> None:
        self.fault_count += 1
        self._last_fault = time.monotonic()
        if self._fault_episode is None:
            self._fault_episode = reason
            _LOGGER.warning(
                "CAN bus fault on %s channel %s: %s; keys locked until fresh "
                "frames confirm the state",
                self.interface, self.channel, reason,
            )
        else:
            _LOGGER.debug("CAN bus fault %d in this episode: %s", self.fault_count, reason)

    def _connection_lost(self) -> str | None:
        """Return why the bus is unusable, or None while it works."""
        notifier = self._notifier
        if notifier is None:
            return None
        if notifier.exception is not None:
            return f"receive failed: {notifier.exception}"
        if self.interface != "socketcand" or self._bus is None:
            return None
        # NOTE: python-can 4.6 keeps the socket in a private attribute. Without
        # it, a closed connection is found only by the silence reopen.
        sock = getattr(self._bus, "_SocketCanDaemonBus__socket", None)
        if not isinstance(sock, socket.socket):
            return None
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as err:
            return f"socketcand connection lost: {err}"
        if data == b"":
            return "socketcand connection closed by the server"
        return None

    def _check_bus(self) -> None:
        if self._notifier is None:
            return
        lost = self._connection_lost()
        if lost is not None:
            self._fault(lost)
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
            self._check_bus()
            await asyncio.sleep(self.tick_interval)
