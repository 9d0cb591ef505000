"""Fixtures that start real swtpm, dbus-daemon, simulator and service processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from sim.processes import DbusDaemon, Swtpm, start_dbus_daemon, start_swtpm, stop_process

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
REFERENCE_PROFILE = REPO / "dbc" / "reference.profile.toml"
FORD_PROFILE = REPO / "dbc" / "ford_gt350.profile.toml"
FORD_LOG = DATA / "keyofftokeyonandlocks.log"
SERVICE_START_TIMEOUT = 30.0


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    tpm = start_swtpm(tmp_path / "tpm")
    try:
        yield tpm
    finally:
        tpm.stop()


@pytest.fixture
def dbus_daemon() -> Iterator[DbusDaemon]:
    daemon = start_dbus_daemon()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest_asyncio.fixture
async def bus(dbus_daemon: DbusDaemon) -> AsyncIterator[MessageBus]:
    connection = await MessageBus(bus_address=dbus_daemon.address).connect()
    try:
        yield connection
    finally:
        connection.disconnect()
        await connection.wait_for_disconnect()


def write_config(
    directory: Path,
    *,
    tcti: str,
    bus_address: str,
    profile: Path = REFERENCE_PROFILE,
    can_port: int | None = None,
    pcrs: str = "sha256:7,16",
    admin_uids: tuple[int, ...] = (0,),
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    can_section = 'interface = "virtual"\nchannel = "unused"\n'
    if can_port is not None:
        can_section = textwrap.dedent(f"""\
            interface = "socketcand"
            channel = "vcan0"
            options = {{ host = "127.0.0.1", port = {can_port} }}
            """)
    path = directory / "keysvc.toml"
    path.write_text(
        textwrap.dedent(f"""\
            [tpm]
            tcti = "{tcti}"
            pcrs = "{pcrs}"

            [dbus]
            bus = "{bus_address}"

            [access]
            admin_uids = [{", ".join(str(u) for u in admin_uids)}]

            [storage]
            key_dir = "{directory / 'keys'}"

            [vehicle]
            profile = "{profile}"
            tick_interval_ms = 20

            [logging]
            level = "DEBUG"

            [can]
            """)
        + can_section
    )
    return path


class ServiceProcess:
    """The service run as its own process, as systemd would run it."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vehicle_keysvc.cli", "run", "--config", str(config)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        stop_process(self.proc, grace=10.0)
        self._log.close()
        return self.proc.returncode


async def name_has_owner(bus: MessageBus, name: str) -> bool:
    reply = await bus.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="NameHasOwner", signature="s",
        body=[name]))
    assert reply is not None and reply.message_type == MessageType.METHOD_RETURN
    return bool(reply.body[0])


async def wait_for_service(service: ServiceProcess, bus: MessageBus) -> None:
    deadline = time.monotonic() + SERVICE_START_TIMEOUT
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise AssertionError(
                f"service exited with {service.proc.returncode}:\n{service.log()}"
            )
        if await name_has_owner(bus, "org.webinos.KeyStorage1"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"service did not own its name in time:\n{service.log()}")


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll an async or plain predicate until it is true or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
