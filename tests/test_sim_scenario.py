"""Tests of the drive cycle, the scenario runner and the periodic transmitter."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import can
import cantools
import pytest

from sim.scenario import DRIVE_CYCLE, Step, run_scenario
from sim.transmit import PeriodicTransmitter
from sim.vehicle import ReferenceVehicle
from vehicle_keysvc.e2e import compute_crc

DATABASE = cantools.database.load_file(
    str(Path(__file__).resolve().parent.parent / "dbc" / "vehicle.dbc"), strict=True
)
_channel_numbers = itertools.count()


def final_state(steps: list[Step]) -> dict:
    vehicle = ReferenceVehicle()
    for step in steps:
        vehicle.set(**step.changes)
    return vehicle.state


def test_drive_cycle_in_time_order():
    times = [step.at for step in DRIVE_CYCLE]

    assert times == sorted(times)
    assert times[0] == 0.0
    assert 20.0 <= times[-1] <= 25.0


def test_drive_cycle_starts_parked_and_locked():
    start = final_state(DRIVE_CYCLE[:1])

    assert start == {
        "power_mode": "OFF",
        "speed_kmh": 0.0,
        "gear": "P",
        "central_lock": "LOCKED",
        "alarm": "ARMED",
    }


def test_drive_cycle_ends_parked_and_locked():
    assert final_state(DRIVE_CYCLE) == {
        "power_mode": "OFF",
        "speed_kmh": 0.0,
        "gear": "P",
        "central_lock": "LOCKED",
        "alarm": "ARMED",
    }


def test_drive_cycle_speed_ramps_up_and_down():
    speeds = [
        step.changes["speed_kmh"]
        for step in DRIVE_CYCLE[1:]
        if "speed_kmh" in step.changes
    ]
    peak = speeds.index(max(speeds))

    assert max(speeds) == 50
    assert speeds[: peak + 1] == sorted(speeds[: peak + 1])
    assert speeds[peak:] == sorted(speeds[peak:], reverse=True)
    assert speeds[-1] == 0
    assert len(speeds) >= 10


def test_drive_cycle_order_of_events():
    """Unlock before ignition, RUN before gear D, moving only in D with RUN."""
    vehicle = ReferenceVehicle()
    seen = []
    for step in DRIVE_CYCLE:
        vehicle.set(**step.changes)
        seen.append(vehicle.state)
        if vehicle.speed_kmh > 0:
            assert vehicle.gear == "D", step.label
            assert vehicle.power_mode == "RUN", step.label
            assert vehicle.central_lock == "UNLOCKED", step.label
        if vehicle.power_mode != "OFF":
            assert vehicle.alarm == "DISARMED", step.label

    assert any(state["power_mode"] == "ACC" for state in seen)
    assert any(state["power_mode"] == "RUN" for state in seen)


def test_drive_cycle_labels_present():
    labels = [step.label for step in DRIVE_CYCLE]

    assert all(labels)
    assert "ignition RUN" in labels


@pytest.mark.asyncio
async def test_run_scenario_applies_steps_in_order():
    vehicle = ReferenceVehicle()
    applied = []

    def record(step: Step) -> None:
        applied.append((step.label, vehicle.state))

    await run_scenario(vehicle, DRIVE_CYCLE, on_step=record, speed=200.0)

    assert [label for label, _ in applied] == [step.label for step in DRIVE_CYCLE]
    assert applied[3] == ("ignition RUN", {**applied[2][1], "power_mode": "RUN"})
    assert vehicle.state == final_state(DRIVE_CYCLE)


@pytest.mark.asyncio
async def test_run_scenario_waits_for_step_time():
    vehicle = ReferenceVehicle()
    steps = [Step(0.0, "now", {"gear": "R"}), Step(3600.0, "in an hour", {"gear": "D"})]
    task = asyncio.create_task(run_scenario(vehicle, steps))
    try:
        async with asyncio.timeout(5):
            while vehicle.gear != "R":
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert vehicle.gear == "R"
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.asyncio
async def test_run_scenario_rejects_unordered_steps():
    vehicle = ReferenceVehicle()
    steps = [Step(1.0, "late", {"gear": "D"}), Step(0.5, "early", {"gear": "R"})]

    with pytest.raises(ValueError, match="out of order"):
        await run_scenario(vehicle, steps)

    assert vehicle.gear == "P"


@pytest.mark.asyncio
@pytest.mark.parametrize("speed", [0.0, -1.0, float("nan")])
async def test_run_scenario_rejects_bad_speed(speed):
    with pytest.raises(ValueError, match="invalid speed"):
        await run_scenario(ReferenceVehicle(), DRIVE_CYCLE, speed=speed)


@pytest.mark.asyncio
async def test_run_scenario_invalid_change_raises():
    vehicle = ReferenceVehicle()
    steps = [Step(0.0, "fine", {"gear": "R"}), Step(0.0, "broken", {"gear": "X"})]

    with pytest.raises(ValueError, match="'X'"):
        await run_scenario(vehicle, steps)

    assert vehicle.gear == "R"


def receive(bus: can.BusABC, count: int, timeout: float = 5.0) -> list[can.Message]:
    frames: list[can.Message] = []
    while len(frames) < count:
        frame = bus.recv(timeout)
        if frame is None:
            break
        frames.append(frame)
    return frames


@pytest.mark.asyncio
async def test_transmitter_sends_valid_frames_on_virtual_bus():
    channel = f"sim-transmit-{next(_channel_numbers)}"
    receiver = can.Bus(interface="virtual", channel=channel)
    sender = can.Bus(interface="virtual", channel=channel)
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", speed_kmh=42.0)
    transmitter = PeriodicTransmitter(vehicle, sender.send)
    try:
        transmitter.start()
        frames = await asyncio.to_thread(receive, receiver, 60)
    finally:
        await transmitter.stop()
        sender.shutdown()
        receiver.shutdown()

    assert len(frames) == 60
    assert transmitter.frames_sent >= 60
    speed_frames = [f for f in frames if f.arbitration_id == 0x120]
    power_frames = [f for f in frames if f.arbitration_id == 0x110]
    assert len(speed_frames) >= 3
    assert power_frames
    for frame in frames:
        message = DATABASE.get_message_by_frame_id(frame.arbitration_id)
        data_id = message.dbc.attributes["E2EDataID"].value
        assert frame.data[0] == compute_crc(data_id, bytes(frame.data), 0)
    assert all(
        DATABASE.decode_message(0x120, f.data)["VehicleSpeed"] == 42.0
        for f in speed_frames
    )
    assert DATABASE.decode_message(0x110, power_frames[0].data)["PowerMode"] == "RUN"
    counters = [f.data[1] & 0x0F for f in speed_frames]
    assert all(
        (b - a) % 16 == 1 for a, b in zip(counters[:-1], counters[1:], strict=True)
    )


@pytest.mark.asyncio
async def test_transmitter_stop_ends_sending():
    sent: list[can.Message] = []
    transmitter = PeriodicTransmitter(ReferenceVehicle(), sent.append)
    transmitter.start()
    async with asyncio.timeout(5):
        while len(sent) < 5:
            await asyncio.sleep(0.01)
    await transmitter.stop()
    count = len(sent)
    await asyncio.sleep(0.05)

    assert not transmitter.running
    assert len(sent) == count


@pytest.mark.asyncio
async def test_transmitter_survives_sink_errors():
    received: list[can.Message] = []

    def power_mode_fails(msg: can.Message) -> None:
        if msg.arbitration_id == 0x110:
            raise can.CanOperationError("transmit buffer full")
        received.append(msg)

    transmitter = PeriodicTransmitter(ReferenceVehicle(), power_mode_fails)
    transmitter.start()
    try:
        async with asyncio.timeout(5):
            while transmitter.send_errors < 2 or len(received) < 20:
                await asyncio.sleep(0.01)
        assert transmitter.running
        assert transmitter.frames_sent == len(received)
    finally:
        await transmitter.stop()


@pytest.mark.asyncio
async def test_transmitter_start_twice_rejected():
    transmitter = PeriodicTransmitter(ReferenceVehicle(), lambda msg: None)
    transmitter.start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            transmitter.start()
    finally:
        await transmitter.stop()


@pytest.mark.asyncio
async def test_transmitter_other_sink_error_raised_by_stop():
    def broken_sink(msg: can.Message) -> None:
        raise KeyError("not a bus error")

    transmitter = PeriodicTransmitter(ReferenceVehicle(), broken_sink)
    transmitter.start()
    async with asyncio.timeout(5):
        while transmitter.running:
            await asyncio.sleep(0.01)

    with pytest.raises(KeyError):
        await transmitter.stop()
