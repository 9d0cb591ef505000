#!/usr/bin/env python3
"""Write packaging/dbus/org.webinos.KeyStorage1.xml from a running service.

Run it after adding or changing a D-Bus method, property or signal:

    .venv/bin/python scripts/update-introspection.py

It starts swtpm, a private dbus-daemon and the service (with python-can's
virtual interface, so no CAN bus is needed), requests the service's
introspection data, and stops them all again.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dbus_fast import Message, MessageType  # noqa: E402
from dbus_fast.aio import MessageBus  # noqa: E402

from sim.processes import start_dbus_daemon, start_swtpm, stop_process  # noqa: E402
from vehicle_keysvc.dbus_service import BUS_NAME, OBJECT_PATH  # noqa: E402
from vehicle_keysvc.introspection import interface_document  # noqa: E402

TARGET = REPO / "packaging" / "dbus" / "org.webinos.KeyStorage1.xml"
START_TIMEOUT = 30.0


async def introspect(address: str) -> str:
    bus = await MessageBus(bus_address=address).connect()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            reply = await bus.call(Message(
                destination=BUS_NAME, path=OBJECT_PATH,
                interface="org.freedesktop.DBus.Introspectable", member="Introspect"))
            if reply is not None and reply.message_type == MessageType.METHOD_RETURN:
                return str(reply.body[0])
            if time.monotonic() > deadline:
                raise TimeoutError(f"{BUS_NAME} did not reply within {START_TIMEOUT:.0f} s")
            await asyncio.sleep(0.1)
    finally:
        bus.disconnect()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="keysvc-introspect-") as folder:
        work = Path(folder)
        swtpm = start_swtpm(work / "tpm")
        daemon = start_dbus_daemon()
        config = work / "keysvc.toml"
        config.write_text(
            f'[tpm]\ntcti = "{swtpm.tcti}"\npcrs = "sha256:7"\n'
            f'[dbus]\nbus = "{daemon.address}"\n'
            f'[storage]\nkey_dir = "{work / "keys"}"\n'
            f'[vehicle]\nprofile = "{REPO / "dbc" / "reference.profile.toml"}"\n'
            '[can]\ninterface = "virtual"\nchannel = "introspect"\n'
        )
        service = subprocess.Popen(
            [sys.executable, "-m", "vehicle_keysvc.cli", "run", "--config", str(config)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            xml = asyncio.run(introspect(daemon.address))
        finally:
            stop_process(service)
            daemon.stop()
            swtpm.stop()
    TARGET.write_text(interface_document(xml))
    print(f"wrote {TARGET.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
