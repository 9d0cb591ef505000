"""The shipped D-Bus files on a real dbus-daemon.

A dbus-daemon runs with a system-bus configuration modelled on Debian 12's
/usr/share/dbus-1/system.conf (deny by default, then the policy files),
listening on a private socket and including only the shipped policy file.
The policy's user names are replaced by uids available here: the service
runs as root and the PZP as nobody. Other uids call through setpriv and
dbus-send, because they cannot run the project's virtual environment.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from conftest import REPO, ServiceProcess, wait_for_service, wait_until, write_config
from sim.processes import READY_TIMEOUT, stop_process
from sim.socketcand import SocketcandServer
from sim.transmit import PeriodicTransmitter
from sim.vehicle import ReferenceVehicle
from vehicle_keysvc.client import KeyStorageClient
from vehicle_keysvc.introspection import interface_document

POLICY = REPO / "packaging" / "dbus" / "org.webinos.KeyStorage1.conf"
ACTIVATION = REPO / "packaging" / "dbus" / "org.webinos.KeyStorage1.service"
INTROSPECTION = REPO / "packaging" / "dbus" / "org.webinos.KeyStorage1.xml"
PZP_UID = 65534  # nobody
# An existing user: with dbus 1.14 the test bus never replied to Hello from a
# uid without a passwd entry.
OTHER_UID = 1  # daemon
DIGEST = hashlib.sha256(b"system bus").digest()

SYSTEM_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"""


@dataclass
class SystemBus:
    proc: subprocess.Popen[bytes]
    address: str
    directory: Path

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.directory, ignore_errors=True)


def adjusted_policy(service_user: str, pzp_user: str) -> str:
    text = POLICY.read_text()
    assert text.count('<policy user="vehicle-keysvc">') == 1
    assert text.count('<policy user="webinos">') == 1
    return (text.replace('<policy user="vehicle-keysvc">', f'<policy user="{service_user}">')
            .replace('<policy user="webinos">', f'<policy user="{pzp_user}">'))


def start_system_bus(policy_text: str) -> SystemBus:
    # Not under tmp_path: other uids must reach the socket.
    directory = Path(tempfile.mkdtemp(prefix="keysvc-sysbus-"))
    directory.chmod(0o755)
    socket_path = directory / "system_bus_socket"
    policy = directory / "org.webinos.KeyStorage1.conf"
    policy.write_text(policy_text)
    config = directory / "system.conf"
    config.write_text(SYSTEM_CONF.format(socket=socket_path, policy=policy))
    proc = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile",
         "--nosyslog", "--print-address=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    address = proc.stdout.readline().decode().strip()
    if not address:
        stop_process(proc)
        raise RuntimeError("dbus-daemon did not start with the system-like config")
    deadline = time.monotonic() + READY_TIMEOUT
    while not socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    socket_path.chmod(0o666)
    return SystemBus(proc, address, directory)


def dbus_send(uid: int, address: str, *args: str,
              dest: str = "org.webinos.KeyStorage1",
              path: str = "/org/webinos/KeyStorage1") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
         "dbus-send", f"--bus={address}", "--print-reply", f"--dest={dest}", path, *args],
        capture_output=True, text=True, timeout=30,
    )


@dataclass
class SystemStack:
    bus: SystemBus
    connection: MessageBus
    client: KeyStorageClient
    service: ServiceProcess
    config: Path


@pytest.fixture
def system_bus() -> Iterator[SystemBus]:
    bus = start_system_bus(adjusted_policy("root", "nobody"))
    try:
        yield bus
    finally:
        bus.stop()


@pytest_asyncio.fixture
async def system_stack(swtpm, system_bus: SystemBus, tmp_path: Path
                       ) -> AsyncIterator[SystemStack]:
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED", central_lock="UNLOCKED")
    server = SocketcandServer(port=0)
    await server.start()
    transmitter = PeriodicTransmitter(vehicle, server.broadcast)
    transmitter.start()
    connection = await MessageBus(bus_address=system_bus.address).connect()
    config = write_config(tmp_path, tcti=swtpm.tcti, bus_address=system_bus.address,
                          can_port=server.port)
    service = ServiceProcess(config, tmp_path / "service.log")
    try:
        await wait_for_service(service, connection)
        yield SystemStack(system_bus, connection, KeyStorageClient(connection), service,
                          config)
    finally:
        service.stop()
        connection.disconnect()
        await connection.wait_for_disconnect()
        await transmitter.stop()
        await server.stop()


def digest_argument() -> str:
    return "array:byte:" + ",".join(str(b) for b in DIGEST)


@pytest.mark.asyncio
async def test_pzp_signs_root_manages(system_stack: SystemStack) -> None:
    public = await system_stack.client.generate_key("pzp", owner_uid=PZP_UID)

    async def unlocked() -> bool:
        return not await system_stack.client.get_property("Locked")

    await wait_until(unlocked)
    sign = dbus_send(PZP_UID, system_stack.bus.address, "org.webinos.KeyStorage1.Sign",
                     "string:pzp", digest_argument(), "string:ecdsa-sha256")
    listed = dbus_send(PZP_UID, system_stack.bus.address,
                       "org.webinos.KeyStorage1.ListKeys")

    assert len(public) > 0
    assert sign.returncode == 0, sign.stderr
    assert "array of bytes" in sign.stdout
    assert listed.returncode == 0, listed.stderr
    assert '"pzp"' in listed.stdout


