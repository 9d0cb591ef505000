"""The service end to end: real swtpm, real dbus-daemon, real CAN frames.

The simulator sends the reference vehicle's frames over the socketcand
protocol, the service runs as its own process, and the test talks to it
over D-Bus as the PZP would.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import can
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from conftest import ServiceProcess, wait_until
from sim.socketcand import SocketcandServer
from sim.traffic import burst, unrelated_ids
from sim.transmit import PeriodicTransmitter
from stack import Stack, locked, unlocked, start_stack
from tpm_tools import extend_pcr, transient_handles
from vehicle_keysvc.client import KeyStorageError

ERROR = "org.webinos.KeyStorage1.Error."
DIGEST = hashlib.sha256(b"webinos PZP authentication").digest()


@pytest_asyncio.fixture
async def stack(swtpm, dbus_daemon, bus, tmp_path: Path) -> AsyncIterator[Stack]:
    running = await start_stack(swtpm, dbus_daemon, bus, tmp_path)
    try:
        yield running
    finally:
        await running.close()


def verify(public_der: bytes, signature: bytes, digest: bytes) -> None:
    key = serialization.load_der_public_key(public_der)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


async def sign_error(stack: Stack, key_id: str = "pzp", digest: bytes = DIGEST,
                     algorithm: str = "ecdsa-sha256") -> KeyStorageError:
    with pytest.raises(KeyStorageError) as caught:
        await stack.client.sign(key_id, digest, algorithm)
    return caught.value


@pytest.mark.asyncio
async def test_sign_verifies_with_openssl(stack: Stack, tmp_path: Path) -> None:
    public_der = await stack.client.generate_key("pzp", owner_uid=0)
    assert await stack.client.get_public_key("pzp") == public_der
    assert await stack.client.list_keys() == ["pzp"]
    await unlocked(stack)

    signature = await stack.client.sign("pzp", DIGEST)

    verify(public_der, signature, DIGEST)
    (tmp_path / "pub.der").write_bytes(public_der)
    (tmp_path / "digest.bin").write_bytes(DIGEST)
    (tmp_path / "sig.der").write_bytes(signature)
    result = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey",
         "pub.der", "-in", "digest.bin", "-sigfile", "sig.der"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "Signature Verified Successfully" in result.stdout
    assert transient_handles(stack.swtpm.port) == []


@pytest.mark.asyncio
async def test_locked_while_power_off(stack: Stack) -> None:
    await stack.client.generate_key("pzp", owner_uid=0)
    await unlocked(stack)
    stack.vehicle.set(power_mode="OFF")
    await locked(stack)

    error = await sign_error(stack)

    assert error.name == ERROR + "Locked"
    assert "Vehicle.LowVoltageSystemState is OFF" in error.text
    assert "is OFF" in await stack.client.get_property("LockReason")
    stack.vehicle.set(power_mode="ACC")
    await unlocked(stack)
    verify(await stack.client.get_public_key("pzp"),
           await stack.client.sign("pzp", DIGEST), DIGEST)


@pytest.mark.asyncio
async def test_locked_when_simulator_goes_silent(stack: Stack) -> None:
    await stack.client.generate_key("pzp", owner_uid=0)
    await unlocked(stack)
    stack.vehicle.inject("silence")
    await locked(stack)

    error = await sign_error(stack)

    assert error.name == ERROR + "Locked"
    assert "stale" in error.text
    stack.vehicle.clear_faults()
    await unlocked(stack)


@pytest.mark.asyncio
@pytest.mark.parametrize("fault,status", [("bad_crc", "ERROR"),
                                          ("stuck_counter", "REPEATED")])
async def test_e2e_fault_locks(stack: Stack, fault: str, status: str) -> None:
    await stack.client.generate_key("pzp", owner_uid=0)
    await unlocked(stack)
    stack.vehicle.inject(fault, "VCU_PowerMode")
    await locked(stack)

    error = await sign_error(stack)

    assert error.name == ERROR + "Locked"
    assert f"VCU_PowerMode failed its E2E check ({status})" in error.text
    state = await stack.client.vehicle_state()
    assert "value" not in state["Vehicle.LowVoltageSystemState"]
    stack.vehicle.clear_faults()
    await unlocked(stack)


@pytest.mark.asyncio
async def test_alarm_triggered_locks(stack: Stack) -> None:
    await unlocked(stack)
    stack.vehicle.set(alarm="TRIGGERED")
    await locked(stack)
    assert "Vehicle.Body.Alarm.IsActive is True" in await stack.client.get_property(
        "LockReason")


@pytest.mark.asyncio
async def test_vehicle_state_property(stack: Stack) -> None:
    stack.vehicle.set(speed_kmh=42.5, gear="D")
    await unlocked(stack)

    async def speed_seen() -> bool:
        state = await stack.client.vehicle_state()
        return state["Vehicle.Speed"].get("value") == pytest.approx(42.5)

    await wait_until(speed_seen)
    state = await stack.client.vehicle_state()
    assert state["Vehicle.Powertrain.Transmission.SelectedGear"]["value"] == 127
    assert state["Vehicle.LowVoltageSystemState"]["value"] == "ON"
    assert state["Vehicle.Body.Alarm.IsActive"]["value"] is False
    assert state["Vehicle.Cabin.Door.Row1.DriverSide.IsLocked"]["value"] is False
    assert 0.0 <= state["Vehicle.Speed"]["age"] < 1.0
    assert state["Vehicle.Speed"]["fresh"] is True


@pytest.mark.asyncio
async def test_lock_changed_signal(stack: Stack) -> None:
    seen: list[tuple[bool, str]] = []
    await stack.client.watch(lambda is_locked, reason: seen.append((is_locked, reason)))
    await unlocked(stack)
    stack.vehicle.set(power_mode="OFF")
    await wait_until(lambda: any(is_locked for is_locked, _ in seen))
    assert (True, "Vehicle.LowVoltageSystemState is OFF") in seen


@pytest.mark.asyncio
async def test_extended_pcr_gives_policy_mismatch(stack: Stack) -> None:
    await stack.client.generate_key("pzp", owner_uid=0)
    await unlocked(stack)
    await stack.client.sign("pzp", DIGEST)
    extend_pcr(stack.swtpm.port, 16)

    error = await sign_error(stack)

    assert error.name == ERROR + "PolicyMismatch"
    assert "platform state differs" in error.text
    assert stack.service is not None and stack.service.proc.poll() is None


@pytest.mark.asyncio
async def test_tpm_reset_recovers(stack: Stack) -> None:
    public_der = await stack.client.generate_key("pzp", owner_uid=0)
    await unlocked(stack)
    await stack.client.sign("pzp", DIGEST)
    stack.swtpm.reset()

    error = await sign_error(stack)
    assert error.name == ERROR + "TpmUnavailable"

    signatures: list[bytes] = []

    async def signs_again() -> bool:
        try:
            signatures.append(await stack.client.sign("pzp", DIGEST))
        except KeyStorageError as err:
            assert err.name == ERROR + "TpmUnavailable"
            return False
        return True

    await wait_until(signs_again)
    verify(public_der, signatures[-1], DIGEST)


@pytest.mark.asyncio
async def test_bad_arguments(stack: Stack) -> None:
    await stack.client.generate_key("pzp", owner_uid=0)
    await unlocked(stack)

    missing = await sign_error(stack, key_id="nope")
    short = await sign_error(stack, digest=DIGEST[:31])
    algorithm = await sign_error(stack, algorithm="ecdsa-sha1")
    bad_id = await sign_error(stack, key_id="../etc/passwd")

    assert missing.name == ERROR + "NotFound"
    assert "'nope'" in missing.text
    assert short.name == ERROR + "InvalidArgument"
    assert "31 bytes" in short.text
    assert algorithm.name == ERROR + "InvalidArgument"
    assert "'ecdsa-sha1'" in algorithm.text
    assert bad_id.name == ERROR + "InvalidArgument"
    with pytest.raises(KeyStorageError) as caught:
        await stack.client.generate_key("other", owner_uid=0, key_type="dsa-1024")
    assert caught.value.name == ERROR + "InvalidArgument"
    assert "'dsa-1024'" in caught.value.text
    with pytest.raises(KeyStorageError) as caught:
        await stack.client.generate_key("pzp", owner_uid=0)
    assert caught.value.name == ERROR + "InvalidArgument"
    assert "already exists" in caught.value.text
    assert "Traceback" not in (stack.service.log() if stack.service else "")


@pytest.mark.asyncio
async def test_restart_keeps_keys(stack: Stack) -> None:
    public_der = await stack.client.generate_key("pzp", owner_uid=0)
    assert stack.stop_service() == 0
    await stack.start_service()
    assert await stack.client.list_keys() == ["pzp"]
    assert await stack.client.get_public_key("pzp") == public_der
    await unlocked(stack)
    verify(public_der, await stack.client.sign("pzp", DIGEST), DIGEST)


@pytest.mark.asyncio
async def test_delete_key(stack: Stack) -> None:
    await stack.client.generate_key("pzp", owner_uid=0)
    await stack.client.delete_key("pzp")
    assert await stack.client.list_keys() == []
    error = await sign_error(stack)
    assert error.name == ERROR + "NotFound"


@pytest.mark.asyncio
async def test_second_instance_reports_name_taken(stack: Stack) -> None:
    second = ServiceProcess(stack.config, stack.directory / "second.log")
    try:
        second.proc.wait(timeout=30)
    finally:
        second.stop()
    assert second.proc.returncode == 2
    assert "org.webinos.KeyStorage1 is already owned" in second.log()
    assert await stack.client.list_keys() == []


def dbus_send_as(uid: int, address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
         "dbus-send", f"--bus={address}", "--print-reply",
         "--dest=org.webinos.KeyStorage1", "/org/webinos/KeyStorage1", *args],
        capture_output=True, text=True, timeout=30,
    )


@pytest.mark.asyncio
async def test_other_uid_gets_access_denied(stack: Stack) -> None:
    await stack.client.generate_key("pzp", owner_uid=0)
    await stack.client.generate_key("nobody-key", owner_uid=65534)
    await unlocked(stack)
    digest = "array:byte:" + ",".join(str(b) for b in DIGEST)

    sign = dbus_send_as(65534, stack.dbus.address, "org.webinos.KeyStorage1.Sign",
                        "string:pzp", digest, "string:ecdsa-sha256")
    generate = dbus_send_as(65534, stack.dbus.address,
                            "org.webinos.KeyStorage1.DeleteKey", "string:pzp")
    listed = dbus_send_as(65534, stack.dbus.address, "org.webinos.KeyStorage1.ListKeys")
    own = dbus_send_as(65534, stack.dbus.address, "org.webinos.KeyStorage1.Sign",
                       "string:nobody-key", digest, "string:ecdsa-sha256")

    assert sign.returncode != 0
    assert "org.freedesktop.DBus.Error.AccessDenied" in sign.stderr
    assert "uid 65534 may not use key 'pzp'" in sign.stderr
    assert generate.returncode != 0
    assert "org.freedesktop.DBus.Error.AccessDenied" in generate.stderr
    assert '"nobody-key"' in listed.stdout
    assert '"pzp"' not in listed.stdout
    assert own.returncode == 0, own.stderr
    assert await stack.client.list_keys() == ["nobody-key", "pzp"]


@pytest.mark.asyncio
async def test_lost_socketcand_server_locks_then_reconnects(stack: Stack) -> None:
    await stack.client.generate_key("pzp", owner_uid=0)
    await unlocked(stack)
    port = stack.server.port
    await stack.transmitter.stop()
    await stack.server.stop()

    # On a loaded machine the facts can go stale in the same tick that finds
    # the closed connection, so wait for the fault to be the reason.
    async def fault_reported() -> bool:
        reason = await stack.client.get_property("LockReason")
        return reason == "CAN bus fault: socketcand connection closed by the server"

    await wait_until(fault_reported)
    error = await sign_error(stack)
    assert error.name == ERROR + "Locked"
    assert "CAN bus fault" in error.text

    stack.server = SocketcandServer(port=port)
    await stack.server.start()
    stack.transmitter = PeriodicTransmitter(stack.vehicle, stack.server.broadcast)
    stack.transmitter.start()

    await wait_until(lambda: stack.server.client_count == 1, timeout=30.0)
    await unlocked(stack)
    verify(await stack.client.get_public_key("pzp"),
           await stack.client.sign("pzp", DIGEST), DIGEST)
    assert stack.service is not None
    log = stack.service.log()
    assert log.count("CAN bus fault on socketcand channel vcan0") == 1
    assert "reopening the interface" not in log
    assert ("CAN bus fault over (socketcand connection closed by the server): "
            "frames of the profile received again") in log
    assert "Failed to connect to server" not in log


@pytest.mark.asyncio
async def test_spoofed_power_frames_keep_locked(stack: Stack) -> None:
    await stack.client.generate_key("pzp", owner_uid=0)
    await unlocked(stack)
    stack.vehicle.set(power_mode="OFF")
    await locked(stack)
    seen: list[tuple[bool, str]] = []
    await stack.client.watch(lambda is_locked, reason: seen.append((is_locked, reason)))

    # A forger on the bus sends RUN with a wrong counter every 10 ms for 1 s.
    reasons = []
    for index in range(100):
        forged = stack.vehicle.spoof("VCU_PowerMode", "RUN", counter_offset=8)
        stack.server.broadcast(forged)
        if index % 10 == 9:
            reasons.append(await stack.client.get_property("LockReason"))
        await asyncio.sleep(0.01)
    error = await sign_error(stack)

    assert error.name == ERROR + "Locked"
    assert seen == []
    assert any("VCU_PowerMode failed its E2E check" in r for r in reasons)
    assert await stack.client.get_property("Locked") is True


@pytest.mark.asyncio
async def test_unrelated_burst_keeps_signing(stack: Stack) -> None:
    public_der = await stack.client.generate_key("pzp", owner_uid=0)
    await unlocked(stack)
    seen: list[tuple[bool, str]] = []
    await stack.client.watch(lambda is_locked, reason: seen.append((is_locked, reason)))
    ids = unrelated_ids(200)

    # On a loaded test machine the service can fall behind so that a fact
    # goes stale. That lock is allowed here, any other is not.
    signatures = []

    async def signed() -> bool:
        try:
            signatures.append(await stack.client.sign("pzp", DIGEST))
        except KeyStorageError as err:
            assert err.name == ERROR + "Locked"
            assert "is stale" in err.text or "not yet confirmed" in err.text
            return False
        return True

    # 20 bursts of 400 frames, 8,000 unrelated frames within about 1 s.
    for index in range(20):
        for frame in burst(400, time.time(), ids):
            stack.server.broadcast(frame)
        if index % 5 == 0:
            await wait_until(signed)
        await asyncio.sleep(0.05)

    assert [reason for is_locked, reason in seen
            if is_locked and "is stale" not in reason] == []
    assert len(signatures) == 4
    for signature in signatures:
        verify(public_der, signature, DIGEST)
    state = await stack.client.vehicle_state()
    assert state["Vehicle.LowVoltageSystemState"]["value"] == "ON"


@pytest.mark.asyncio
async def test_bad_crc_then_confirmation_unlocks(stack: Stack) -> None:
    await stack.client.generate_key("pzp", owner_uid=0)
    await unlocked(stack)
    seen: list[tuple[bool, str]] = []
    await stack.client.watch(lambda is_locked, reason: seen.append((is_locked, reason)))
    stack.vehicle.inject("bad_crc", "BCM_AlarmState")
    await locked(stack)
    error = await sign_error(stack)
    stack.vehicle.clear_faults()
    await unlocked(stack)

    assert error.name == ERROR + "Locked"
    assert "BCM_AlarmState failed its E2E check (ERROR)" in error.text
    assert seen[0][0] is True
    assert "BCM_AlarmState failed its E2E check (ERROR)" in seen[0][1]
    assert seen[-1][0] is False
    await stack.client.sign("pzp", DIGEST)


@pytest.mark.asyncio
async def test_payment_policy_over_dbus(swtpm, dbus_daemon, bus, tmp_path: Path) -> None:
    running = await start_stack(swtpm, dbus_daemon, bus, tmp_path, policies=(
        '[gate_policies.payment]\n"Vehicle.Speed" = { max = 0 }\n'
        '"Vehicle.Powertrain.Transmission.SelectedGear" = { values = ["P"] }\n'))
    try:
        await running.client.generate_key("pay", owner_uid=0, gate_policy="payment")
        with pytest.raises(KeyStorageError) as caught:
            await running.client.generate_key("x", owner_uid=0, gate_policy="parking")
        await unlocked(running)
        parked = await running.client.sign("pay", DIGEST)
        running.vehicle.set(gear="D", speed_kmh=20.0)

        async def refused() -> bool:
            try:
                await running.client.sign("pay", DIGEST)
            except KeyStorageError as err:
                return err.name == ERROR + "Locked"
            return False

        await wait_until(refused)
        error = await sign_error(running, key_id="pay")

        verify(await running.client.get_public_key("pay"), parked, DIGEST)
        assert caught.value.name == ERROR + "InvalidArgument"
        assert "gate policy 'parking' is not defined" in caught.value.text
        assert "gate policy 'payment'" in error.text
        assert await running.client.get_property("Locked") is False
    finally:
        await running.close()


@pytest.mark.asyncio
async def test_bus_off_error_frame_locks(stack: Stack) -> None:
    await stack.client.generate_key("pzp", owner_uid=0)
    await unlocked(stack)
    seen: list[tuple[bool, str]] = []
    await stack.client.watch(lambda is_locked, reason: seen.append((is_locked, reason)))

    stack.server.broadcast(can.Message(arbitration_id=0x40, is_extended_id=True,
                                       is_error_frame=True, data=bytes(8)))
    await wait_until(lambda: len(seen) >= 2 and seen[-1][0] is False)

    assert seen[0] == (True, "CAN bus fault: error frame: bus-off")
    assert stack.service is not None
    log = stack.service.log()
    assert log.count("CAN bus fault on socketcand channel vcan0: error frame: bus-off") == 1
    verify(await stack.client.get_public_key("pzp"),
           await stack.client.sign("pzp", DIGEST), DIGEST)
