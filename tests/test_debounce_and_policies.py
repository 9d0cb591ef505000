"""Debounced unlock, bus faults and named gate policies on encoded frames."""

from __future__ import annotations

import can
import pytest

from conftest import REFERENCE_PROFILE
from sim.vehicle import ReferenceVehicle
from vehicle_keysvc.config import parse_config
from vehicle_keysvc.errors import ConfigError
from vehicle_keysvc.gate_policy import parse_policies
from vehicle_keysvc.monitor import VehicleMonitor
from vehicle_keysvc.profile import load_profile

PAYMENT = {
    "Vehicle.Speed": {"max": 0},
    "Vehicle.Powertrain.Transmission.SelectedGear": {"values": ["P"]},
}
RUN_ONLY = {"Vehicle.LowVoltageSystemState": {"values": ["ON"]}}


@pytest.fixture(scope="module")
def profile():
    return load_profile(REFERENCE_PROFILE)


def feed(monitor: VehicleMonitor, vehicle: ReferenceVehicle, start: float,
         seconds: float) -> float:
    now = start
    while now < start + seconds:
        for frame in vehicle.due_frames(now):
            monitor.on_frame(frame, now)
        monitor.tick(now)
        now = round(now + 0.01, 6)
    return now


def power_frames_until_unlock(monitor: VehicleMonitor, vehicle: ReferenceVehicle,
                              start: float) -> int:
    """Return how many VCU_PowerMode frames arrive until the keys unlock."""
    count = 0
    now = start
    while monitor.locked and now < start + 5.0:
        for frame in vehicle.due_frames(now):
            monitor.on_frame(frame, now)
            count += frame.arbitration_id == 0x110
        monitor.tick(now)
        now = round(now + 0.01, 6)
    return count


def test_unlock_after_three_confirming_frames(profile) -> None:
    monitor = VehicleMonitor(profile)
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="OFF", alarm="DISARMED")
    now = feed(monitor, vehicle, 0.0, 1.0)
    assert monitor.locked is True

    vehicle.set(power_mode="RUN")
    frames = power_frames_until_unlock(monitor, vehicle, now)

    assert frames == 3
    assert monitor.locked is False


def test_debounce_one_frame_unlocks_at_once(profile) -> None:
    monitor = VehicleMonitor(profile, debounce_frames=1)
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="OFF", alarm="DISARMED")
    now = feed(monitor, vehicle, 0.0, 1.0)

    vehicle.set(power_mode="RUN")

    assert power_frames_until_unlock(monitor, vehicle, now) == 1


def test_waiting_reason_names_fact(profile) -> None:
    monitor = VehicleMonitor(profile)
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="OFF", alarm="DISARMED")
    now = feed(monitor, vehicle, 0.0, 1.0)
    vehicle.set(power_mode="RUN")
    feed(monitor, vehicle, now, 0.1)

    assert monitor.locked is True
    assert monitor.decision.reason == (
        "Vehicle.LowVoltageSystemState is not yet confirmed by 3 consecutive "
        "valid frames"
    )


def test_start_needs_sync_and_debounce(profile) -> None:
    monitor = VehicleMonitor(profile)
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")

    # INITIAL and SYNC, then the first OK frame, which comes before the
    # alarm's first OK frame in the same cycle and so confirms nothing yet,
    # then three confirming frames.
    assert power_frames_until_unlock(monitor, vehicle, 0.0) == 6


def test_allowed_change_keeps_unlocked_then_locks(profile) -> None:
    monitor = VehicleMonitor(profile)
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    now = feed(monitor, vehicle, 0.0, 1.0)
    epoch = monitor.lock_epoch

    # ACC is allowed as well: changing value does not need new confirmation.
    vehicle.set(power_mode="ACC")
    now = feed(monitor, vehicle, now, 0.1)
    assert monitor.locked is False

    vehicle.set(power_mode="OFF")
    monitor.on_frame(vehicle.encode("VCU_PowerMode", timestamp=now), now)
    assert monitor.locked is True
    assert monitor.lock_epoch == epoch + 1


@pytest.mark.parametrize("error_class,text", [(0x40, "bus-off"),
                                              (0x80, "bus error"),
                                              (0x0, "error frame 0x0")])
def test_error_frame_locks_at_once(profile, error_class: int, text: str) -> None:
    monitor = VehicleMonitor(profile)
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    now = feed(monitor, vehicle, 0.0, 1.0)

    error = can.Message(arbitration_id=error_class, is_error_frame=True, data=bytes(8))
    monitor.on_frame(error, now)

    assert monitor.locked is True
    assert monitor.decision.reason.startswith("CAN bus fault: ")
    assert text in monitor.decision.reason


def test_bus_fault_needs_fresh_confirmation(profile) -> None:
    monitor = VehicleMonitor(profile)
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    now = feed(monitor, vehicle, 0.0, 1.0)

    monitor.report_bus_fault("socketcand connection lost", now)
    locked_reason = monitor.decision.reason
    ticked = monitor.tick(now + 0.05)
    frames = power_frames_until_unlock(monitor, vehicle, now + 0.05)

    assert locked_reason == "CAN bus fault: socketcand connection lost"
    assert ticked.locked is True
    assert frames == 3
    assert monitor.bus_fault is None


