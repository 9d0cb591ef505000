"""A real Ford GT350 recording replayed through the running service."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conftest import FORD_LOG, FORD_PROFILE, ServiceProcess, wait_for_service, wait_until, write_config
from sim.replay import replay_log
from sim.socketcand import SocketcandServer
from vehicle_keysvc.client import KeyStorageClient

POWER = "Vehicle.LowVoltageSystemState"


@pytest.mark.asyncio
@pytest.mark.parametrize("speed", [1.0, 20.0])
async def test_ford_replay_through_service(swtpm, dbus_daemon, bus, tmp_path: Path,
                                           speed: float) -> None:
    server = SocketcandServer(port=0)
    await server.start()
    config = write_config(tmp_path, tcti=swtpm.tcti, bus_address=dbus_daemon.address,
                          profile=FORD_PROFILE, can_port=server.port)
    service = ServiceProcess(config, tmp_path / "service.log")
    try:
        await wait_for_service(service, bus)
        client = KeyStorageClient(bus)
        locks: list[tuple[bool, str]] = []
        power: list[Any] = []

        def on_state(state: dict[str, dict[str, Any]]) -> None:
            value = state[POWER].get("value")
            if value is not None and (not power or power[-1] != value):
                power.append(value)

        await client.watch(lambda locked, reason: locks.append((locked, reason)), on_state)
        await wait_until(lambda: server.client_count == 1)
        await asyncio.sleep(0.2)  # the service's socketcand reader is running

        sent = await replay_log(FORD_LOG, server.broadcast, speed=speed,
                                recorded_timestamps=True)

        await wait_until(lambda: len(locks) >= 2, timeout=15.0)
        assert sent == 12874
        assert power == ["OFF", "ON"]
        assert locks[0] == (False, f"{POWER} is ON")
        assert locks[1] == (
            True, f"{POWER} is stale: no BodyInfo_3_FD1 frame for more than 1.50 s")
        assert len(locks) == 2
    finally:
        assert service.stop() == 0
        await server.stop()
