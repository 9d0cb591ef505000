"""Vehicle state decoding and gate decisions on frames encoded with cantools."""

from __future__ import annotations

import can
import pytest

from conftest import FORD_LOG, FORD_PROFILE, REFERENCE_PROFILE
from sim.vehicle import ReferenceVehicle
from vehicle_keysvc.monitor import LockEvent, VehicleMonitor
from vehicle_keysvc.profile import load_profile
from vehicle_keysvc.replay import read_frames, replay


@pytest.fixture(scope="module")
def profile():
    return load_profile(REFERENCE_PROFILE)


def feed(monitor: VehicleMonitor, vehicle: ReferenceVehicle, start: float,
         seconds: float, step: float = 0.01) -> float:
    now = start
    while now < start + seconds:
        for frame in vehicle.due_frames(now):
            monitor.on_frame(frame, now)
        monitor.tick(now)
        now += step
    return now


def test_unlocked_in_run_and_acc(profile) -> None:
    monitor = VehicleMonitor(profile)
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    now = feed(monitor, vehicle, 100.0, 1.0)
    assert monitor.locked is False
    vehicle.set(power_mode="ACC")
    feed(monitor, vehicle, now, 0.5)
    assert monitor.locked is False
    assert monitor.decision.reason.startswith("Vehicle.LowVoltageSystemState is ACC")


@pytest.mark.parametrize("mode,state", [("OFF", "OFF"), ("CRANK", "START")])
def test_locked_in_other_power_modes(profile, mode: str, state: str) -> None:
    monitor = VehicleMonitor(profile)
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode=mode, alarm="DISARMED")
    feed(monitor, vehicle, 0.0, 1.0)
    assert monitor.locked is True
    assert monitor.decision.reason == f"Vehicle.LowVoltageSystemState is {state}"


def test_first_frame_not_trusted(profile) -> None:
    monitor = VehicleMonitor(profile)
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    for frame in vehicle.due_frames(0.0):
        monitor.on_frame(frame, 0.0)
    assert monitor.locked is True
    assert "E2E counter not yet confirmed" in monitor.decision.reason


def test_lock_is_immediate_on_forbidding_frame(profile) -> None:
    monitor = VehicleMonitor(profile)
    events: list[LockEvent] = []
    monitor.add_listener(lambda e: events.append(e) if isinstance(e, LockEvent) else None)
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    now = feed(monitor, vehicle, 0.0, 1.0)
    epoch = monitor.lock_epoch
    vehicle.set(power_mode="OFF")
    frame = vehicle.encode("VCU_PowerMode", timestamp=now)
    monitor.on_frame(frame, now)
    assert monitor.locked is True
    assert monitor.lock_epoch == epoch + 1
    assert events[-1].timestamp == now
    assert events[-1].lock_changed is True


def test_stale_after_three_cycles(profile) -> None:
    monitor = VehicleMonitor(profile)
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    now = feed(monitor, vehicle, 0.0, 1.0)
    last = now - monitor.view(now)["Vehicle.LowVoltageSystemState"].age
    # VCU_PowerMode cycles at 100 ms: stale once older than 300 ms.
    assert monitor.tick(last + 0.29).locked is False
    decision = monitor.tick(last + 0.35)
    assert decision.locked is True
    assert "stale" in decision.reason
    assert "no VCU_PowerMode frame for more than 0.30 s" in decision.reason


def test_unmapped_raw_value_is_invalid(profile) -> None:
    monitor = VehicleMonitor(profile)
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    now = feed(monitor, vehicle, 0.0, 1.0)
    vehicle.inject("invalid_value", "VCU_PowerMode")
    now = feed(monitor, vehicle, now, 0.3)
    views = monitor.view(now)
    assert views["Vehicle.LowVoltageSystemState"].value is None
    assert "INVALID (7) is not mapped" in views["Vehicle.LowVoltageSystemState"].problem
    assert monitor.locked is True


def test_short_protected_frame_fails_e2e(profile) -> None:
    monitor = VehicleMonitor(profile)
    frame = can.Message(arbitration_id=0x120, data=bytes([0, 1]), is_extended_id=False)
    monitor.on_frame(frame, 1.0)
    view = monitor.view(1.0)["Vehicle.Speed"]
    assert view.value is None
    assert view.problem == "ESP_VehicleSpeed failed its E2E check (ERROR)"


def test_short_frame_signal_is_missing() -> None:
    monitor = VehicleMonitor(load_profile(FORD_PROFILE))
    # Veh_V_ActlEng sits in bytes 6 and 7 of EngVehicleSpThrottle2 (0x202).
    frame = can.Message(arbitration_id=0x202, data=bytes(4), is_extended_id=False)
    monitor.on_frame(frame, 1.0)
    view = monitor.view(1.0)["Vehicle.Speed"]
    assert view.value is None
    assert view.problem == (
        "Veh_V_ActlEng is missing from a 4-byte frame of EngVehicleSpThrottle2"
    )


def test_profile_without_alarm_gates_on_power(tmp_path) -> None:
    text = REFERENCE_PROFILE.read_text()
    start = text.index('[facts."Vehicle.Body.Alarm.IsActive"]')
    trimmed = text[:start].replace("[messages.BCM_AlarmState]\n", "").replace(
        'e2e = { counter = "AlarmState_Counter", crc = "AlarmState_CRC" }\n', "")
    (tmp_path / "vehicle.dbc").write_text((REFERENCE_PROFILE.parent / "vehicle.dbc").read_text())
    path = tmp_path / "no-alarm.toml"
    path.write_text(trimmed)
    profile = load_profile(path)
    assert "Vehicle.Body.Alarm.IsActive" not in profile.provided_facts
    monitor = VehicleMonitor(profile)
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="TRIGGERED")
    feed(monitor, vehicle, 0.0, 1.0)
    assert monitor.locked is False
    assert monitor.decision.reason == "Vehicle.LowVoltageSystemState is ON"


def test_ford_replay_timeline() -> None:
    timeline = replay(load_profile(FORD_PROFILE), read_frames(FORD_LOG))
    gates = [(round(e.time, 2), e.locked) for e in timeline if e.kind == "gate"]
    power = [(round(e.time, 2), e.value) for e in timeline
             if e.fact == "Vehicle.LowVoltageSystemState"]
    locks = [e.value for e in timeline
             if e.fact == "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked"]

    # Ignition reads Off at 0.02 s and Run from 0.21 s (first frame at 0.0 s).
    assert power == [(0.02, "OFF"), (0.21, "ON")]
    assert [locked for _, locked in gates] == [True, True, True, False, True]
    # Run at 0.21 s is confirmed by the third Run frame, at 0.50 s.
    assert gates[2] == (0.21, True)
    assert gates[3] == (0.5, False)
    # The last ignition frame is at 8.61 s; 1.5 s later it is stale.
    assert 10.0 < gates[4][0] < 10.2
    assert locks == [False, True, False, True, False]


def test_replay_timeline_independent_of_tick_rate() -> None:
    profile = load_profile(FORD_PROFILE)
    frames = list(read_frames(FORD_LOG))
    fine = [(e.kind, e.fact, e.locked) for e in replay(profile, frames, tick=0.01)]
    coarse = [(e.kind, e.fact, e.locked) for e in replay(profile, frames, tick=0.05)]
    assert fine == coarse
