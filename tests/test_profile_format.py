"""The profile format: sources, combine rules, value transforms and checks."""

from __future__ import annotations

import textwrap

import pytest

from conftest import REPO
from vehicle_keysvc.errors import ConfigError
from vehicle_keysvc.profile import SignalSource, load_profile

CAMARO_DBC = REPO / "dbc" / "gm_global_a_powertrain_generated.dbc"
POWER = "Vehicle.LowVoltageSystemState"
SPEED = "Vehicle.Speed"


def camaro(tmp_path, body: str, **kwargs):
    path = tmp_path / "camaro.toml"
    messages = "".join(f"[messages.{name}]\ncycle_time_ms = 100\n"
                       for name in ("BCMGeneralPlatformStatus", "ECMVehicleSpeed")
                       if name in body)
    path.write_text(f'name = "t"\ndbc = "{CAMARO_DBC}"\n' + messages + textwrap.dedent(body))
    return load_profile(path, **kwargs)


POWER_FACT = """
    [facts."Vehicle.LowVoltageSystemState"]
    message = "BCMGeneralPlatformStatus"
    signal = "SystemPowerMode"
    values = { Off = "OFF", Run = "ON" }
    """


def test_mph_converted_to_kmh(tmp_path) -> None:
    profile = camaro(tmp_path, POWER_FACT + """
        [facts."Vehicle.Speed"]
        message = "ECMVehicleSpeed"
        signal = "VehicleSpeed"
        """)
    source = profile.facts[SPEED].sources[0]
    assert source.convert({"VehicleSpeed": 100.0}) == (pytest.approx(160.9344), None)


def test_factor_offset_then_unit(tmp_path) -> None:
    profile = camaro(tmp_path, POWER_FACT + """
        [facts."Vehicle.Speed"]
        message = "ECMVehicleSpeed"
        signal = "VehicleSpeed"
        factor = 2.0
        offset = -1.0
        unit = "m/s"
        """)
    source = profile.facts[SPEED].sources[0]
    value, problem = source.convert({"VehicleSpeed": 10.0})
    assert value == pytest.approx(19.0 * 3.6)
    assert problem is None


def test_raw_integer_keys_and_labels(tmp_path) -> None:
    profile = camaro(tmp_path, """
        [facts."Vehicle.LowVoltageSystemState"]
        message = "BCMGeneralPlatformStatus"
        signal = "SystemPowerMode"
        values = { Off = "OFF", 2 = "ON" }
        """)
    source = profile.facts[POWER].sources[0]
    assert source.convert({"SystemPowerMode": 2}) == ("ON", None)
    assert source.convert({"SystemPowerMode": 0}) == (None, (
        "SystemPowerMode: raw value 0 is not mapped by the profile"))


def test_combined_signals_key_order() -> None:
    source = SignalSource(POWER, "DOORS", ("KEY_ON", "KEY_ACC"),
                          values={"1,0": "START", "0,1": "ACC"})
    assert source.convert({"KEY_ON": 1, "KEY_ACC": 0}) == ("START", None)
    assert source.convert({"KEY_ON": 0, "KEY_ACC": 1}) == ("ACC", None)
    assert source.convert({"KEY_ON": 1, "KEY_ACC": 1}) == (
        None, "KEY_ON+KEY_ACC: raw values 1,1 are not mapped by the profile")


def test_single_source_fact_accepts_fact_keys(tmp_path) -> None:
    profile = camaro(tmp_path, POWER_FACT + """
        [facts."Vehicle.Speed"]
        message = "ECMVehicleSpeed"
        signal = "VehicleSpeed"
        combine = "any"
        tolerance = 2.5
        """)
    assert profile.facts[SPEED].combine == "any"
    assert profile.facts[SPEED].tolerance == 2.5


def test_arrival_source_gives_constant(tmp_path) -> None:
    profile = camaro(tmp_path, """
        [facts."Vehicle.LowVoltageSystemState"]
        message = "BCMGeneralPlatformStatus"
        value = "ACC"
        """)
    source = profile.facts[POWER].sources[0]
    assert source.signals == ()
    assert source.name == "BCMGeneralPlatformStatus"
    assert source.convert({}) == ("ACC", None)


