"""The service process under systemd's protocols: sd_notify, SIGTERM, SIGHUP.

Also the audit log and the rate limit as a caller sees them. Everything
runs on the real stack: swtpm, a private dbus-daemon and CAN frames from
the simulator over socketcand.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from conftest import FORD_PROFILE, ServiceProcess, name_has_owner, wait_for_service, wait_until
from stack import Stack, unlocked, start_stack
from vehicle_keysvc.client import KeyStorageError

ERROR = "org.webinos.KeyStorage1.Error."
DIGEST = hashlib.sha256(b"drain test").digest()


@pytest_asyncio.fixture
async def stack(swtpm, dbus_daemon, bus, tmp_path: Path) -> AsyncIterator[Stack]:
    running = await start_stack(swtpm, dbus_daemon, bus, tmp_path)
    try:
        yield running
    finally:
        await running.close()


async def restart_with(stack: Stack, extra_toml: str = "",
                       env: dict[str, str] | None = None,
                       wait: bool = True) -> ServiceProcess:
    """Stop the stack's service, append ``extra_toml`` to its config, start it again."""
    stack.stop_service()
    if extra_toml:
        with stack.config.open("a") as config:
            config.write(extra_toml)
    service = ServiceProcess(stack.config, stack.directory / "service.log", env=env)
    stack.service = service
    if wait:
        await wait_for_service(service, stack.bus)
    return service


async def receive(sock: socket.socket) -> str:
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout=30.0)
    return data.decode()


@pytest.mark.asyncio
async def test_sd_notify_ready_watchdog_stopping(stack: Stack, tmp_path: Path) -> None:
    notify_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify_path))
        sock.setblocking(False)
        service = await restart_with(
            stack, env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"},
            wait=False,
        )

        ready = await receive(sock)
        owned_when_ready = await name_has_owner(stack.bus, "org.webinos.KeyStorage1")
        watchdog = await receive(sock)
        service.proc.send_signal(signal.SIGTERM)
        messages = [await receive(sock)]
        while not messages[-1].startswith("STOPPING=1"):
            messages.append(await receive(sock))
        code = await asyncio.to_thread(service.proc.wait, 30)

    assert ready.splitlines()[0] == "READY=1"
    assert "STATUS=serving 0 key(s)" in ready.splitlines()
    assert owned_when_ready
    assert watchdog == "WATCHDOG=1"
    assert messages[-1].splitlines()[0] == "STOPPING=1"
    assert code == 0


@pytest.mark.asyncio
async def test_sigterm_drains_request_in_flight(stack: Stack) -> None:
    public_der = await stack.client.generate_key("pzp", owner_uid=0)
    await unlocked(stack)
    assert stack.service is not None
    service = stack.service
    # A stopped swtpm keeps the Sign waiting inside the TPM call.
    os.kill(stack.swtpm.proc.pid, signal.SIGSTOP)
    try:
        sign = asyncio.create_task(stack.client.sign("pzp", DIGEST))
        await wait_until(lambda: "Sign from" in service.log(), timeout=30.0)
        service.proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: "waiting for 1 request(s) in flight" in service.log(),
                         timeout=30.0)
        owned = await name_has_owner(stack.bus, "org.webinos.KeyStorage1")
    finally:
        os.kill(stack.swtpm.proc.pid, signal.SIGCONT)
    signature = await asyncio.wait_for(sign, timeout=30.0)
    code = await asyncio.to_thread(service.proc.wait, 30)

    assert not owned
    key = serialization.load_der_public_key(public_der)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signature, DIGEST, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    assert code == 0
    assert "still running after" not in service.log()


@pytest.mark.asyncio
async def test_sighup_applies_new_admins(stack: Stack) -> None:
    assert stack.service is not None
    await unlocked(stack)
    pid = stack.service.proc.pid
    text = stack.config.read_text().replace("admin_uids = [0]", "admin_uids = [4242]")
    stack.config.write_text(text)
    log_start = len(stack.service.log())

    stack.service.proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: "reloaded " in stack.service.log(), timeout=30.0)
    await asyncio.sleep(0.5)  # not a timing check: gives a wrong relock time to show

    with pytest.raises(KeyStorageError) as caught:
        await stack.client.generate_key("pzp", owner_uid=0)
    assert caught.value.name == "org.freedesktop.DBus.Error.AccessDenied"
    # The profile did not change, so the decoded state stays and keys stay unlocked.
    assert "keys locked" not in stack.service.log()[log_start:]
    assert stack.service.proc.pid == pid
    assert stack.service.proc.poll() is None
    assert await name_has_owner(stack.bus, "org.webinos.KeyStorage1")


