"""CAN transport on python-can's virtual interface, in one process."""

from __future__ import annotations

import asyncio

import can
import pytest

from conftest import REFERENCE_PROFILE, wait_until
from sim.transmit import PeriodicTransmitter
from sim.vehicle import ReferenceVehicle
from vehicle_keysvc.can_source import CanStateSource
from vehicle_keysvc.monitor import VehicleMonitor
from vehicle_keysvc.profile import load_profile


@pytest.mark.asyncio
async def test_virtual_bus_unlocks_then_locks() -> None:
    monitor = VehicleMonitor(load_profile(REFERENCE_PROFILE))
    source = CanStateSource(monitor, "virtual", "keysvc-unlock", tick_interval=0.01)
    sender = can.Bus(interface="virtual", channel="keysvc-unlock")
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    transmitter = PeriodicTransmitter(vehicle, sender.send)
    await source.start()
    try:
        await wait_until(lambda: source.connected)
        transmitter.start()
        await wait_until(lambda: not monitor.locked)
        vehicle.set(power_mode="OFF")
        await wait_until(lambda: monitor.locked)
        assert monitor.decision.reason == "Vehicle.LowVoltageSystemState is OFF"
        await transmitter.stop()
        await wait_until(lambda: "stale" in monitor.decision.reason)
    finally:
        if transmitter.running:
            await transmitter.stop()
        await source.stop()
        sender.shutdown()


@pytest.mark.asyncio
async def test_only_mapped_ids_received() -> None:
    monitor = VehicleMonitor(load_profile(REFERENCE_PROFILE))
    source = CanStateSource(monitor, "virtual", "keysvc-filter", tick_interval=0.01)
    sender = can.Bus(interface="virtual", channel="keysvc-filter")
    await source.start()
    try:
        await wait_until(lambda: source.connected)
        for arbitration_id in (0x7DF, 0x111, 0x100, 0x1FF):
            sender.send(can.Message(arbitration_id=arbitration_id, data=bytes(4),
                                    is_extended_id=False))
        sender.send(ReferenceVehicle().encode("VCU_PowerMode"))
        await wait_until(lambda: source.frames_received >= 1)
        await asyncio.sleep(0.2)
        assert source.frames_received == 1
    finally:
        await source.stop()
        sender.shutdown()
