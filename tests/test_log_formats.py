"""Reading recordings in every supported format, damaged ones included."""

from __future__ import annotations

import logging
from pathlib import Path

from conftest import DATA, FORD_PROFILE, REPO
from test_cli import run_cli
from vehicle_keysvc.logfiles import LogStats, read_log
from vehicle_keysvc.profile import load_profile
from vehicle_keysvc.replay import read_frames, replay

LOCKED = "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked"
GEAR = "Vehicle.Powertrain.Transmission.SelectedGear"


def damage(source: Path, target: Path, replacements: list[tuple[str, str]]) -> Path:
    text = source.read_text()
    for old, new in replacements:
        assert old in text
        text = text.replace(old, new, 1)
    target.write_text(text)
    return target


def lock_values(path: Path) -> list[object]:
    timeline = replay(load_profile(FORD_PROFILE), read_frames(path))
    return [e.value for e in timeline if e.fact == LOCKED]


def test_asc_with_error_and_remote_frames() -> None:
    stats = LogStats("asc")
    frames = list(read_log(DATA / "logfile_errorframes.asc", stats))
    assert len(frames) == 12
    assert stats.error_frames == 3
    assert stats.remote_frames == 2
    assert stats.frames == 7
    assert stats.malformed == []
    data = list(read_frames(DATA / "logfile_errorframes.asc"))
    assert [f.arbitration_id for f in data].count(0x18EBFF00) == 6
    assert all(f.is_extended_id for f in data if f.arbitration_id == 0x18EBFF00)
    assert [f.arbitration_id for f in data if not f.is_extended_id] == [0x6F8]


def test_asc_can_fd_flags() -> None:
    frames = list(read_log(DATA / "test_CanFdMessage.asc"))
    assert len(frames) == 3
    assert all(f.is_fd for f in frames)
    assert [f.bitrate_switch for f in frames] == [True, False, True]
    assert [f.error_state_indicator for f in frames] == [False, True, True]


def test_trc_version_2_1() -> None:
    stats = LogStats("trc")
    frames = list(read_log(DATA / "test_CanMessage_V2_1.trc", stats))
    assert stats.frames == 10
    assert stats.remote_frames == 1
    assert frames[0].arbitration_id == 0x100
    assert frames[0].is_extended_id is True


def test_blf_can_fd_64_byte_frames() -> None:
    frames = list(read_log(DATA / "canfd_64_byte_frames.blf"))
    assert len(frames) == 22
    assert all(f.is_fd for f in frames)
    assert {len(f.data) for f in frames} == {64}


def test_truncated_blf_stops_with_warning(tmp_path, caplog) -> None:
    damaged = tmp_path / "cut.blf"
    # Cut inside the object that follows the 22 frames.
    damaged.write_bytes((DATA / "canfd_64_byte_frames.blf").read_bytes()[:400])
    with caplog.at_level(logging.WARNING):
        frames = list(read_log(damaged))
    assert len(frames) == 22
    assert "damaged BLF data" in caplog.text


def test_candump_malformed_lines_skipped(tmp_path, caplog) -> None:
    source = DATA / "lockunlockcycle.log"
    damaged = damage(source, tmp_path / "damaged.log", [
        ("\n", "\nnot a frame at all\n"),
        # A LOCK_ALL frame of Locking_Systems_2_FD1 with a bad hex digit.
        ("331#C0006292029F1804", "331#C0006292029F18X4"),
        ("(", "((", ),
    ])
    stats = LogStats(str(damaged))
    with caplog.at_level(logging.WARNING):
        frames = list(read_log(damaged, stats))
    assert stats.malformed == [1, 2, 3038]
    assert len(frames) == 9383 - 2
    assert "damaged.log line 2 is malformed" in caplog.text
    assert "18X4" in caplog.text
    assert lock_values(damaged) == lock_values(source)


def test_many_malformed_lines_counted_once(tmp_path, caplog) -> None:
    lines = (DATA / "lockunlockcycle.log").read_text().splitlines()[:100]
    damaged = tmp_path / "noisy.log"
    damaged.write_text("\n".join(line if i % 4 else "garbage" for i, line in enumerate(lines)))
    with caplog.at_level(logging.WARNING):
        frames = list(read_log(damaged))
    assert len(frames) == 75
    assert caplog.text.count("is malformed") == 10
    assert "25 malformed lines skipped in all" in caplog.text


def test_trc_v1_1_malformed_lines_skipped(tmp_path, caplog) -> None:
    source = DATA / "2reverselog.trc"
    damaged = damage(source, tmp_path / "damaged.trc", [
        # A data byte that is not hex, and a line cut after its length.
        ("     6)         5.7  Rx         0242  8  11 32 1E D6 C0 00 00 01",
         "     6)         5.7  Rx         0242  8  11 32 1E ZZ C0 00 00 01"),
        ("     5)         5.4  Rx         0042  8  00 00 00 00 00 00 00 00",
         "     5)         5.4  Rx         0042  8"),
    ])
    stats = LogStats(str(damaged))
    with caplog.at_level(logging.WARNING):
        frames = list(read_log(damaged, stats))
    assert len(frames) == 3740 - 2
    assert len(stats.malformed) == 2
    assert "damaged.trc line 20 is malformed" in caplog.text
    profile = load_profile(FORD_PROFILE)
    gears = [e.value for e in replay(profile, read_frames(damaged)) if e.fact == GEAR]
    assert gears == [None, -1, None]


def test_asc_malformed_line_skipped(tmp_path, caplog) -> None:
    damaged = damage(DATA / "logfile_errorframes.asc", tmp_path / "damaged.asc", [
        ("6F8             Rx   d 8 FF 00", "6F8             Rx   d 8 FG 00"),
    ])
    stats = LogStats(str(damaged))
    with caplog.at_level(logging.WARNING):
        frames = list(read_log(damaged, stats))
    assert len(frames) == 11
    assert stats.malformed == [16]
    assert "damaged.asc line 16 is malformed" in caplog.text


def test_replay_cli_reports_skipped_lines(tmp_path) -> None:
    damaged = damage(DATA / "lockunlockcycle.log", tmp_path / "damaged.log", [
        ("\n", "\nnot a frame\n"),
    ])
    result = run_cli("replay", "--profile", str(REPO / "dbc" / "ford_gt350.profile.toml"),
                     str(damaged))
    assert result.returncode == 0, result.stderr
    assert "9383 data frames, 0 error frames, 0 remote frames, 1 malformed" in result.stderr
    assert "line 2 is malformed" in result.stderr
    assert "gate   UNLOCKED  Vehicle.LowVoltageSystemState is ON" in result.stdout


def test_binary_garbage_line_skipped(tmp_path, caplog) -> None:
    for name in ("2reverselog.trc", "logfile_errorframes.asc", "lockunlockcycle.log"):
        source = DATA / name
        lines = source.read_bytes().splitlines(keepends=True)
        damaged = tmp_path / name
        damaged.write_bytes(b"".join(lines[:20]) + b"\xff\xfe\x00 garbage\n"
                            + b"".join(lines[20:]))
        clean_count = len(list(read_log(source)))
        stats = LogStats(str(damaged))
        with caplog.at_level(logging.WARNING):
            frames = list(read_log(damaged, stats))
        assert len(frames) == clean_count, name
        # The .asc reader ignores lines that do not look like a frame.
        expected = [] if name.endswith(".asc") else [21]
        assert stats.malformed == expected, name
