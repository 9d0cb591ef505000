"""systemd readiness and watchdog notifications over ``$NOTIFY_SOCKET``.

The protocol is a datagram of newline-separated ``NAME=value`` lines sent to
the unix socket named in ``$NOTIFY_SOCKET``. A name that starts with ``@``
is in the abstract namespace (sd_notify(3), systemd 252). Without that
variable, as outside systemd, every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

_LOGGER = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends sd_notify messages to the socket systemd passed in the environment."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = _watchdog_interval(env)
        self._socket: socket.socket | None = None
        self._watchdog_task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``NAME=value`` fields in one datagram; return whether it was sent.

        A failed send is logged and otherwise ignored, because the service
        works the same without systemd listening.
        """
        if self.address is None:
            return False
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError as err:
            _LOGGER.warning("sd_notify %s to NOTIFY_SOCKET failed: %s", fields[0], err)
            return False
        return True

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd 253+ match the reload (Type=notify-reload).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str) -> None:
        self.notify("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def start_watchdog(self) -> None:
        """Send WATCHDOG=1 at half the interval systemd asked for (WatchdogSec=).

        The pings come from a task on the service's event loop, so a loop
        that hangs stops them and systemd restarts the service.
        """
        if self.address is None or self.watchdog_interval is None:
            return
        if self._watchdog_task is None:
            self._watchdog_task = asyncio.get_running_loop().create_task(
                self._ping_forever(self.watchdog_interval / 2), name="sd-watchdog"
            )

    async def stop_watchdog(self) -> None:
        task, self._watchdog_task = self._watchdog_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def _ping_forever(self, period: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(period)


def _socket_address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # NOTE: systemd 254+ also accepts vsock: addresses; they are not supported.
    _LOGGER.warning("NOTIFY_SOCKET %r is not a unix socket path; not notifying", value)
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Return WatchdogSec in seconds if it applies to this process, else None."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        interval = int(usec) / 1_000_000
    except ValueError:
        _LOGGER.warning("WATCHDOG_USEC %r is not an integer; no watchdog pings", usec)
        return None
    return interval if interval > 0 else None
