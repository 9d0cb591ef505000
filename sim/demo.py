"""Demo: the key service on real parts, driven by the simulated car.

Starts swtpm, a private dbus-daemon, the vehicle simulator (socketcand
protocol on 127.0.0.1) and the service, then acts as the PZP. It has a key
created and signs a digest every second while the car goes through a drive
cycle. It checks each signature with ``openssl pkeyutl -verify`` and prints
a timeline. A second act replays a real recorded Ford drive into the service.
Everything started here is stopped at the end. Exits 0 only when every
expected outcome was seen.

Run from the repository root: ``python -m sim.demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from dbus_fast import Message
from dbus_fast.aio import MessageBus

from sim.processes import DbusDaemon, Swtpm, start_dbus_daemon, start_swtpm, stop_process
from sim.replay import replay_log
from sim.scenario import DRIVE_CYCLE, run_scenario
from sim.socketcand import SocketcandServer
from sim.transmit import PeriodicTransmitter
from sim.vehicle import ReferenceVehicle
from vehicle_keysvc.client import KeyStorageClient, KeyStorageError, connect

REPO = Path(__file__).resolve().parent.parent
REFERENCE_PROFILE = REPO / "dbc" / "reference.profile.toml"
FORD_PROFILE = REPO / "dbc" / "ford_gt350.profile.toml"
FORD_LOG = REPO / "tests" / "data" / "keyofftokeyonandlocks.log"
KEY_ID = "pzp-demo"


class Timeline:
    """Prints events with the seconds since the demo started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def print(self, kind: str, text: str) -> None:
        print(f"[{time.monotonic() - self.start:6.2f}s] {kind:8s} {text}", flush=True)


class Outcomes:
    """Counts what each act saw, to decide the exit status."""

    def __init__(self) -> None:
        self.verified = 0
        self.refused: dict[str, int] = {}
        self.failed_verifications = 0
        self.unlocks = 0
        self.locks = 0


def write_service_config(directory: Path, swtpm: Swtpm, bus_address: str,
                         can_port: int, profile: Path) -> Path:
    path = directory / f"keysvc-{profile.stem}.toml"
    path.write_text(textwrap.dedent(f"""\
        [tpm]
        tcti = "{swtpm.tcti}"
        pcrs = "sha256:0,2,4,7"

        [dbus]
        bus = "{bus_address}"

        [access]
        admin_uids = [{os.getuid()}]

        [storage]
        key_dir = "{directory / 'keys'}"

        [vehicle]
        profile = "{profile}"

        [can]
        interface = "socketcand"
        channel = "vcan0"
        options = {{ host = "127.0.0.1", port = {can_port} }}
        """))
    return path


class ServiceRunner:
    def __init__(self, config: Path, log: Path) -> None:
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vehicle_keysvc.cli", "run", "--config", str(config)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
        )

    async def wait_ready(self, bus: MessageBus, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}")
            reply = await bus.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="NameHasOwner",
                signature="s", body=["org.webinos.KeyStorage1"]))
            if reply is not None and reply.body and reply.body[0]:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("service did not own its D-Bus name in time")

    def stop(self) -> int:
        stop_process(self.proc, grace=10.0)
        self._log.close()
        return self.proc.returncode


def openssl_verify(directory: Path, public_der: bytes, digest: bytes,
                   signature: bytes) -> bool:
    (directory / "pub.der").write_bytes(public_der)
    (directory / "digest.bin").write_bytes(digest)
    (directory / "sig.der").write_bytes(signature)
    result = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey",
         "pub.der", "-in", "digest.bin", "-sigfile", "sig.der"],
        cwd=directory, capture_output=True, text=True,
    )
    return result.returncode == 0


async def sign_loop(client: KeyStorageClient, public_der: bytes, directory: Path,
                    timeline: Timeline, outcomes: Outcomes, stop: asyncio.Event,
                    interval: float = 1.0) -> None:
    number = 0
    while not stop.is_set():
        number += 1
        digest = hashlib.sha256(f"PZH challenge {number}".encode()).digest()
        try:
            signature = await client.sign(KEY_ID, digest)
        except KeyStorageError as err:
            outcomes.refused[err.short_name] = outcomes.refused.get(err.short_name, 0) + 1
            timeline.print("sign", f"#{number} refused: {err.short_name}: {err.text}")
        else:
            if openssl_verify(directory, public_der, digest, signature):
                outcomes.verified += 1
                timeline.print("sign", f"#{number} signed, verified by openssl")
            else:
                outcomes.failed_verifications += 1
                timeline.print("sign", f"#{number} signed, but openssl REJECTED it")
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass


def watch_printer(timeline: Timeline, outcomes: Outcomes):
    previous: dict[str, Any] = {}

    def on_lock(locked: bool, reason: str) -> None:
        if locked:
            outcomes.locks += 1
        else:
            outcomes.unlocks += 1
        timeline.print("gate", f"{'LOCKED' if locked else 'UNLOCKED':9s}{reason}")

    def on_state(state: dict[str, dict[str, Any]]) -> None:
        for fact, entry in sorted(state.items()):
            value = entry.get("value", f"(no value: {entry.get('problem', 'unknown')})")
            if previous.get(fact) != value:
                previous[fact] = value
                timeline.print("vehicle", f"{fact} = {value}")

    return on_lock, on_state


