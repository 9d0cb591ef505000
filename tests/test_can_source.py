"""CAN transport on python-can's virtual interface, in one process."""

from __future__ import annotations

import asyncio
import logging

import can
import pytest

from conftest import REFERENCE_PROFILE, wait_until
from sim.socketcand import SocketcandServer
from sim.transmit import PeriodicTransmitter
from sim.vehicle import ReferenceVehicle
from vehicle_keysvc.can_source import CanStateSource
from vehicle_keysvc.monitor import LockEvent, VehicleMonitor
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


@pytest.mark.asyncio
async def test_closed_socketcand_connection_locks_at_once() -> None:
    monitor = VehicleMonitor(load_profile(REFERENCE_PROFILE))
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    server = SocketcandServer(port=0)
    await server.start()
    port = server.port
    transmitter = PeriodicTransmitter(vehicle, server.broadcast)
    transmitter.start()
    # reopen_after is long, so only the closed connection can explain a reopen.
    source = CanStateSource(monitor, "socketcand", "vcan0",
                            {"host": "127.0.0.1", "port": port},
                            tick_interval=0.01, reopen_after=60.0)
    await source.start()
    try:
        await wait_until(lambda: not monitor.locked, timeout=30.0)
        await transmitter.stop()
        await server.stop()
        await wait_until(lambda: monitor.bus_fault is not None)
        reason = monitor.decision.reason
        faults = source.fault_count

        server = SocketcandServer(port=port)
        await server.start()
        transmitter = PeriodicTransmitter(vehicle, server.broadcast)
        transmitter.start()
        await wait_until(lambda: not monitor.locked, timeout=30.0)

        assert reason == "CAN bus fault: socketcand connection closed by the server"
        assert faults == 1
        assert source.reopen_count == 1
        assert monitor.bus_fault is None
    finally:
        await transmitter.stop()
        await source.stop()
        await server.stop()


# python-can's Notifier raises the receive error again in its own thread
# after it has called on_error, and pytest reports that as a warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.asyncio
async def test_receive_error_locks_and_reopens() -> None:
    monitor = VehicleMonitor(load_profile(REFERENCE_PROFILE))
    source = CanStateSource(monitor, "virtual", "keysvc-error", tick_interval=0.01,
                            reopen_after=60.0)
    sender = can.Bus(interface="virtual", channel="keysvc-error")
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    transmitter = PeriodicTransmitter(vehicle, sender.send)
    await source.start()
    try:
        await wait_until(lambda: source.connected)
        transmitter.start()
        await wait_until(lambda: not monitor.locked)
        bus = source._bus
        assert bus is not None

        def failing_recv(timeout=None):
            raise can.CanError("interface went down")

        reasons: list[str] = []
        monitor.add_listener(
            lambda e: reasons.append(e.decision.reason)
            if isinstance(e, LockEvent) and e.decision.locked else None
        )
        bus.recv = failing_recv  # type: ignore[method-assign]
        await wait_until(lambda: source.reopen_count == 1)
        await wait_until(lambda: not monitor.locked)

        assert reasons[0] == "CAN bus fault: receive failed: interface went down"
        assert source.reopen_count == 1
    finally:
        await transmitter.stop()
        await source.stop()
        sender.shutdown()


def test_error_frame_flood_logs_one_episode(caplog) -> None:
    monitor = VehicleMonitor(load_profile(REFERENCE_PROFILE))
    source = CanStateSource(monitor, "virtual", "keysvc-flood")
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    bus_off = can.Message(arbitration_id=0x40, is_error_frame=True, data=bytes(8))

    with caplog.at_level(logging.INFO, logger="vehicle_keysvc.can_source"):
        for _ in range(50):
            source._on_frame(bus_off)
            source._on_frame(vehicle.encode("VCU_PowerMode"))

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "CAN bus fault on virtual channel keysvc-flood: error frame: bus-off" in (
        warnings[0].getMessage())
    assert "received again" not in caplog.text
    assert source.error_frames == 50
    assert monitor.locked is True


def test_repeated_faults_back_off() -> None:
    monitor = VehicleMonitor(load_profile(REFERENCE_PROFILE))
    source = CanStateSource(monitor, "virtual", "keysvc-backoff")
    waits: list[float] = []
    source._start_connecting = waits.append  # type: ignore[method-assign]
    vehicle = ReferenceVehicle()

    for _ in range(7):
        source._fault("receive failed: interface went down")
    # Frames a second after the last fault end the episode.
    source._last_fault -= 2.0
    source._on_frame(vehicle.encode("VCU_PowerMode"))

    assert waits == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert source.fault_backoff == 0.0
    assert source.reopen_count == 7


@pytest.mark.asyncio
async def test_error_frame_passes_filters_and_locks() -> None:
    monitor = VehicleMonitor(load_profile(REFERENCE_PROFILE))
    source = CanStateSource(monitor, "virtual", "keysvc-errorframe", tick_interval=0.01)
    sender = can.Bus(interface="virtual", channel="keysvc-errorframe")
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    transmitter = PeriodicTransmitter(vehicle, sender.send)
    reasons: list[str] = []
    monitor.add_listener(
        lambda e: reasons.append(e.decision.reason)
        if isinstance(e, LockEvent) and e.decision.locked else None
    )
    await source.start()
    try:
        await wait_until(lambda: source.connected)
        transmitter.start()
        await wait_until(lambda: not monitor.locked)
        # Bus-off as Linux reports it: error flag plus the CAN_ERR_BUSOFF class.
        sender.send(can.Message(arbitration_id=0x40, is_extended_id=True,
                                is_error_frame=True, data=bytes(8)))
        await wait_until(lambda: source.error_frames == 1)
        await wait_until(lambda: not monitor.locked)

        assert "CAN bus fault: error frame: bus-off" in reasons
        assert source.reopen_count == 0
    finally:
        await transmitter.stop()
        await source.stop()
        sender.shutdown()
