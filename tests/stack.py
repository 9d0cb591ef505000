"""The whole product on real parts: swtpm, dbus-daemon, simulator, service."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dbus_fast.aio import MessageBus

from conftest import ServiceProcess, wait_for_service, wait_until, write_config
from sim.processes import DbusDaemon, Swtpm
from sim.socketcand import SocketcandServer
from sim.transmit import PeriodicTransmitter
from sim.vehicle import ReferenceVehicle
from vehicle_keysvc.client import KeyStorageClient


@dataclass
class Stack:
    swtpm: Swtpm
    dbus: DbusDaemon
    bus: MessageBus
    client: KeyStorageClient
    vehicle: ReferenceVehicle
    server: SocketcandServer
    transmitter: PeriodicTransmitter
    config: Path
    directory: Path
    service: ServiceProcess | None = None

    async def start_service(self) -> ServiceProcess:
        self.service = ServiceProcess(self.config, self.directory / "service.log")
        await wait_for_service(self.service, self.bus)
        return self.service

    def stop_service(self) -> int:
        assert self.service is not None
        code = self.service.stop()
        self.service = None
        return code

    async def close(self) -> None:
        if self.service is not None:
            self.stop_service()
        await self.transmitter.stop()
        await self.server.stop()


async def start_stack(swtpm: Swtpm, dbus: DbusDaemon, bus: MessageBus,
                      directory: Path, policies: str = "") -> Stack:
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED", central_lock="UNLOCKED")
    server = SocketcandServer(port=0)
    await server.start()
    transmitter = PeriodicTransmitter(vehicle, server.broadcast)
    transmitter.start()
    config = write_config(directory, tcti=swtpm.tcti, bus_address=dbus.address,
                          can_port=server.port)
    if policies:
        config.write_text(config.read_text() + "\n" + policies)
    stack = Stack(swtpm, dbus, bus, KeyStorageClient(bus), vehicle, server,
                  transmitter, config, directory)
    await stack.start_service()
    return stack


async def unlocked(stack: Stack) -> None:
    """Wait until the service reports its keys unlocked."""

    async def is_unlocked() -> bool:
        return not await stack.client.get_property("Locked")

    await wait_until(is_unlocked)


async def locked(stack: Stack) -> None:
    """Wait until the service reports its keys locked."""

    async def is_locked() -> bool:
        return bool(await stack.client.get_property("Locked"))

    await wait_until(is_locked)
