"""The operator commands against the running service on a private bus."""

from __future__ import annotations

import asyncio
import os
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import REPO, wait_until
from stack import Stack, unlocked, start_stack
from vehicle_keysvc.cli_ops import EXIT_DENIED, EXIT_UNAVAILABLE, explain
from vehicle_keysvc.client import KeyStorageError


@pytest_asyncio.fixture
async def stack(swtpm, dbus_daemon, bus, tmp_path: Path) -> AsyncIterator[Stack]:
    running = await start_stack(swtpm, dbus_daemon, bus, tmp_path)
    try:
        yield running
    finally:
        await running.close()


async def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """Run an operator command; in a thread, so the simulator keeps sending frames."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "vehicle_keysvc.cli", *args, "--bus", stack.dbus.address],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )


@pytest.mark.asyncio
async def test_status_json(stack: Stack) -> None:
    await stack.client.generate_key("pzp", owner_uid=0)
    await unlocked(stack)

    result = await cli(stack, "status", "--json")

    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["locked"] is False
    assert "Vehicle.LowVoltageSystemState is ON" in status["reason"]
    assert stack.service is not None
    assert status["service_pid"] == stack.service.proc.pid
    assert status["keys"] == ["pzp"]
    power = status["vehicle_state"]["Vehicle.LowVoltageSystemState"]
    assert power["value"] == "ON"
    assert power["fresh"] is True
    assert 0 <= power["age"] < 5
    assert status["tpm"]["manufacturer"] == "IBM"  # swtpm reports IBM
    assert status["tpm"]["vendor"] == "SWTPM"
    assert status["tpm"]["spec"].startswith("2.0 rev ")
    assert status["tpm"]["available"] is True


@pytest.mark.asyncio
async def test_status_text(stack: Stack) -> None:
    await unlocked(stack)
    stack.vehicle.set(power_mode="OFF")

    async def is_locked() -> bool:
        return bool(await stack.client.get_property("Locked"))

    await wait_until(is_locked)
    result = await cli(stack, "status")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "state:    locked"
    assert lines[1] == "reason:   Vehicle.LowVoltageSystemState is OFF"
    assert any(line.strip().startswith("Vehicle.Speed") and "age " in line
               for line in lines)
    assert "keys:     0" in lines
    assert any(line.startswith("tpm:      IBM SWTPM, TPM 2.0 rev") for line in lines)


@pytest.mark.asyncio
async def test_keys_generate_list_delete(stack: Stack) -> None:
    generated = await cli(stack, "keys", "generate", "pzp", "--owner-uid", "0",
                          "--pcrs", "sha256:7")
    service_der = await stack.client.get_public_key("pzp")
    listed = await cli(stack, "keys", "list", "--json")
    duplicate = await cli(stack, "keys", "generate", "pzp", "--owner-uid", "0")
    deleted = await cli(stack, "keys", "delete", "pzp")
    after = await cli(stack, "keys", "list")
    missing = await cli(stack, "keys", "delete", "pzp")

    assert generated.returncode == 0, generated.stderr
    key = serialization.load_pem_public_key(generated.stdout.encode())
    assert key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == service_der
    assert json.loads(listed.stdout) == ["pzp"]
    assert duplicate.returncode == 1
    assert duplicate.stderr.strip() == (
        "vehicle-keysvc: error: InvalidArgument: key 'pzp' already exists; delete it first"
    )
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == "deleted key 'pzp'"
    assert after.stdout == ""
    assert missing.returncode == 1
    assert "NotFound" in missing.stderr


@pytest.mark.asyncio
async def test_keys_generate_json_matches_service(stack: Stack) -> None:
    result = await cli(stack, "keys", "generate", "pzp", "--owner-uid", "0", "--json")
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    der = serialization.load_pem_public_key(output["public_key_pem"].encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert output["key_id"] == "pzp"
    assert der == await stack.client.get_public_key("pzp")


@pytest.mark.asyncio
async def test_service_not_running_exits_3(stack: Stack) -> None:
    stack.stop_service()
    result = await cli(stack, "status")
    assert result.returncode == EXIT_UNAVAILABLE
    assert result.stderr.strip() == (
        "vehicle-keysvc: error: the key service is not running on the "
        f"{stack.dbus.address} bus (ServiceUnknown); start it with: "
        "systemctl start vehicle-keysvc"
    )


@pytest.mark.asyncio
async def test_status_into_closed_pipe(stack: Stack) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head` does once it has its lines
    try:
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "vehicle_keysvc.cli", "status", "--bus", stack.dbus.address],
            stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=60,
        )
    finally:
        os.close(write_end)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr


@pytest.mark.asyncio
async def test_bad_arguments_exit_2(stack: Stack, tmp_path: Path) -> None:
    bad_uid = await cli(stack, "keys", "generate", "pzp", "--owner-uid", "root")
    no_file = await cli(stack, "keys", "import", "pzp", str(tmp_path / "absent.pem"),
                        "--owner-uid", "0")
    assert bad_uid.returncode == 2
    assert "invalid uid 'root'" in bad_uid.stderr
    assert no_file.returncode == 2
    assert "cannot read key file" in no_file.stderr
    assert "No such file or directory" in no_file.stderr
    assert "Traceback" not in no_file.stderr


@pytest.mark.asyncio
async def test_watch_follows_lock_changes(stack: Stack) -> None:
    await unlocked(stack)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vehicle_keysvc.cli", "watch", "--json", "--count", "2",
        "--bus", stack.dbus.address,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        stack.vehicle.set(power_mode="OFF")
        second = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        stack.vehicle.set(power_mode="RUN")
        third = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        code = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert first["event"] == "current"
    assert first["locked"] is False
    assert second["event"] == "LockChanged"
    assert second["locked"] is True
    assert second["reason"] == "Vehicle.LowVoltageSystemState is OFF"
    assert third["event"] == "LockChanged"
    assert third["locked"] is False
    assert code == 0


def test_explain_bus_policy_denial() -> None:
    error = KeyStorageError(
        "org.freedesktop.DBus.Error.AccessDenied",
        'Rejected send message, 0 matched rules; type="method_call"',
    )
    explained = explain(error, "system")
    assert explained.exit_code == EXIT_DENIED
    assert "the D-Bus policy does not let uid" in str(explained)
    assert "run as root or as the PZP user" in str(explained)


def test_explain_tpm_unavailable() -> None:
    error = KeyStorageError("org.webinos.KeyStorage1.Error.TpmUnavailable",
                            "the TPM is recovering from a reset")
    explained = explain(error, "system")
    assert explained.exit_code == EXIT_UNAVAILABLE
    assert str(explained) == "the TPM is recovering from a reset; retry in a few seconds"


async def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, list(args), capture_output=True,
                                   text=True, timeout=60)


@pytest.mark.asyncio
async def test_busctl_and_gdbus_equivalents(stack: Stack) -> None:
    """The README's busctl and gdbus commands work, with --address for a private bus."""
    address = stack.dbus.address
    target = ["org.webinos.KeyStorage1", "/org/webinos/KeyStorage1", "org.webinos.KeyStorage1"]
    gdbus = ["gdbus", "call", f"--address={address}", "--dest", "org.webinos.KeyStorage1",
             "--object-path", "/org/webinos/KeyStorage1", "--method"]
    await unlocked(stack)

    generated = await run_tool("busctl", f"--address={address}", "call", *target,
                               "GenerateKey", "ssa{sv}", "pzp", "ecc-p256", "1",
                               "owner_uid", "u", "0")
    locked = await run_tool("busctl", f"--address={address}", "get-property", *target,
                            "Locked")
    tpm = await run_tool("busctl", f"--address={address}", "get-property", *target,
                         "TpmInfo")
    listed = await run_tool(*gdbus, "org.webinos.KeyStorage1.ListKeys")
    reason = await run_tool(*gdbus, "org.freedesktop.DBus.Properties.Get",
                            "org.webinos.KeyStorage1", "LockReason")
    signed = await run_tool(*gdbus, "org.webinos.KeyStorage1.Sign", "pzp",
                            "[byte " + ", ".join(["0x01"] * 32) + "]", "ecdsa-sha256")

    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("ay 91 48 89 ")  # a DER P-256 public key
    assert locked.stdout.strip() == "b false"
    assert '"manufacturer" s "IBM"' in tpm.stdout
    assert listed.stdout.strip() == "(['pzp'],)"
    assert "Vehicle.LowVoltageSystemState is ON" in reason.stdout
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.startswith("([byte 0x30, ")  # a DER ECDSA signature


@pytest.mark.asyncio
async def test_keys_import_prints_public_key(stack: Stack, tmp_path: Path) -> None:
    private_key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "pzp.pem"
    key_file.write_bytes(private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    expected = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    imported = await cli(stack, "keys", "import", "imported", str(key_file),
                         "--owner-uid", "0")
    again = await cli(stack, "keys", "import", "imported", str(key_file),
                      "--owner-uid", "0")

    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == expected
    assert await stack.client.list_keys() == ["imported"]
    assert again.returncode == 1
    assert "already exists" in again.stderr
