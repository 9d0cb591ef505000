"""A real Chevrolet Camaro recording replayed through the running service.

The simulator's socketcand server sends the engine start of engineon.log in
three parts. Between them it repeats one recorded power mode frame, as the
car would while it stays in that state, so the test can call Sign while the
state holds. The service runs as its own process on swtpm and a private
dbus-daemon, and the test checks it over D-Bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from pathlib import Path
from typing import Any

import can
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from conftest import DATA, REPO, ServiceProcess, wait_for_service, wait_until, write_config
from sim.replay import replay_log
from sim.socketcand import SocketcandServer
from vehicle_keysvc.client import KeyStorageClient, KeyStorageError

POWER = "Vehicle.LowVoltageSystemState"
CAMARO_PROFILE = REPO / "dbc" / "chevrolet_camaro.profile.toml"
DIGEST = hashlib.sha256(b"webinos PZP authentication").digest()
# Recorded BCMGeneralPlatformStatus frames: both power modes Run (from
# 1.82 s), and Crank Request with the backup still at Run (from 4.13 s).
RUN_FRAME = bytes.fromhex("ae0a00001800007a")
CRANK_FRAME = bytes.fromhex("ab0a00001800007a")
CONTRADICTION = (
    f"{POWER} is invalid: contradiction: BCMGeneralPlatformStatus.SystemPowerMode "
    "is START but BCMGeneralPlatformStatus.SystemBackUpPowerMode is ON"
)


def split_log(source: Path, directory: Path, cuts: list[float]) -> list[Path]:
    """Split a candump log at the given seconds after its first frame."""
    lines = source.read_text().splitlines(keepends=True)
    first = float(lines[0].split(")", 1)[0][1:])
    parts: list[list[str]] = [[] for _ in range(len(cuts) + 1)]
    for line in lines:
        offset = float(line.split(")", 1)[0][1:]) - first
        parts[sum(offset >= cut for cut in cuts)].append(line)
    paths = []
    for index, part in enumerate(parts):
        path = directory / f"part{index}.log"
        path.write_text("".join(part))
        paths.append(path)
    return paths


@contextlib.asynccontextmanager
async def holding(server: SocketcandServer, data: bytes):
    """Send one BCMGeneralPlatformStatus frame every 50 ms while inside."""
    async def repeat() -> None:
        while True:
            server.broadcast(can.Message(arbitration_id=0x1F1, data=data,
                                         is_extended_id=False, timestamp=time.time()))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(repeat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def sign_error(client: KeyStorageClient) -> KeyStorageError:
    with pytest.raises(KeyStorageError) as caught:
        await client.sign("pzp", DIGEST)
    return caught.value


@pytest.mark.asyncio
async def test_camaro_engine_start_through_service(swtpm, dbus_daemon, bus,
                                                   tmp_path: Path) -> None:
    parts = split_log(DATA / "engineon.log", tmp_path, [3.0, 4.6])
    server = SocketcandServer(port=0)
    await server.start()
    config = write_config(tmp_path, tcti=swtpm.tcti, bus_address=dbus_daemon.address,
                          profile=CAMARO_PROFILE, can_port=server.port)
    service = ServiceProcess(config, tmp_path / "service.log")
    try:
        await wait_for_service(service, bus)
        client = KeyStorageClient(bus)
        public_der = await client.generate_key("pzp", owner_uid=0)
        locks: list[tuple[bool, str]] = []
        await client.watch(lambda locked, reason: locks.append((locked, reason)),
                           lambda state: None)
        await wait_until(lambda: server.client_count == 1)
        await asyncio.sleep(0.2)  # the service's socketcand reader is running
        assert (await sign_error(client)).short_name == "Locked"

        # Off, both power modes disagree at 1.51 s, both Run from 1.82 s.
        await replay_log(parts[0], server.broadcast, speed=2.0)
        async with holding(server, RUN_FRAME):
            await wait_until(lambda: len(locks) >= 1, timeout=15.0)
            signature = await client.sign("pzp", DIGEST)
            state = await client.vehicle_state()
        key = serialization.load_der_public_key(public_der)
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(signature, DIGEST, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        assert locks[0] == (False, f"{POWER} is ON")
        assert state[POWER]["value"] == "ON"
        assert state[POWER]["fresh"] is True
        assert state["Vehicle.Speed"]["value"] == 0.0
        assert "problem" in state["Vehicle.Powertrain.Transmission.SelectedGear"]

        # Crank Request at 4.13 s while the backup power mode stays at Run.
        await replay_log(parts[1], server.broadcast, speed=2.0)
        async with holding(server, CRANK_FRAME):
            await wait_until(lambda: len(locks) >= 2, timeout=15.0)
            locked = await sign_error(client)
            state = await client.vehicle_state()
        assert locks[1] == (True, CONTRADICTION)
        assert locked.short_name == "Locked"
        assert "SystemPowerMode is START" in locked.text
        assert "SystemBackUpPowerMode is ON" in locked.text
        assert "value" not in state[POWER]
        assert state[POWER]["problem"].startswith("contradiction: ")

        # Run again at 5.41 s; the recording ends at 13.08 s and goes stale.
        await replay_log(parts[2], server.broadcast, speed=2.0)
        await wait_until(lambda: len(locks) >= 4, timeout=15.0)
        assert locks[2] == (False, f"{POWER} is ON")
        assert locks[3] == (
            True, f"{POWER} is stale: no BCMGeneralPlatformStatus frame for more "
            "than 0.30 s")
        assert len(locks) == 4
        locked = await sign_error(client)
        assert locked.short_name == "Locked"
        assert "is stale" in locked.text
    finally:
        assert service.stop() == 0
        await server.stop()
