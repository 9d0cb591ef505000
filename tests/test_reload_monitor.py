"""A reloaded monitor keeps what did not change, on encoded frames of the reference car."""

from __future__ import annotations

import pytest

from conftest import FORD_PROFILE, REFERENCE_PROFILE
from sim.vehicle import ReferenceVehicle
from test_debounce_and_policies import PAYMENT, RUN_ONLY, feed
from vehicle_keysvc.gate_policy import parse_policies
from vehicle_keysvc.monitor import Event, LockEvent, VehicleMonitor
from vehicle_keysvc.profile import load_profile


@pytest.fixture(scope="module")
def profile():
    return load_profile(REFERENCE_PROFILE)


def unlocked_monitor(profile, policies: dict) -> tuple[VehicleMonitor, ReferenceVehicle, float]:
    monitor = VehicleMonitor(profile, policies=parse_policies(policies))
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED", gear="P", speed_kmh=0.0)
    now = feed(monitor, vehicle, 0.0, 1.0)
    return monitor, vehicle, now


def test_same_settings_stay_unlocked(profile) -> None:
    monitor, vehicle, now = unlocked_monitor(profile, {"payment": PAYMENT})
    epoch = monitor.lock_epoch
    fresh = VehicleMonitor(profile, policies=parse_policies({"payment": PAYMENT}))

    monitor.replace_settings(fresh, profile_changed=False)
    monitor.tick(now)

    assert monitor.locked is False
    assert monitor.policy_decision("payment").locked is False
    assert monitor.lock_epoch == epoch


def test_changed_policy_relocks_only_its_keys(profile) -> None:
    monitor, vehicle, now = unlocked_monitor(profile, {"payment": PAYMENT, "run-only": RUN_ONLY})
    payment_epoch = monitor.policy_epoch("payment")
    stricter = {"Vehicle.Speed": {"max": 0}, "Vehicle.Powertrain.Transmission.SelectedGear":
                {"values": ["P"]}, "Vehicle.LowVoltageSystemState": {"values": ["ON"]}}
    fresh = VehicleMonitor(
        profile, policies=parse_policies({"payment": stricter, "run-only": RUN_ONLY}))

    monitor.replace_settings(fresh, profile_changed=False)
    monitor.tick(now)
    relocked = monitor.policy_decision("payment")
    feed(monitor, vehicle, now, 1.0)

    assert monitor.locked is False
    assert monitor.policy_decision("run-only").locked is False
    assert relocked.locked is True
    assert "not yet confirmed" in relocked.reason
    assert monitor.policy_epoch("payment") == payment_epoch + 1
    assert monitor.policy_decision("payment").locked is False


def test_removed_policy_locks_its_keys(profile) -> None:
    monitor, _, now = unlocked_monitor(profile, {"payment": PAYMENT})

    monitor.replace_settings(VehicleMonitor(profile), profile_changed=False)
    monitor.tick(now)

    assert monitor.policy_decision("payment").locked is True
    assert monitor.locked is False


def test_new_profile_locks_with_event(profile) -> None:
    monitor, _, now = unlocked_monitor(profile, {})
    events: list[Event] = []
    monitor.add_listener(events.append)
    epoch = monitor.lock_epoch
    ford = load_profile(FORD_PROFILE)

    monitor.replace_settings(VehicleMonitor(ford), profile_changed=True)
    monitor.tick(now)

    locks = [e for e in events if isinstance(e, LockEvent) and e.lock_changed]
    assert monitor.locked is True
    assert monitor.profile is not profile
    assert "no frame of" in monitor.decision.reason
    assert monitor.lock_epoch == epoch + 1
    assert len(locks) == 1
    assert locks[0].decision.locked is True


def test_new_profile_locks_before_tick(profile) -> None:
    monitor, _, _ = unlocked_monitor(profile, {})

    monitor.replace_settings(VehicleMonitor(load_profile(FORD_PROFILE)), profile_changed=True)

    assert monitor.locked is True
    assert "no frame of" in monitor.decision.reason