def test_payment_policy_follows_speed_and_gear(profile) -> None:
    monitor = VehicleMonitor(profile, policies=parse_policies({"payment": PAYMENT}))
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED", gear="P", speed_kmh=0.0)
    now = feed(monitor, vehicle, 0.0, 1.0)
    parked = monitor.policy_decision("payment")

    vehicle.set(gear="D")
    now = feed(monitor, vehicle, now, 0.1)
    in_drive = monitor.policy_decision("payment")
    vehicle.set(speed_kmh=30.0)
    now = feed(monitor, vehicle, now, 0.5)
    moving = monitor.policy_decision("payment")

    assert parked.locked is False
    assert "SelectedGear is 126" in parked.reason
    assert in_drive.locked is True
    assert "SelectedGear is 127, allowed: 126" in in_drive.reason
    assert moving.locked is True
    assert monitor.locked is False


def test_run_only_policy_locks_in_acc(profile) -> None:
    monitor = VehicleMonitor(profile, policies=parse_policies({"run-only": RUN_ONLY}))
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="ACC", alarm="DISARMED")
    now = feed(monitor, vehicle, 0.0, 1.0)
    in_acc = monitor.policy_decision("run-only")
    vehicle.set(power_mode="RUN")
    feed(monitor, vehicle, now, 1.0)

    assert monitor.locked is False
    assert in_acc.locked is True
    assert in_acc.reason == (
        "gate policy 'run-only': Vehicle.LowVoltageSystemState is ACC, allowed: ON"
    )
    assert monitor.policy_decision("run-only").locked is False


def test_undefined_policy_is_locked(profile) -> None:
    monitor = VehicleMonitor(profile)
    decision = monitor.policy_decision("payment")
    assert decision.locked is True
    assert "gate policy 'payment' is not defined" in decision.reason


def test_policy_fact_missing_from_profile(profile, tmp_path) -> None:
    text = REFERENCE_PROFILE.read_text()
    start = text.index('[facts."Vehicle.Speed"]')
    end = text.index('[facts."Vehicle.Powertrain')
    trimmed = text[:start] + text[end:]
    trimmed = trimmed.replace("[messages.ESP_VehicleSpeed]\n", "").replace(
        'e2e = { counter = "VehicleSpeed_Counter", crc = "VehicleSpeed_CRC" }\n', "")
    (tmp_path / "vehicle.dbc").write_text((REFERENCE_PROFILE.parent / "vehicle.dbc").read_text())
    (tmp_path / "no-speed.toml").write_text(trimmed)
    no_speed = load_profile(tmp_path / "no-speed.toml")

    with pytest.raises(ConfigError, match=r"\[gate_policies.payment\] reads Vehicle.Speed"):
        VehicleMonitor(no_speed, policies=parse_policies({"payment": PAYMENT}))


@pytest.mark.parametrize(
    "table,message",
    [
        ({"bad name!": RUN_ONLY}, "policy name is invalid"),
        ({"p": {}}, "at least one condition"),
        ({"p": {"Vehicle.Colour": {"values": ["red"]}}}, "unknown fact 'Vehicle.Colour'"),
        ({"p": {"Vehicle.Speed": {"below": 3}}}, "unknown key(s) below"),
        ({"p": {"Vehicle.Speed": {"values": [0], "max": 1}}}, "not both"),
        ({"p": {"Vehicle.Speed": {"max": "0"}}}, "max must be a number"),
        ({"p": {"Vehicle.Speed": {"min": 5, "max": 1}}}, "min 5 is above max 1"),
        ({"p": {"Vehicle.LowVoltageSystemState": {"max": 1}}}, "only to numbers"),
        ({"p": {"Vehicle.LowVoltageSystemState": {"values": ["RUN"]}}},
         "'RUN' is not a VSS power state"),
        ({"p": {"Vehicle.Powertrain.Transmission.SelectedGear": {"values": ["X"]}}},
         "gear 'X' is invalid"),
        ({"p": {"Vehicle.Body.Alarm.IsActive": {"values": [0]}}}, "must be a bool"),
        ({"p": {"Vehicle.Speed": {"values": []}}}, "non-empty list"),
    ],
)
def test_policy_config_errors(table, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policies(table)
    assert message in str(caught.value)


def test_config_reads_policies_and_debounce(tmp_path) -> None:
    config = parse_config(
        {"vehicle": {"debounce_frames": 5}, "gate_policies": {"payment": PAYMENT}}, tmp_path
    )
    assert config.debounce_frames == 5
    assert config.gate_policies["payment"].required == [
        "Vehicle.Speed", "Vehicle.Powertrain.Transmission.SelectedGear"]


@pytest.mark.parametrize("value", [0, 101, 2.5, True])
def test_config_rejects_bad_debounce(tmp_path, value) -> None:
    with pytest.raises(ConfigError, match="debounce_frames"):
        parse_config({"vehicle": {"debounce_frames": value}}, tmp_path)
