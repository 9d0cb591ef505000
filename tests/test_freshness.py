"""Freshness limits: N cycle times, set per profile, message, fact or source."""

from __future__ import annotations

import pytest

from conftest import REFERENCE_PROFILE
from sim.vehicle import ReferenceVehicle
from vehicle_keysvc.errors import ConfigError
from vehicle_keysvc.monitor import VehicleMonitor
from vehicle_keysvc.profile import load_profile

POWER = "Vehicle.LowVoltageSystemState"
SPEED = "Vehicle.Speed"


def variant(tmp_path, *replacements: tuple[str, str]):
    (tmp_path / "vehicle.dbc").write_text((REFERENCE_PROFILE.parent / "vehicle.dbc").read_text())
    text = REFERENCE_PROFILE.read_text()
    for old, new in replacements:
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / "variant.toml"
    path.write_text(text)
    return load_profile(path)


def max_age(profile, fact: str, source: int = 0) -> float:
    return profile.facts[fact].sources[source].max_age


def test_default_three_dbc_cycle_times() -> None:
    profile = load_profile(REFERENCE_PROFILE)
    # GenMsgCycleTime: VCU_PowerMode 100 ms, ESP_VehicleSpeed 20 ms.
    assert max_age(profile, POWER) == pytest.approx(0.3)
    assert max_age(profile, SPEED) == pytest.approx(0.06)


def test_profile_wide_cycles(tmp_path) -> None:
    profile = variant(tmp_path, ("stale_after_cycles = 3", "stale_after_cycles = 5"))
    assert max_age(profile, POWER) == pytest.approx(0.5)
    assert max_age(profile, SPEED) == pytest.approx(0.1)


def test_cycle_time_override_beats_dbc(tmp_path) -> None:
    profile = variant(tmp_path, (
        "[messages.VCU_PowerMode]\n",
        "[messages.VCU_PowerMode]\ncycle_time_ms = 250\n",
    ))
    assert max_age(profile, POWER) == pytest.approx(0.75)
    assert max_age(profile, SPEED) == pytest.approx(0.06)


def test_message_fact_and_source_levels(tmp_path) -> None:
    profile = variant(
        tmp_path,
        ("[messages.ESP_VehicleSpeed]\n",
         "[messages.ESP_VehicleSpeed]\nstale_after_cycles = 10\n"),
        ('signal = "PowerMode"\n', 'signal = "PowerMode"\nstale_after_cycles = 2\n'),
    )
    assert max_age(profile, SPEED) == pytest.approx(0.2)
    assert max_age(profile, POWER) == pytest.approx(0.2)
    gear = "Vehicle.Powertrain.Transmission.SelectedGear"
    assert max_age(profile, gear) == pytest.approx(0.15)


def test_source_level_beats_fact_level(tmp_path) -> None:
    fact_table = '[facts."Vehicle.Speed"]\nmessage = "ESP_VehicleSpeed"\nsignal = "VehicleSpeed"\n'
    profile = variant(tmp_path, (fact_table, """\
[facts."Vehicle.Speed"]
stale_after_cycles = 4
combine = "any"

[[facts."Vehicle.Speed".sources]]
message = "ESP_VehicleSpeed"
signal = "VehicleSpeed"
stale_after_cycles = 8

[[facts."Vehicle.Speed".sources]]
message = "TCU_GearSelection"
signal = "SelectedGear"
unit = "km/h"
"""))
    assert max_age(profile, SPEED, 0) == pytest.approx(0.16)
    # TCU_GearSelection cycles at 50 ms: the fact's 4 cycles apply.
    assert max_age(profile, SPEED, 1) == pytest.approx(0.2)


def test_stale_after_custom_cycles_locks(tmp_path) -> None:
    profile = variant(
        tmp_path,
        ('signal = "PowerMode"\n', 'signal = "PowerMode"\nstale_after_cycles = 6\n'),
        ('signal = "AlarmState"\n', 'signal = "AlarmState"\nstale_after_cycles = 9\n'),
    )
    monitor = VehicleMonitor(profile)
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    now = 0.0
    while now < 1.0:
        for frame in vehicle.due_frames(now):
            monitor.on_frame(frame, now)
        now += 0.01
    last = now - monitor.view(now)[POWER].age
    assert monitor.tick(last + 0.55).locked is False
    decision = monitor.tick(last + 0.65)
    assert decision.locked is True
    assert decision.reason == (
        f"{POWER} is stale: no VCU_PowerMode frame for more than 0.60 s"
    )


@pytest.mark.parametrize("value", ["1", "0", "-3", '"three"', "nan", "true"])
def test_invalid_stale_cycles_rejected(tmp_path, value: str) -> None:
    with pytest.raises(ConfigError, match="stale_after_cycles"):
        variant(tmp_path, ('signal = "PowerMode"\n',
                           f'signal = "PowerMode"\nstale_after_cycles = {value}\n'))


@pytest.mark.parametrize("value", ["0", "-100", '"fast"', "inf"])
def test_invalid_cycle_time_rejected(tmp_path, value: str) -> None:
    with pytest.raises(ConfigError, match="cycle_time_ms"):
        variant(tmp_path, ("[messages.VCU_PowerMode]\n",
                           f"[messages.VCU_PowerMode]\ncycle_time_ms = {value}\n"))