async def act_one(client: KeyStorageClient, vehicle: ReferenceVehicle, directory: Path,
                  timeline: Timeline, outcomes: Outcomes, speed: float) -> bytes:
    print("\n=== Act 1: a drive cycle of the reference vehicle ===", flush=True)
    public_der = await client.generate_key(KEY_ID, owner_uid=os.getuid())
    timeline.print("pzp", f"key {KEY_ID!r} created in the TPM "
                   f"({len(public_der)}-byte public key)")
    stop = asyncio.Event()
    signer = asyncio.create_task(
        sign_loop(client, public_der, directory, timeline, outcomes, stop, 1.0 / speed))

    def on_step(step) -> None:
        timeline.print("car", step.label)

    await run_scenario(vehicle, DRIVE_CYCLE, on_step=on_step, speed=speed)
    timeline.print("car", "starting again: ignition RUN")
    vehicle.set(power_mode="RUN", alarm="DISARMED", central_lock="UNLOCKED")
    await asyncio.sleep(2.0)
    timeline.print("attack", "frames of VCU_PowerMode arrive with a wrong CRC")
    vehicle.inject("bad_crc", "VCU_PowerMode")
    await asyncio.sleep(2.0)
    vehicle.clear_faults()
    timeline.print("car", "VCU_PowerMode frames are correct again")
    await asyncio.sleep(2.0)
    timeline.print("car", "the bus goes silent")
    vehicle.inject("silence")
    await asyncio.sleep(2.0)
    stop.set()
    await signer
    return public_der


async def act_two(client: KeyStorageClient, server: SocketcandServer, public_der: bytes,
                  directory: Path, timeline: Timeline, outcomes: Outcomes) -> None:
    print("\n=== Act 2: replay of a recorded Ford Mustang GT350 key-on ===", flush=True)
    timeline.print("car", f"replaying {FORD_LOG.name} (8.8 s, real frames)")
    stop = asyncio.Event()
    signer = asyncio.create_task(
        sign_loop(client, public_der, directory, timeline, outcomes, stop, 1.0))
    sent = await replay_log(FORD_LOG, server.broadcast, speed=1.0)
    timeline.print("car", f"recording ended after {sent} frames")
    await asyncio.sleep(2.5)
    stop.set()
    await signer


async def run(speed: float) -> int:
    work = Path(tempfile.mkdtemp(prefix="keysvc-demo-"))
    timeline = Timeline()
    processes: list[Any] = []
    swtpm = start_swtpm(work / "tpm")
    processes.append(swtpm)
    dbus: DbusDaemon = start_dbus_daemon()
    processes.append(dbus)
    timeline.print("setup", f"swtpm on 127.0.0.1:{swtpm.port}, private dbus-daemon")
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="OFF", central_lock="LOCKED", alarm="ARMED")
    server = SocketcandServer(port=0)
    await server.start()
    transmitter = PeriodicTransmitter(vehicle, server.broadcast)
    transmitter.start()
    timeline.print("setup", f"vehicle simulator serving socketcand on 127.0.0.1:{server.port}")
    bus = await connect(dbus.address)
    client = KeyStorageClient(bus)
    on_lock, on_state = watch_printer(timeline, Outcomes())
    outcomes_one, outcomes_two = Outcomes(), Outcomes()
    service = None
    try:
        config = write_service_config(work, swtpm, dbus.address, server.port,
                                      REFERENCE_PROFILE)
        service = ServiceRunner(config, work / "service.log")
        await service.wait_ready(bus)
        timeline.print("setup", "vehicle-keysvc owns org.webinos.KeyStorage1")
        on_lock, on_state = watch_printer(timeline, outcomes_one)
        holder = {"lock": on_lock, "state": on_state}
        await client.watch(lambda locked, reason: holder["lock"](locked, reason),
                           lambda state: holder["state"](state))
        public_der = await act_one(client, vehicle, work, timeline, outcomes_one, speed)

        await transmitter.stop()
        service.stop()
        config = write_service_config(work, swtpm, dbus.address, server.port, FORD_PROFILE)
        service = ServiceRunner(config, work / "service-ford.log")
        await service.wait_ready(bus)
        timeline.print("setup", "service restarted with the Ford GT350 profile; "
                       "the key is still there")
        holder["lock"], holder["state"] = watch_printer(timeline, outcomes_two)
        await act_two(client, server, public_der, work, timeline, outcomes_two)
    finally:
        if service is not None:
            service.stop()
        if transmitter.running:
            await transmitter.stop()
        await server.stop()
        bus.disconnect()
        for process in reversed(processes):
            process.stop()
    shutil.rmtree(work, ignore_errors=True)
    return summarize(outcomes_one, outcomes_two)


def summarize(one: Outcomes, two: Outcomes) -> int:
    print("\n=== Summary ===")
    checks = [
        ("act 1: signatures verified by openssl", one.verified > 0),
        ("act 1: Sign refused while locked", one.refused.get("Locked", 0) > 0),
        ("act 1: keys unlocked and locked again", one.unlocks > 0 and one.locks > 0),
        ("act 2: Ford ignition Run unlocked the keys", two.unlocks > 0),
        ("act 2: signatures verified by openssl", two.verified > 0),
        ("act 2: keys locked once the recording ended", two.locks > 0),
        ("no signature failed openssl", one.failed_verifications + two.failed_verifications == 0),
    ]
    for label, ok in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {label}")
    print(f"  act 1: {one.verified} verified, refused {one.refused or 'never'}")
    print(f"  act 2: {two.verified} verified, refused {two.refused or 'never'}")
    return 0 if all(ok for _, ok in checks) else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--speed", type=float, default=1.0,
                        help="drive cycle speed factor (default 1.0 = real time)")
    args = parser.parse_args()
    if args.speed <= 0:
        parser.error(f"--speed {args.speed} is invalid: give a factor above 0")
    return asyncio.run(run(args.speed))


if __name__ == "__main__":
    sys.exit(main())