@pytest.mark.asyncio
async def test_pzp_cannot_generate(system_stack: SystemStack) -> None:
    # The bus lets the PZP through; the service's own check refuses it.
    result = dbus_send(PZP_UID, system_stack.bus.address,
                       "org.webinos.KeyStorage1.DeleteKey", "string:pzp")
    assert result.returncode != 0
    assert "org.freedesktop.DBus.Error.AccessDenied" in result.stderr
    assert "DeleteKey is for administrators" in result.stderr


@pytest.mark.asyncio
async def test_other_uid_refused_by_bus(system_stack: SystemStack) -> None:
    await system_stack.client.generate_key("other", owner_uid=OTHER_UID)
    calls = {
        "ListKeys": ["org.webinos.KeyStorage1.ListKeys"],
        "Sign": ["org.webinos.KeyStorage1.Sign", "string:other", digest_argument(),
                 "string:ecdsa-sha256"],
        "Get": ["org.freedesktop.DBus.Properties.Get", "string:org.webinos.KeyStorage1",
                "string:Locked"],
        "Introspect": ["org.freedesktop.DBus.Introspectable.Introspect"],
    }
    for name, args in calls.items():
        result = dbus_send(OTHER_UID, system_stack.bus.address, *args)
        assert result.returncode != 0, name
        assert "org.freedesktop.DBus.Error.AccessDenied" in result.stderr, name
        # The daemon's wording, not the service's: the message never arrived.
        assert "Rejected send message" in result.stderr, name
    assert f"uid={OTHER_UID}" not in system_stack.service.log()


@pytest.mark.asyncio
async def test_name_cannot_be_taken(system_stack: SystemStack, tmp_path: Path) -> None:
    other = dbus_send(OTHER_UID, system_stack.bus.address,
                      "org.freedesktop.DBus.RequestName",
                      "string:org.webinos.KeyStorage1", "uint32:4",
                      dest="org.freedesktop.DBus", path="/org/freedesktop/DBus")
    second = ServiceProcess(system_stack.config, tmp_path / "second.log")
    try:
        second.proc.wait(timeout=60)
    finally:
        second.stop()

    assert other.returncode != 0
    assert "org.freedesktop.DBus.Error.AccessDenied" in other.stderr
    assert "not allowed to own the service" in other.stderr
    assert second.proc.returncode == 2
    assert "org.webinos.KeyStorage1 is already owned" in second.log()
    assert system_stack.service.proc.poll() is None


@pytest.mark.asyncio
async def test_introspection_file_matches_service(system_stack: SystemStack) -> None:
    reply = await system_stack.connection.call(Message(
        destination="org.webinos.KeyStorage1", path="/org/webinos/KeyStorage1",
        interface="org.freedesktop.DBus.Introspectable", member="Introspect"))
    assert reply is not None
    assert reply.message_type == MessageType.METHOD_RETURN
    live = interface_document(reply.body[0])
    assert live == INTROSPECTION.read_text(), (
        "the D-Bus interface changed: run "
        ".venv/bin/python scripts/update-introspection.py and commit the file"
    )


def activation_file() -> dict[str, str]:
    lines = [line for line in ACTIVATION.read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines[0] == "[D-BUS Service]"
    return dict(line.split("=", 1) for line in lines[1:])


def test_activation_file_fields() -> None:
    fields = activation_file()
    assert fields["Name"] == "org.webinos.KeyStorage1"
    assert fields["User"] == "vehicle-keysvc"
    assert fields["SystemdService"] == "vehicle-keysvc.service"


@pytest.mark.asyncio
async def test_activation_starts_service(swtpm, tmp_path: Path) -> None:
    """A bus with the activation file starts the service on the first call."""
    directory = Path(tempfile.mkdtemp(prefix="keysvc-activation-"))
    services = directory / "services"
    services.mkdir()
    socket_path = directory / "bus"
    fields = activation_file()
    config = directory / "keysvc.toml"
    bus_address = f"unix:path={socket_path}"
    write_config(directory, tcti=swtpm.tcti, bus_address=bus_address)
    executable = Path(sys.executable).parent / "vehicle-keysvc"
    # Only Exec= changes: there is no systemd to ask for SystemdService=.
    (services / "org.webinos.KeyStorage1.service").write_text(
        "[D-BUS Service]\n"
        f"Name={fields['Name']}\n"
        f"Exec={executable} run --config {config}\n"
    )
    (directory / "bus.conf").write_text(f"""<busconfig>
  <type>session</type>
  <listen>unix:path={socket_path}</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{services}</servicedir>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
""")
    daemon = subprocess.Popen(
        ["dbus-daemon", f"--config-file={directory / 'bus.conf'}", "--nofork",
         "--nopidfile", "--nosyslog", "--print-address=1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    connection = None
    try:
        assert daemon.stdout is not None
        assert daemon.stdout.readline()
        connection = await MessageBus(bus_address=bus_address).connect()
        client = KeyStorageClient(connection)
        keys = await asyncio.wait_for(client.list_keys(), timeout=60.0)
        owner = await connection.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="GetConnectionUnixProcessID",
            signature="s", body=["org.webinos.KeyStorage1"]))
        assert owner is not None and owner.message_type == MessageType.METHOD_RETURN
        service_pid = int(owner.body[0])
        assert keys == []
        assert service_pid != os.getpid()
        os.kill(service_pid, 15)
        await wait_until(lambda: not Path(f"/proc/{service_pid}").exists()
                         or "Z" in Path(f"/proc/{service_pid}/stat").read_text().split()[2],
                         timeout=30.0)
    finally:
        if connection is not None:
            connection.disconnect()
            await connection.wait_for_disconnect()
        stop_process(daemon)
        shutil.rmtree(directory, ignore_errors=True)
