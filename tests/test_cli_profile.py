"""The ``vehicle-keysvc profile check`` command."""

from __future__ import annotations

import json

from conftest import DATA, REFERENCE_PROFILE, REPO
from sim.vehicle import ReferenceVehicle
from test_cli import run_cli

DBC = REPO / "dbc"


def test_check_shipped_profiles_all_usable() -> None:
    for name in ("reference", "ford_gt350", "chevrolet_camaro", "scion",
                 "subaru_wrx", "hyundai_genesis", "vw_mqb"):
        result = run_cli("profile", "check", str(DBC / f"{name}.profile.toml"))
        assert result.returncode == 0, name + result.stdout + result.stderr
        assert "UNUSABLE" not in result.stdout, name


def test_check_text_report() -> None:
    result = run_cli("profile", "check", str(DBC / "hyundai_genesis.profile.toml"))
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Hyundai Genesis (")
    assert lines[1] == (
        "  usable    Vehicle.LowVoltageSystemState from EMS1.SWI_IGK: SWI_IGK "
        "little-endian 1-bit unsigned; 11-bit id 0x316, stale after 0.50 s "
        "(25 x 20 ms)"
    )
    assert ("CF_Clu_Vanz little-endian 9-bit unsigned, unit from CF_Clu_SPEED_UNIT "
            "(0 km/h, 1 mph) to km/h") in lines[3]
    assert "  EMS2: unpacking failed" in lines
    assert ('Vehicle.Speed: combine = "any": the first usable source wins; usable '
            "sources must agree within 10") in lines
    assert ("note: no Vehicle.Body.Alarm.IsActive: the gate follows "
            "Vehicle.LowVoltageSystemState alone") in lines
    assert result.stderr == ""


def test_check_reports_unusable_signals(tmp_path) -> None:
    profile = tmp_path / "bad.profile.toml"
    profile.write_text(f"""\
name = "bad"
dbc = "{DBC / 'hyundai_i30_2014.dbc'}"

[messages.EMS2]
cycle_time_ms = 10

[messages.CLU2]
cycle_time_ms = 800

[facts."Vehicle.LowVoltageSystemState"]
message = "CLU2"
signal = "CF_Clu_IGNSw"
values = {{ Off = "OFF", 4 = "ON" }}

[facts."Vehicle.Speed"]
message = "EMS2"
signal = "TQ_STND"
unit = "km/h"

[facts."Vehicle.Powertrain.Transmission.SelectedGear"]
message = "TCU2"
signal = "CUR_GR"
values = {{ 1 = 127 }}
""")
    result = run_cli("profile", "check", str(profile), "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    reasons = {s["fact"]: s["reason"] for s in report["signals"]}
    usable = {s["fact"]: s["usable"] for s in report["signals"]}
    assert usable == {
        "Vehicle.LowVoltageSystemState": False,
        "Vehicle.Speed": False,
        "Vehicle.Powertrain.Transmission.SelectedGear": False,
    }
    assert reasons["Vehicle.LowVoltageSystemState"] == (
        "'Off' is not a value label of CF_Clu_IGNSw; the DBC's labels are none "
        "(use raw integers)"
    )
    assert reasons["Vehicle.Speed"] == "message 'EMS2' cannot be decoded: unpacking failed"
    assert reasons["Vehicle.Powertrain.Transmission.SelectedGear"] == (
        "message 'TCU2' has no cycle time in the DBC; set [messages.TCU2] "
        "cycle_time_ms to its period in milliseconds"
    )
    assert report["undecodable_messages"] == {"EMS2": "unpacking failed"}
    assert report["combine"] == {}
    assert (f"{report['notes'][0]}" ==
            "Vehicle.LowVoltageSystemState is not usable: the gate keeps every key locked")

    text = run_cli("profile", "check", str(profile))
    assert text.returncode == 1
    assert "3 of 3 mapped signals are unusable" in text.stdout
    run = run_cli("replay", "--profile", str(profile), str(DATA / "mphloggenesis.log"))
    assert run.returncode == 2
    assert "3 mapped signals cannot be used" in run.stderr
    assert "profile check" in run.stderr


def test_check_missing_profile_exits_2(tmp_path) -> None:
    result = run_cli("profile", "check", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert "absent.toml not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_service_rejects_unusable_profile_at_start(tmp_path) -> None:
    profile = tmp_path / "ems2.profile.toml"
    profile.write_text(f"""\
name = "ems2"
dbc = "{DBC / 'hyundai_i30_2014.dbc'}"

[messages.EMS2]
cycle_time_ms = 10

[facts."Vehicle.LowVoltageSystemState"]
message = "EMS2"
signal = "CAN_VERS"
values = {{ 0 = "OFF", 1 = "ON" }}
""")
    config = tmp_path / "keysvc.toml"
    config.write_text(f'[vehicle]\nprofile = "{profile}"\n')
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "1 mapped signals cannot be used" in result.stderr
    assert "message 'EMS2' cannot be decoded: unpacking failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_unparsable_dbc_exits_2(tmp_path) -> None:
    # A message name that starts with a digit is a syntax error for cantools
    # (opendbc's mazda_2017.dbc has one).
    dbc = tmp_path / "digit.dbc"
    dbc.write_text('VERSION ""\n\nBU_: XXX\n\nBO_ 1275 2017_5: 8 XXX\n'
                   ' SG_ Speed : 0|16@1+ (0.01,0) [0|655] "km/h" XXX\n')
    profile = tmp_path / "digit.profile.toml"
    profile.write_text(f'name = "d"\ndbc = "{dbc}"\n[facts."Vehicle.Speed"]\n'
                       'message = "2017_5"\nsignal = "Speed"\n')
    result = run_cli("profile", "check", str(profile))
    assert result.returncode == 2
    assert f"DBC file {dbc} cannot be parsed" in result.stderr
    assert "Invalid syntax" in result.stderr
    assert "Traceback" not in result.stderr


def test_replay_json_names_signal_and_e2e(tmp_path) -> None:
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    lines = []
    for step in range(100):
        now = 1000.0 + step * 0.01
        for frame in vehicle.due_frames(now):
            lines.append(f"({now:.6f}) can0 {frame.arbitration_id:03X}#{frame.data.hex()}\n")
    log = tmp_path / "reference.log"
    log.write_text("".join(lines))
    result = run_cli("replay", "--profile", str(REFERENCE_PROFILE), str(log), "--json")
    assert result.returncode == 0, result.stderr
    power = [e for e in json.loads(result.stdout)
             if e["fact"] == "Vehicle.LowVoltageSystemState"]
    assert {e["signal"] for e in power} == {"VCU_PowerMode.PowerMode"}
    assert power[-1]["value"] == "ON"
    assert power[-1]["e2e"] == "OK"
    assert power[0]["value"] is None
    assert power[0]["e2e"] is not None

    ford = run_cli("replay", "--profile", str(DBC / "ford_gt350.profile.toml"),
                   str(DATA / "lockunlockcycle.log"), "--json")
    locks = [e for e in json.loads(ford.stdout)
             if e["fact"] == "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked"]
    assert locks[0]["signal"] == "Locking_Systems_2_FD1.Veh_Lock_Status"
    assert locks[0]["e2e"] is None
