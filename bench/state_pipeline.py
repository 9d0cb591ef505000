"""Benchmark of the vehicle state pipeline, side by side in one run.

    .venv/bin/python -m bench.state_pipeline [--quick]

It reports four measurements:

1. Frames per second that the pipeline (python-can virtual bus, Notifier,
   VehicleMonitor on an asyncio loop, as CanStateSource wires them) keeps
   up with, for mixed traffic with the profile's ``can_filters`` on and
   off. The runs alternate, and the table gives the median of the runs.
2. CPU time of the receiving threads per wall-clock second while 8,000
   frames/s of mixed traffic arrive, with filters on and off. A 1 Mbit/s
   bus carries about 8,000 8-byte frames/s (about 125 bits per frame with
   bit stuffing, an estimate).
3. CPU of the real service process, fed over the simulator's socketcand
   server, with the state frames alone and with 7,900 unrelated frames/s
   added (8,000 frames/s in all).
4. Latency from sending a frame that forbids use to the Locked reply of
   the next Sign, over D-Bus with the real service process, swtpm,
   dbus-daemon and the simulator's socketcand server (median and p99).

Mixed traffic is the reference vehicle's 100 state frames/s plus unrelated
frames on 64 other ids. The machine is shared and noisy, so compare the
columns of one run rather than numbers of different runs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import statistics
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import can
from dbus_fast.aio import MessageBus

from sim.demo import REFERENCE_PROFILE, ServiceRunner, write_service_config
from sim.processes import start_dbus_daemon, start_swtpm
from sim.socketcand import SocketcandServer
from sim.traffic import UnrelatedTraffic, burst, unrelated_ids
from sim.transmit import PeriodicTransmitter
from sim.vehicle import ReferenceVehicle
from vehicle_keysvc.client import KeyStorageClient, KeyStorageError
from vehicle_keysvc.monitor import VehicleMonitor
from vehicle_keysvc.profile import load_profile

MIXED_RATE = 8000.0  # frames per second, about a full 1 Mbit/s bus (an estimate)


def mixed_frames(count: int) -> list[can.Message]:
    """Return ``count`` frames: one state frame per 80, the rest unrelated."""
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    ids = unrelated_ids(64)
    frames: list[can.Message] = []
    now = 0.0
    while len(frames) < count:
        frames.extend(vehicle.due_frames(now))
        frames.extend(burst(80, now, ids))
        now += 0.01
    return frames[:count]


class Pipeline:
    """Receiving side as CanStateSource wires it, on a virtual bus."""

    def __init__(self, channel: str, filters: bool) -> None:
        self.monitor = VehicleMonitor(load_profile(REFERENCE_PROFILE))
        can_filters = self.monitor.profile.can_filters() if filters else None
        self.bus = can.Bus(interface="virtual", channel=channel, can_filters=can_filters)
        self.received = 0
        self.done = asyncio.Event()
        self.expected = 0
        self.notifier: can.Notifier | None = None

    def start(self) -> None:
        self.notifier = can.Notifier(
            self.bus, [self._on_frame], timeout=0.1, loop=asyncio.get_running_loop()
        )

    def _on_frame(self, frame: can.Message) -> None:
        self.received += 1
        self.monitor.on_frame(frame)
        if self.received >= self.expected:
            self.done.set()

    def reader_thread_ids(self) -> list[int]:
        # NOTE: python-can 4.6 keeps the Notifier's threads in a private list.
        assert self.notifier is not None
        return [t.native_id for t in self.notifier._readers if isinstance(t, threading.Thread)]

    def stop(self) -> None:
        if self.notifier is not None:
            self.notifier.stop()
        self.bus.shutdown()


async def throughput(filters: bool, frames: list[can.Message], run: int) -> float:
    channel = f"bench-throughput-{run}-{filters}"
    pipeline = Pipeline(channel, filters)
    relevant = {(m.frame_id, False) for m in pipeline.monitor.profile.messages.values()}
    pipeline.expected = (
        sum((f.arbitration_id, f.is_extended_id) in relevant for f in frames)
        if filters else len(frames)
    )
    sender = can.Bus(interface="virtual", channel=channel)
    pipeline.start()
    try:
        start = time.perf_counter()
        for frame in frames:
            sender.send(frame)
        await asyncio.wait_for(pipeline.done.wait(), timeout=120)
        return len(frames) / (time.perf_counter() - start)
    finally:
        pipeline.stop()
        sender.shutdown()


def thread_cpu_seconds(tids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for tid in tids:
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


async def cpu_share(filters: bool, seconds: float, run: int) -> float:
    """Return receiver CPU seconds per wall second at MIXED_RATE frames/s."""
    channel = f"bench-cpu-{run}-{filters}"
    pipeline = Pipeline(channel, filters)
    pipeline.expected = 1 << 62
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    traffic = UnrelatedTraffic(MIXED_RATE - 100.0)
    stop = threading.Event()

    def send() -> None:
        sender = can.Bus(interface="virtual", channel=channel)
        try:
            while not stop.is_set():
                now = time.time()
                for frame in vehicle.due_frames(now) + traffic.due_frames(now):
                    sender.send(frame)
                time.sleep(0.002)
        finally:
            sender.shutdown()

    pipeline.start()
    thread = threading.Thread(target=send, name="bench-sender")
    thread.start()
    try:
        await asyncio.sleep(0.5)  # warm-up
        tids = pipeline.reader_thread_ids() + [threading.get_native_id()]
        cpu_before, wall_before = thread_cpu_seconds(tids), time.monotonic()
        await asyncio.sleep(seconds)
        cpu = thread_cpu_seconds(tids) - cpu_before
        return cpu / (time.monotonic() - wall_before)
    finally:
        stop.set()
        thread.join()
        pipeline.stop()


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def service_cpu_share(
    server: SocketcandServer, pid: int, rate: float, seconds: float
) -> float:
    """Return the service process's CPU seconds per wall second under extra traffic.

    ``rate`` unrelated frames/s go out in addition to the state frames.
    """
    traffic = UnrelatedTraffic(rate) if rate > 0 else None
    stop = asyncio.Event()

    async def send() -> None:
        while not stop.is_set():
            if traffic is not None:
                for frame in traffic.due_frames(time.time()):
                    server.broadcast(frame)
            await asyncio.sleep(0.002)

    sender = asyncio.create_task(send())
    try:
        await asyncio.sleep(0.5)  # warm-up
        cpu_before, wall_before = process_cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(seconds)
        cpu = process_cpu_seconds(pid) - cpu_before
        return cpu / (time.monotonic() - wall_before)
    finally:
        stop.set()
        await sender


async def sign_latency(client: KeyStorageClient, server: SocketcandServer,
                       vehicle: ReferenceVehicle, digest: bytes) -> float:
    """Return seconds from a forbidding frame to the Locked reply of a Sign."""
    while await client.get_property("Locked"):
        await asyncio.sleep(0.02)

    vehicle.set(power_mode="OFF")
    start = time.perf_counter()
    server.broadcast(vehicle.encode("VCU_PowerMode"))
    try:
        while True:
            try:
                await client.sign("bench", digest)
            except KeyStorageError as err:
                if err.short_name == "Locked":
                    return time.perf_counter() - start
                raise
    finally:
        vehicle.set(power_mode="RUN")


async def service_measurements(
    samples: int, seconds: float, runs: int
) -> tuple[dict[float, list[float]], list[float]]:
    """Measure the real service over socketcand and D-Bus.

    Returns its CPU share per extra traffic rate and the Sign latencies.
    """
    work = Path(tempfile.mkdtemp(prefix="keysvc-bench-"))
    swtpm = start_swtpm(work / "tpm")
    dbus = start_dbus_daemon()
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED", central_lock="UNLOCKED")
    server = SocketcandServer(port=0)
    await server.start()
    transmitter = PeriodicTransmitter(vehicle, server.broadcast)
    transmitter.start()
    bus = await MessageBus(bus_address=dbus.address).connect()
    service = None
    shares: dict[float, list[float]] = {0.0: [], MIXED_RATE - 100.0: []}
    latencies = []

    try:
        config = write_service_config(work, swtpm, dbus.address, server.port,
                                      REFERENCE_PROFILE)
        service = ServiceRunner(config, work / "service.log")
        await service.wait_ready(bus)
        client = KeyStorageClient(bus)
        await client.generate_key("bench", owner_uid=os.getuid())
        digest = hashlib.sha256(b"bench").digest()

        for _ in range(runs):
            for rate in shares:
                share = await service_cpu_share(server, service.proc.pid, rate, seconds)
                shares[rate].append(share)
        for _ in range(samples):
            latencies.append(await sign_latency(client, server, vehicle, digest))
    finally:
        bus.disconnect()
        if service is not None:
            service.stop()
        await transmitter.stop()
        await server.stop()
        dbus.stop()
        swtpm.stop()
    if server.dropped_frames:
        print(f"warning: the socketcand server dropped {server.dropped_frames} frames "
              "for a client that did not keep up")
    return shares, latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def machine() -> str:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("python-can", "cantools", "dbus-fast", "tpm2-pytss")
    )
    return (f"nproc {os.cpu_count()}, {model}, Python {platform.python_version()}, "
            f"{versions}")


async def main_async(quick: bool) -> None:
    runs = 3 if quick else 5
    frames = mixed_frames(20_000 if quick else 80_000)
    print(f"machine: {machine()}")

    rates: dict[bool, list[float]] = {True: [], False: []}
    for run in range(runs):
        for filters in (True, False):
            rates[filters].append(await throughput(filters, frames, run))
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"\nthroughput, {len(frames)} mixed frames sent at once, median of {runs}")
    print("| filters | frames/s | min | max |")
    print("|---|---|---|---|")
    for filters in (True, False):
        values = rates[filters]
        print(f"| {'on' if filters else 'off'} | {statistics.median(values):,.0f} | "
              f"{min(values):,.0f} | {max(values):,.0f} |")
    print(f"ratio on/off: {on / off:.2f}")

    seconds = 2.0 if quick else 5.0
    shares: dict[bool, list[float]] = {True: [], False: []}
    for run in range(runs):
        for filters in (True, False):
            shares[filters].append(await cpu_share(filters, seconds, run))
    on, off = statistics.median(shares[True]), statistics.median(shares[False])
    print(f"\nCPU of the receiving threads at {MIXED_RATE:,.0f} frames/s, "
          f"{seconds:g} s per run, median of {runs}")
    print("| filters | CPU (% of one core) | min | max |")
    print("|---|---|---|---|")
    for filters in (True, False):
        values = shares[filters]
        print(f"| {'on' if filters else 'off'} | {100 * statistics.median(values):.1f} | "
              f"{100 * min(values):.1f} | {100 * max(values):.1f} |")
    print(f"ratio on/off: {on / off:.2f}")

    samples = 10 if quick else 100
    service_shares, latencies = await service_measurements(samples, seconds, runs)
    print(f"\nCPU of the service process over socketcand, {seconds:g} s per run, "
          f"median of {runs}")
    print("| traffic | CPU (% of one core) | min | max |")
    print("|---|---|---|---|")
    for rate, values in service_shares.items():
        label = f"state frames + {rate:,.0f} unrelated frames/s" if rate else (
            "state frames only (100/s)")
        print(f"| {label} | {100 * statistics.median(values):.1f} | "
              f"{100 * min(values):.1f} | {100 * max(values):.1f} |")

    print(f"\nforbidding frame to Locked reply of the next Sign, over D-Bus, "
          f"{samples} samples")
    print("| median (ms) | p99 (ms) | max (ms) |")
    print("|---|---|---|")
    print(f"| {1000 * statistics.median(latencies):.2f} | "
          f"{1000 * percentile(latencies, 0.99):.2f} | {1000 * max(latencies):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer and shorter runs, for a smoke test")
    asyncio.run(main_async(parser.parse_args().quick))


if __name__ == "__main__":
    main()