@pytest.mark.parametrize("body,message", [
    ("""
     [facts."Vehicle.LowVoltageSystemState"]
     combine = "first"
     message = "BCMGeneralPlatformStatus"
     value = "ON"
     """, "combine = 'first' is invalid"),
    ("""
     [facts."Vehicle.LowVoltageSystemState"]
     message = "BCMGeneralPlatformStatus"
     signal = "SystemPowerMode"
     value = "ON"
     """, "set 'signal' or 'value', not both"),
    ("""
     [facts."Vehicle.LowVoltageSystemState"]
     message = "BCMGeneralPlatformStatus"
     """, "missing key 'signal'"),
    ("""
     [facts."Vehicle.LowVoltageSystemState"]
     message = "BCMGeneralPlatformStatus"
     signal = ["SystemPowerMode", "SystemBackUpPowerMode"]
     values = { "2" = "ON" }
     """, "key '2' must be 2 raw integers joined by commas"),
    ("""
     [facts."Vehicle.LowVoltageSystemState"]
     message = "BCMGeneralPlatformStatus"
     signal = ["SystemPowerMode", "SystemBackUpPowerMode"]
     """, "needs a 'values' table keyed by their raw values"),
    ("""
     [facts."Vehicle.LowVoltageSystemState"]
     message = "BCMGeneralPlatformStatus"
     signal = "SystemPowerMode"
     values = { Run = "ON" }
     unit = "mph"
     """, "'unit' applies to Vehicle.Speed only"),
    ("""
     [facts."Vehicle.LowVoltageSystemState"]
     message = "BCMGeneralPlatformStatus"
     signal = "SystemPowerMode"
     values = { Run = "ON" }
     sources = []
     """, "belong in each"),
    ("""
     [facts."Vehicle.LowVoltageSystemState"]
     sources = []
     """, "'sources' must be a non-empty array"),
    ("""
     [facts."Vehicle.LowVoltageSystemState"]
     message = "BCMGeneralPlatformStatus"
     signal = "SystemPowerMode"
     value_table = { Run = "ON" }
     """, "unknown keys value_table"),
    ("""
     [facts."Vehicle.Speed"]
     message = "ECMVehicleSpeed"
     signal = "VehicleSpeed"
     tolerance = -1
     """, "'tolerance' must be at least 0"),
    ("""
     [messages.ECMPRDNL]
     cycle_time = 100
     [facts."Vehicle.Powertrain.Transmission.SelectedGear"]
     message = "ECMPRDNL"
     signal = "PRNDL"
     values = { P = 126 }
     """, r"\[messages.ECMPRDNL\] has unknown keys cycle_time"),
])
def test_invalid_fact_tables_rejected(tmp_path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        camaro(tmp_path, body)


def test_unknown_unit_signal_value_is_invalid() -> None:
    source = SignalSource(SPEED, "CLU1", ("CF_Clu_Vanz",), unit_signal="CF_Clu_SPEED_UNIT",
                          unit_factors={"1": 1.609344})
    assert source.required_signals == ("CF_Clu_Vanz", "CF_Clu_SPEED_UNIT")
    assert source.convert({"CF_Clu_Vanz": 10.0, "CF_Clu_SPEED_UNIT": 0}) == (
        None, "CF_Clu_SPEED_UNIT: raw value 0 is not a unit in the profile")


@pytest.mark.parametrize("keys,message", [
    ('unit_signal = "VehicleSpeedLeft"', "set both 'unit_signal'"),
    ('unit_signal = "VehicleSpeedLeft"\nunit_values = { 0 = "furlongs" }',
     "unit_values entry 0 = 'furlongs' is invalid"),
    ('unit_signal = "VehicleSpeedLeft"\nunit_values = { 0 = "mph" }\nunit = "mph"',
     "'unit_signal' applies to a Vehicle.Speed source of one signal"),
    ('unit_signal = "Absent"\nunit_values = { 0 = "mph" }',
     "signal 'Absent' is not in message 'ECMVehicleSpeed'"),
])
def test_invalid_unit_signal_rejected(tmp_path, keys: str, message: str) -> None:
    body = POWER_FACT + """
        [facts."Vehicle.Speed"]
        message = "ECMVehicleSpeed"
        signal = "VehicleSpeed"
        """ + "\n".join("        " + line for line in keys.splitlines()) + "\n"
    with pytest.raises(ConfigError, match=message):
        camaro(tmp_path, body)


def test_unknown_top_level_key_rejected(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown keys stale_after_cycle; use "):
        camaro(tmp_path, "stale_after_cycle = 5\n" + POWER_FACT)


def test_misspelled_label_is_unusable(tmp_path) -> None:
    body = """
        [facts."Vehicle.LowVoltageSystemState"]
        message = "BCMGeneralPlatformStatus"
        signal = "SystemPowerMode"
        values = { Off = "OFF", Runn = "ON" }
        """
    with pytest.raises(ConfigError, match="'Runn' is not a value label of SystemPowerMode"):
        camaro(tmp_path, body)
    profile = camaro(tmp_path, body, reject_unusable=False)
    assert profile.checks[0].usable is False
    assert "the DBC's labels are Accessory, Crank Request, Off, Run" in profile.checks[0].reason


def test_facts_in_message_covers_every_source() -> None:
    profile = load_profile(REPO / "dbc" / "chevrolet_camaro.profile.toml")
    gear = "Vehicle.Powertrain.Transmission.SelectedGear"
    assert profile.facts_in_message("ECMPRDNL") == (gear,)
    assert profile.facts_in_message("ECMPRDNL2") == (gear,)
    assert profile.facts_in_message("BCMGeneralPlatformStatus") == (POWER,)
    assert profile.facts_in_message("VIN_Part1") == ()