@pytest.mark.asyncio
async def test_sighup_new_gate_policy(stack: Stack) -> None:
    assert stack.service is not None
    await unlocked(stack)
    changes: list[tuple[bool, str]] = []
    await stack.client.watch(lambda locked, reason: changes.append((locked, reason)))
    text = stack.config.read_text()
    stack.config.write_text(
        text + '\n[gate_policies.parked]\n"Vehicle.Speed" = { max = 0 }\n'
    )

    stack.service.proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: "reloaded " in stack.service.log(), timeout=30.0)
    public_der = await stack.client.generate_key("pay", owner_uid=0, gate_policy="parked")
    signatures: list[bytes] = []

    async def signs() -> bool:
        # The new policy signs once consecutive valid frames confirm its facts.
        try:
            signatures.append(await stack.client.sign("pay", DIGEST))
        except KeyStorageError as err:
            assert err.name == ERROR + "Locked"
            return False
        return True

    await wait_until(signs, timeout=30.0)

    key = serialization.load_der_public_key(public_der)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signatures[-1], DIGEST, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    # The default gate did not change, so the reload sent no LockChanged.
    assert not any("reload" in reason for _, reason in changes)
    assert "keys locked" not in stack.service.log().split("SIGHUP: reloading", 1)[1]


@pytest.mark.asyncio
async def test_sighup_removed_gate_policy_logged(stack: Stack) -> None:
    policy = '\n[gate_policies.parked]\n"Vehicle.Speed" = { max = 0 }\n'
    service = await restart_with(stack, policy)
    await stack.client.generate_key("pay", owner_uid=0, gate_policy="parked")
    stack.config.write_text(stack.config.read_text().replace(policy, ""))
    log_start = len(service.log())

    service.proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: "reloaded " in service.log()[log_start:], timeout=30.0)

    assert ("key 'pay' needs gate policy 'parked', which the config does not define"
            in service.log()[log_start:])
    await unlocked(stack)  # the default gate allows use; the missing policy does not
    with pytest.raises(KeyStorageError) as caught:
        await stack.client.sign("pay", DIGEST)
    assert caught.value.name == ERROR + "Locked"
    assert "gate policy 'parked' is not defined" in caught.value.text


@pytest.mark.asyncio
async def test_sighup_rejects_bad_config(stack: Stack) -> None:
    assert stack.service is not None
    good = stack.config.read_text()
    stack.config.write_text(good.replace("admin_uids = [0]", 'admin_uids = ["root"]'))

    stack.service.proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: "reload rejected" in stack.service.log(), timeout=30.0)

    log = stack.service.log()
    assert "keeping the running configuration" in log
    assert "admin_uids contains 'root'" in log
    assert await stack.client.generate_key("pzp", owner_uid=0)
    assert stack.service.proc.poll() is None


@pytest.mark.asyncio
async def test_sighup_switches_profile(stack: Stack) -> None:
    assert stack.service is not None
    await unlocked(stack)
    reference = str(stack.config.read_text().split('profile = "')[1].split('"')[0])
    stack.config.write_text(stack.config.read_text().replace(reference, str(FORD_PROFILE)))

    stack.service.proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: "(changed)" in stack.service.log(), timeout=30.0)

    async def is_locked() -> bool:
        return bool(await stack.client.get_property("Locked"))

    await wait_until(is_locked)
    state = await stack.client.vehicle_state()
    reason = await stack.client.get_property("LockReason")
    assert "Vehicle.Body.Alarm.IsActive" not in state
    assert "no frame of" in reason
    assert await name_has_owner(stack.bus, "org.webinos.KeyStorage1")


@pytest.mark.asyncio
async def test_rate_limit_error(stack: Stack) -> None:
    await restart_with(stack, "\n[limits]\nrate_per_second = 0.001\nburst = 3\n")
    for _ in range(3):
        await stack.client.list_keys()

    with pytest.raises(KeyStorageError) as caught:
        await stack.client.list_keys()

    assert caught.value.name == ERROR + "RateLimited"
    assert f"uid {os.getuid()} exceeded the rate limit" in caught.value.text
    assert "retry in" in caught.value.text


@pytest.mark.asyncio
async def test_audit_lines_and_repeat_count(stack: Stack) -> None:
    await stack.client.generate_key("pzp", owner_uid=0)
    await unlocked(stack)
    await stack.client.sign("pzp", DIGEST)
    stack.vehicle.set(power_mode="OFF")

    async def is_locked() -> bool:
        return bool(await stack.client.get_property("Locked"))

    await wait_until(is_locked)
    for _ in range(5):
        with pytest.raises(KeyStorageError):
            await stack.client.sign("pzp", DIGEST)
    assert stack.service is not None
    service = stack.service
    assert stack.stop_service() == 0

    lines = [line for line in service.log().splitlines() if " audit " in line]
    me = f"uid={os.getuid()} pid={os.getpid()}"
    allowed = [line for line in lines if "method=Sign" in line and "decision=allow" in line]
    denied = [line for line in lines if "method=Sign" in line and "decision=deny" in line]
    assert len(allowed) == 1
    assert f"{me} key=pzp decision=allow" in allowed[0]
    assert len(denied) == 2
    assert "Vehicle.LowVoltageSystemState is OFF" in denied[0]
    assert "repeated=4" in denied[1]
    assert any('event=lock reason="Vehicle.LowVoltageSystemState is OFF"' in line
               for line in lines)
    assert any("event=unlock" in line for line in lines)
    assert DIGEST.hex() not in service.log()
    assert "method=GenerateKey" in "\n".join(lines)

