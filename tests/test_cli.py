"""The vehicle-keysvc command line."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import FORD_LOG, FORD_PROFILE, REPO


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vehicle_keysvc.cli", *args],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )


def test_replay_json_timeline() -> None:
    result = run_cli("replay", "--profile", str(FORD_PROFILE), str(FORD_LOG), "--json")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    gates = [e for e in entries if e["kind"] == "gate"]
    assert [e["locked"] for e in gates] == [True, True, True, False, True]
    # First frame at 1584730160.128065, first Run frame (3B3#4040...) at
    # 1584730160.333464 in the recording.
    assert gates[2]["time"] == 0.2054
    assert "not yet confirmed by 3 consecutive valid frames" in gates[2]["reason"]
    # The third Run frame confirms it.
    assert gates[3]["reason"] == "Vehicle.LowVoltageSystemState is ON"
    assert gates[3]["time"] == 0.503


def test_replay_text_lines() -> None:
    result = run_cli("replay", "--profile", str(FORD_PROFILE), str(FORD_LOG))
    assert result.returncode == 0, result.stderr
    assert "gate   UNLOCKED  Vehicle.LowVoltageSystemState is ON" in result.stdout


def test_run_with_bad_config_exits_2(tmp_path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[dbus]\nbus = "desktop"\n')
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "bus = 'desktop' is invalid" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_missing_profile_exits_2(tmp_path) -> None:
    config = tmp_path / "keysvc.toml"
    config.write_text('[vehicle]\nprofile = "absent.toml"\n')
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "absent.toml not found" in result.stderr


def test_replay_rejects_bad_tick_and_log(tmp_path) -> None:
    for tick in ("0", "-5", "nan", "abc"):
        result = run_cli("replay", "--profile", str(FORD_PROFILE), "--tick-ms", tick,
                         str(FORD_LOG))
        assert result.returncode == 2, tick
        assert "give milliseconds from 0.1 to 1000" in result.stderr
    missing = run_cli("replay", "--profile", str(FORD_PROFILE), str(tmp_path / "x.log"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_run_with_unusable_key_dir_exits_2(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    config = tmp_path / "keysvc.toml"
    config.write_text(
        f'[storage]\nkey_dir = "{blocker}"\n'
        f'[vehicle]\nprofile = "{FORD_PROFILE}"\n'
    )
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "fix [storage] key_dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_rejects_policy_on_unmapped_fact(tmp_path) -> None:
    config = tmp_path / "keysvc.toml"
    config.write_text(
        '[tpm]\ntcti = "swtpm:host=127.0.0.1,port=1"\n'
        f'[vehicle]\nprofile = "{FORD_PROFILE}"\n'
        '[gate_policies.calm]\n"Vehicle.Body.Alarm.IsActive" = { values = [false] }\n'
    )
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "[gate_policies.calm] reads Vehicle.Body.Alarm.IsActive" in result.stderr
    assert "does not map it" in result.stderr
