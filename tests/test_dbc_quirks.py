"""Quirks of real DBC files and buses, on frames encoded with cantools.

Short frames, raw values outside the value table, signals that disagree,
DBC files that cantools refuses in strict mode, non-UTF-8 DBC text, CAN FD
flags, signed, big-endian and float signals, 29-bit ids and multiplexed
messages.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import can
import pytest

from conftest import DATA, REPO
from vehicle_keysvc.errors import ConfigError
from vehicle_keysvc.monitor import VehicleMonitor
from vehicle_keysvc.profile import load_profile
from vehicle_keysvc.vehicle_state import VehicleState

DBC = REPO / "dbc"
POWER = "Vehicle.LowVoltageSystemState"
SPEED = "Vehicle.Speed"
GEAR = "Vehicle.Powertrain.Transmission.SelectedGear"


def frame(database, name: str, signals: dict, **kwargs) -> can.Message:
    """Encode a frame; the signals not given are 0 (multiplexed ones are left out)."""
    message = database.get_message_by_name(name)
    if not message.is_multiplexed():
        signals = {s.name: 0 for s in message.signals} | signals
    return can.Message(
        arbitration_id=message.frame_id,
        is_extended_id=message.is_extended_frame,
        data=message.encode(signals, strict=False),
        **kwargs,
    )


def speed_state(path: Path) -> VehicleState:
    """Vehicle state of a profile that maps only the speed (no gate needed)."""
    return VehicleState(load_profile(path))


def speed_after(state: VehicleState, frames: list[can.Message], now: float):
    for index, message in enumerate(frames):
        state.process_frame(message, now + index * 0.01)
    return state.view(now + len(frames) * 0.01)[SPEED]


def write_profile(directory: Path, dbc: Path, body: str) -> Path:
    path = directory / "test.profile.toml"
    path.write_text(f'name = "test"\ndbc = "{dbc}"\n' + textwrap.dedent(body))
    return path


def test_subaru_four_byte_speed_frame_decodes() -> None:
    monitor = VehicleMonitor(load_profile(DBC / "subaru_wrx.profile.toml"))
    # A real frame from allgears.log: 4 bytes where the DBC declares 8.
    monitor.on_frame(can.Message(arbitration_id=0xD1, data=bytes.fromhex("D4000000"),
                                 is_extended_id=False), 1.0)
    view = monitor.view(1.0)[SPEED]
    assert view.value == pytest.approx(11.925)
    assert view.problem is None


def test_signal_cut_off_by_short_frame_is_missing() -> None:
    monitor = VehicleMonitor(load_profile(DBC / "subaru_wrx.profile.toml"))
    monitor.on_frame(can.Message(arbitration_id=0xD1, data=b"\xd4",
                                 is_extended_id=False), 1.0)
    view = monitor.view(1.0)[SPEED]
    assert view.value is None
    assert view.problem == "Speed is missing from a 1-byte frame of Brake_Pedal"


def test_camaro_gear_outside_value_table_is_invalid() -> None:
    profile = load_profile(DBC / "chevrolet_camaro.profile.toml")
    monitor = VehicleMonitor(profile)
    # Real frames from reverse.log: PRNDL2 raw 15, then PRNDL = P.
    monitor.on_frame(can.Message(arbitration_id=0x1F5,
                                 data=bytes.fromhex("ED00000F18008300"),
                                 is_extended_id=False), 1.0)
    monitor.on_frame(can.Message(arbitration_id=0x135,
                                 data=bytes.fromhex("00100F3E6618181B"),
                                 is_extended_id=False), 1.01)
    view = monitor.view(1.02)[GEAR]
    assert view.value is None
    assert view.problem == "PRNDL2: raw value 15 is not mapped by the profile"
    assert view.fresh is True


def test_contradicting_power_signals_lock_naming_both() -> None:
    profile = load_profile(DBC / "chevrolet_camaro.profile.toml")
    database = profile.database
    monitor = VehicleMonitor(profile)
    run = frame(database, "BCMGeneralPlatformStatus",
                {"SystemPowerMode": "Run", "SystemBackUpPowerMode": "Run"})
    # Several agreeing frames, so that a gate that debounces unlocks too.
    for step in range(5):
        monitor.on_frame(run, 1.0 + step * 0.02)
    assert monitor.locked is False
    monitor.on_frame(frame(database, "BCMGeneralPlatformStatus",
                           {"SystemPowerMode": "Run", "SystemBackUpPowerMode": "Off"}), 1.1)
    assert monitor.locked is True
    assert monitor.decision.reason == (
        f"{POWER} is invalid: contradiction: BCMGeneralPlatformStatus.SystemPowerMode "
        "is ON but BCMGeneralPlatformStatus.SystemBackUpPowerMode is OFF"
    )


def test_speeds_beyond_tolerance_contradict() -> None:
    profile = load_profile(DBC / "hyundai_genesis.profile.toml")
    database = profile.database
    monitor = VehicleMonitor(profile)
    monitor.on_frame(frame(database, "EMS1", {"SWI_IGK": 1, "VS": 100}), 1.0)
    # 100 mph is 160.9 km/h: more than 10 km/h from the engine's speed.
    monitor.on_frame(frame(database, "CLU1", {"CF_Clu_Vanz": 100,
                                              "CF_Clu_SPEED_UNIT": 1}), 1.01)
    view = monitor.view(1.02)[SPEED]
    assert view.value is None
    assert "EMS1.VS is 100.0 but CLU1.CF_Clu_Vanz is 160.9" in view.problem
    monitor.on_frame(frame(database, "CLU1", {"CF_Clu_Vanz": 62,
                                              "CF_Clu_SPEED_UNIT": 1}), 1.03)
    view = monitor.view(1.04)[SPEED]
    assert view.value == 100.0
    assert view.problem is None


def test_unit_read_from_unit_signal(tmp_path) -> None:
    path = write_profile(tmp_path, DBC / "hyundai_i30_2014.dbc", """
        [messages.CLU1]
        cycle_time_ms = 20

        [facts."Vehicle.Speed"]
        message = "CLU1"
        signal = "CF_Clu_Vanz"
        unit_signal = "CF_Clu_SPEED_UNIT"
        unit_values = { 0 = "km/h", 1 = "mph" }
        """)
    state = speed_state(path)
    database = state.profile.database
    kmh = frame(database, "CLU1", {"CF_Clu_Vanz": 50, "CF_Clu_SPEED_UNIT": 0})
    assert speed_after(state, [kmh], 1.0).value == 50.0
    mph = frame(database, "CLU1", {"CF_Clu_Vanz": 50, "CF_Clu_SPEED_UNIT": 1})
    assert speed_after(state, [mph], 1.1).value == pytest.approx(80.4672)
    # A 1-byte frame carries the unit flag (bit 6) but not the speed.
    short = can.Message(arbitration_id=0x4F0, data=b"\x40", is_extended_id=False)
    view = speed_after(state, [short], 1.2)
    assert view.value is None
    assert view.problem == "CF_Clu_Vanz is missing from a 1-byte frame of CLU1"


def test_any_falls_back_to_next_source() -> None:
    profile = load_profile(DBC / "hyundai_genesis.profile.toml")
    database = profile.database
    monitor = VehicleMonitor(profile)
    monitor.on_frame(frame(database, "EMS1", {"SWI_IGK": 1, "VS": 40}), 1.0)
    monitor.on_frame(frame(database, "CLU1", {"CF_Clu_Vanz": 25,
                                              "CF_Clu_SPEED_UNIT": 1}), 1.0)
    # EMS1 is stale after 0.5 s, CLU1 after 1 s: the cluster's speed is used.
    view = monitor.view(1.7)[SPEED]
    assert view.value == pytest.approx(25 * 1.609344)
    assert view.message == "CLU1"
    assert monitor.view(2.1)[SPEED].fresh is False


def test_non_strict_dbc_reports_undecodable_messages(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        profile = load_profile(DBC / "hyundai_genesis.profile.toml")
    assert profile.undecodable == {"EMS2": "unpacking failed"}
    assert "1 messages cannot be decoded: EMS2 (unpacking failed)" in caplog.text
    vw = load_profile(DBC / "vw_mqb.profile.toml")
    assert list(vw.undecodable) == ["PLA_01"]


@pytest.mark.parametrize("dbc,message,signal", [
    ("hyundai_i30_2014.dbc", "EMS2", "TQ_STND"),
    ("vw_mqb.dbc", "PLA_01", "PLA_Bremsmoment"),
])
def test_mapping_undecodable_message_rejected(tmp_path, dbc, message, signal) -> None:
    path = write_profile(tmp_path, DBC / dbc, f"""
        [messages.{message}]
        cycle_time_ms = 10

        [facts."Vehicle.Speed"]
        message = "{message}"
        signal = "{signal}"
        unit = "km/h"
        """)
    with pytest.raises(ConfigError, match=f"message '{message}' cannot be decoded"):
        load_profile(path)
    profile = load_profile(path, reject_unusable=False)
    assert profile.facts == {}
    assert profile.checks[0].usable is False


def test_latin1_value_labels_load(tmp_path) -> None:
    # choices.dbc is ISO-8859-1 text with a label containing 'ä'.
    path = write_profile(tmp_path, DATA / "choices.dbc", """
        [messages.Foo]
        cycle_time_ms = 100

        [facts."Vehicle.LowVoltageSystemState"]
        message = "Foo"
        signal = "Foo"
        values = { "With space" = "OFF", "#%=*ä'" = "ON", "A negative value" = "ACC" }
        """)
    profile = load_profile(path)
    monitor = VehicleMonitor(profile)
    monitor.on_frame(frame(profile.database, "Foo", {"Foo": 1}), 1.0)
    assert monitor.view(1.0)[POWER].value == "ON"
    monitor.on_frame(frame(profile.database, "Foo", {"Foo": -5}), 1.1)
    assert monitor.view(1.1)[POWER].value == "ACC"


def test_dbc_outside_windows_1252_loads(tmp_path) -> None:
    # Byte 0x81 is undefined in Windows-1252 and 0xFC is Latin-1 'ü'.
    dbc = tmp_path / "odd.dbc"
    dbc.write_bytes((DATA / "choices.dbc").read_bytes()
                    + b'CM_ BO_ 0 "T\xfcr \x81";\r\n')
    with pytest.raises(UnicodeDecodeError):
        dbc.read_text(encoding="utf-8")
    path = write_profile(tmp_path, dbc, """
        [messages.Foo]
        cycle_time_ms = 100

        [facts."Vehicle.LowVoltageSystemState"]
        message = "Foo"
        signal = "Foo"
        values = { 0 = "OFF", 1 = "ON" }
        """)
    assert load_profile(path).facts[POWER].message == "Foo"


def test_fd_flagged_messages_decode_classic_frames(tmp_path) -> None:
    path = write_profile(tmp_path, DATA / "fd_test.dbc", """
        [messages.TestMsg_FDStd]
        cycle_time_ms = 100

        [messages.TestMsg_FDEx]
        cycle_time_ms = 100

        [facts."Vehicle.LowVoltageSystemState"]
        message = "TestMsg_FDEx"
        signal = "TestSig"
        values = { 0 = "OFF", 1 = "ON" }

        [facts."Vehicle.Speed"]
        message = "TestMsg_FDStd"
        signal = "TestSig_Copy_2"
        unit = "km/h"
        """)
    profile = load_profile(path)
    database = profile.database
    assert database.get_message_by_name("TestMsg_FDEx").is_fd is True
    monitor = VehicleMonitor(profile)
    for step in range(5):
        now = 1.0 + step * 0.02
        monitor.on_frame(frame(database, "TestMsg_FDEx", {"TestSig": 1}, is_fd=False), now)
        monitor.on_frame(frame(database, "TestMsg_FDStd", {"TestSig_Copy_2": 42},
                               is_fd=True, bitrate_switch=True), now)
    views = monitor.view(1.08)
    assert views[POWER].value == "ON"
    assert views[SPEED].value == 42.0
    assert monitor.locked is False
    filters = {f["can_id"]: f["extended"] for f in profile.can_filters()}
    assert filters == {0x80000000 & 0x1FFFFFFF: True, 0x1: False}


@pytest.mark.parametrize("signal,raw", [
    ("s10big", -300), ("s10big", 511), ("s3big", -4), ("s9", -256), ("s7", -1),
])
def test_signed_signals_keep_their_sign(tmp_path, signal: str, raw: int) -> None:
    path = write_profile(tmp_path, DATA / "signed.dbc", f"""
        [messages.Message378910]
        cycle_time_ms = 100

        [facts."Vehicle.Speed"]
        message = "Message378910"
        signal = "{signal}"
        unit = "km/h"
        """)
    state = speed_state(path)
    message = frame(state.profile.database, "Message378910", {signal: raw})
    assert speed_after(state, [message], 1.0).value == float(raw)


@pytest.mark.parametrize("message,signal", [("Message1", "Signal1"), ("Message2", "Signal2")])
def test_float_signals_decode(tmp_path, message: str, signal: str) -> None:
    # Message1.Signal1 is an IEEE float64, Message2.Signal2 a float32.
    path = write_profile(tmp_path, DATA / "floating_point.dbc", f"""
        [messages.{message}]
        cycle_time_ms = 100

        [facts."Vehicle.Speed"]
        message = "{message}"
        signal = "{signal}"
        unit = "km/h"
        """)
    state = speed_state(path)
    encoded = frame(state.profile.database, message, {signal: 87.25})
    assert speed_after(state, [encoded], 1.0).value == 87.25


def test_speed_without_known_unit_is_unusable(tmp_path) -> None:
    path = write_profile(tmp_path, DATA / "signed.dbc", """
        [messages.Message378910]
        cycle_time_ms = 100

        [facts."Vehicle.Speed"]
        message = "Message378910"
        signal = "s10big"
        """)
    with pytest.raises(ConfigError, match="set unit = \"km/h\" or \"mph\""):
        load_profile(path)


def cascaded_profile(tmp_path: Path) -> Path:
    return write_profile(tmp_path, DATA / "extended_mux_cascaded.dbc", """
        [messages.ext_MUX_cascaded]
        cycle_time_ms = 100

        [facts."Vehicle.Speed"]
        message = "ext_MUX_cascaded"
        signal = "muxed_B_1"
        unit = "km/h"
        """)


def test_cascaded_multiplexed_29_bit_signal(tmp_path) -> None:
    state = speed_state(cascaded_profile(tmp_path))
    database = state.profile.database
    name = "ext_MUX_cascaded"
    assert state.profile.messages[name].is_extended_id is True
    selected = frame(database, name, {"MUX_A": 2, "muxed_A_2_MUX_B": 1, "muxed_B_1": -10})
    assert speed_after(state, [selected], 1.0).value == -10.0
    assert state.last_frame_facts == (SPEED,)
    # Frames that select other signals, or a selector value the DBC does
    # not define, leave the reading alone.
    others = [
        frame(database, name, {"MUX_A": 2, "muxed_A_2_MUX_B": 0, "muxed_B_0": 99}),
        frame(database, name, {"MUX_A": 1, "muxed_A_1": 7}),
        can.Message(arbitration_id=0x1, is_extended_id=True,
                    data=bytes([9, 0, 0, 0, 0, 0, 0, 0])),
    ]
    view = speed_after(state, others, 1.1)
    assert state.last_frame_facts == ()
    assert view.value == -10.0
    assert view.problem is None
    assert view.age == pytest.approx(0.13)


def test_multiplexed_signal_ages_by_its_own_frames(tmp_path) -> None:
    state = speed_state(cascaded_profile(tmp_path))
    database = state.profile.database
    name = "ext_MUX_cascaded"
    selected = frame(database, name, {"MUX_A": 2, "muxed_A_2_MUX_B": 1, "muxed_B_1": 30})
    state.process_frame(selected, 1.0)
    other = frame(database, name, {"MUX_A": 1, "muxed_A_1": 7})
    for step in range(1, 6):
        state.process_frame(other, 1.0 + step * 0.1)
    view = state.view(1.5)[SPEED]
    assert view.max_age == pytest.approx(0.3)
    assert view.age == pytest.approx(0.5)
    assert view.fresh is False


def test_multiplex_2_extended_ids(tmp_path) -> None:
    path = write_profile(tmp_path, DATA / "multiplex_2.dbc", """
        [messages.Normal]
        cycle_time_ms = 50

        [facts."Vehicle.LowVoltageSystemState"]
        message = "Normal"
        signal = "S2"
        values = { 0 = "OFF", 3 = "ON" }
        """)
    profile = load_profile(path)
    database = profile.database
    monitor = VehicleMonitor(profile)
    for step in range(5):
        monitor.on_frame(frame(database, "Normal", {"S0": 1, "S2": 3}), 1.0 + step * 0.01)
    assert monitor.locked is False
    monitor.on_frame(frame(database, "Normal", {"S0": 0, "S1": 3}), 1.05)
    assert monitor.locked is False
    # The same id as an 11-bit frame is another message.
    monitor.on_frame(can.Message(arbitration_id=0x7FE, is_extended_id=False,
                                 data=bytes([1, 0, 0, 0, 0, 0, 0, 0])), 1.06)
    assert monitor.view(1.06)[POWER].value == "ON"
