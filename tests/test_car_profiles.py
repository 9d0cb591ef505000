"""The shipped car profiles replayed against real recordings of those cars.

Times are seconds after the first frame of each recording, rounded to 10 ms.
The expected values were read from the recordings with cantools.
"""

from __future__ import annotations

import can
import pytest

from conftest import DATA, REPO
from vehicle_keysvc.gate_policy import parse_policies
from vehicle_keysvc.monitor import VehicleMonitor
from vehicle_keysvc.profile import load_profile
from vehicle_keysvc.replay import TimelineEntry, read_frames, replay

POWER = "Vehicle.LowVoltageSystemState"
SPEED = "Vehicle.Speed"
GEAR = "Vehicle.Powertrain.Transmission.SelectedGear"
LOCKED = "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked"


def run(profile: str, log: str) -> list[TimelineEntry]:
    return replay(load_profile(REPO / "dbc" / f"{profile}.profile.toml"),
                  read_frames(DATA / log))


def states(timeline: list[TimelineEntry], fact: str) -> list[tuple[float, object]]:
    return [(round(e.time, 2), e.value) for e in timeline
            if e.kind == "state" and e.fact == fact]


def problems(timeline: list[TimelineEntry], fact: str) -> list[tuple[float, str]]:
    return [(round(e.time, 2), e.reason) for e in timeline
            if e.kind == "state" and e.fact == fact and e.value is None]


def gates(timeline: list[TimelineEntry]) -> list[tuple[float, bool]]:
    return [(round(e.time, 2), e.locked) for e in timeline if e.kind == "gate"]


def speeds(timeline: list[TimelineEntry]) -> list[float]:
    return [e.value for e in timeline if e.fact == SPEED and e.value is not None]


def test_ford_lock_unlock_cycle() -> None:
    timeline = run("ford_gt350", "lockunlockcycle.log")
    assert states(timeline, POWER) == [(0.47, "ON")]
    assert states(timeline, LOCKED) == [
        (0.07, False), (1.99, True), (2.6, False), (3.55, True), (4.19, False),
        (4.97, True),
    ]
    # Unlocking waits for three consecutive ON frames (cycle 0.5 s).
    assert gates(timeline)[1:] == [(0.47, True), (1.46, False), (7.48, True)]
    assert set(speeds(timeline)) == {0.0}


def test_ford_reverse_trc() -> None:
    timeline = run("ford_gt350", "2reverselog.trc")
    assert states(timeline, GEAR) == [(0.01, None), (0.43, -1), (1.35, None)]
    assert "Unknown_Position (14) is not mapped" in problems(timeline, GEAR)[0][1]
    assert states(timeline, LOCKED) == [(0.8, True)]
    assert states(timeline, POWER) == [(0.21, "ON")]
    assert gates(timeline)[1:] == [(0.21, True), (1.2, False), (3.72, True)]
    # Veh_V_ActlEng reads 0 throughout the recording.
    assert set(speeds(timeline)) == {0.0}


def test_camaro_engine_start() -> None:
    timeline = run("chevrolet_camaro", "engineon.log")
    assert states(timeline, POWER) == [
        (0.07, "OFF"), (1.51, None), (1.82, "ON"), (4.13, None), (5.41, "ON"),
    ]
    assert gates(timeline)[1:] == [
        (0.07, True), (1.51, True), (1.82, True), (1.97, False), (4.13, True),
        (5.41, True), (5.52, False), (13.38, True),
    ]
    reasons = [e.reason for e in timeline if e.kind == "gate"]
    assert reasons[2] == (
        f"{POWER} is invalid: contradiction: BCMGeneralPlatformStatus."
        "SystemPowerMode is ON but BCMGeneralPlatformStatus.SystemBackUpPowerMode "
        "is OFF"
    )
    assert reasons[3] == f"{POWER} is not yet confirmed by 3 consecutive valid frames"
    assert "SystemPowerMode is START" in reasons[5]
    assert "SystemBackUpPowerMode is ON" in reasons[5]
    assert set(speeds(timeline)) == {0.0}


def test_camaro_reverse_gear_signals_disagree() -> None:
    timeline = run("chevrolet_camaro", "reverse.log")
    gear = problems(timeline, GEAR)
    assert [time for time, _ in gear] == [0.01, 1.46, 5.36, 7.06, 9.21]
    assert gear[0][1] == "PRNDL2: raw value 15 is not mapped by the profile"
    assert gear[1][1] == (
        "contradiction: ECMPRDNL2.PRNDL2 is -1 but ECMPRDNL.PRNDL is 126"
    )
    assert gear[2][1] == gear[0][1]
    assert gear[3][1] == gear[1][1]
    assert states(timeline, GEAR) == [(t, None) for t, _ in gear]
    # The gate reads the power mode only: the gear does not lock the keys.
    assert gates(timeline)[1:] == [(0.07, True), (0.27, False), (11.2, True)]


def test_scion_cold_start_key_cycle() -> None:
    timeline = run("scion", "startupcold.log")
    assert states(timeline, POWER) == [
        (0.41, "ACC"), (0.61, "ON"), (3.68, "START"), (4.46, "ON"), (20.14, "ACC"),
        (20.25, "OFF"),
    ]
    assert [(t, locked) for t, locked in gates(timeline)
            if t > 0] == [
        (0.41, True), (0.72, False), (3.68, True), (4.46, True), (5.06, False),
        (20.14, False), (20.25, True), (22.06, True),
    ]
    assert set(speeds(timeline)) == {0.0}


def test_scion_short_drive_speed() -> None:
    timeline = run("scion", "mphlog.log")
    assert states(timeline, POWER) == [(0.06, "ON")]
    assert max(speeds(timeline)) == pytest.approx(18.49)
    assert speeds(timeline)[0] == 0.0
    assert problems(timeline, SPEED) == []


def test_subaru_drive_from_four_byte_frames() -> None:
    timeline = run("subaru_wrx", "allgears.log")
    assert states(timeline, POWER) == [(0.0, "ON")]
    assert gates(timeline)[1:] == [(0.0, True), (0.02, False), (21.04, True)]
    assert speeds(timeline)[0] == pytest.approx(19.85625)
    assert max(speeds(timeline)) == pytest.approx(89.15625)
    assert problems(timeline, SPEED) == []


def test_genesis_drive_in_mph_and_kmh() -> None:
    timeline = run("hyundai_genesis", "mphloggenesis.log")
    assert states(timeline, POWER) == [(0.0, "ON")]
    assert gates(timeline) == [(0.0, True), (0.04, False), (51.86, True)]
    speed = [(round(e.time, 1), e.value) for e in timeline
             if e.fact == SPEED and e.value is not None]
    assert speed[0] == (0.0, 0.0)
    assert [t for t, v in speed if v > 0][0] == 19.1
    assert max(v for _, v in speed) == 64.0
    assert [t for t, v in speed if v == 64.0][0] == 34.7
    assert speed[-1][1] == 6.0
    # The cluster's mph agree with the engine's km/h within the tolerance.
    assert problems(timeline, SPEED) == []


def vw_frame(database, name: str, signals: dict) -> can.Message:
    message = database.get_message_by_name(name)
    values = {s.name: 0 for s in message.signals} | signals
    return can.Message(arbitration_id=message.frame_id, is_extended_id=False,
                       data=message.encode(values, strict=False))


def test_vw_mqb_drive_from_encoded_frames() -> None:
    profile = load_profile(REPO / "dbc" / "vw_mqb.profile.toml")
    database = profile.database
    # Terminal states (15, 50) every 100 ms; speed and gear every 20 ms.
    script = [
        (0.0, {"ZAS_Kl_15": 0, "ZAS_Kl_50": 0}, 0.0, "P"),
        (1.0, {"ZAS_Kl_15": 1, "ZAS_Kl_50": 0}, 0.0, "P"),
        (2.0, {"ZAS_Kl_15": 1, "ZAS_Kl_50": 1}, 0.0, "P"),
        (3.0, {"ZAS_Kl_15": 1, "ZAS_Kl_50": 0}, 0.0, "R"),
        (4.0, {"ZAS_Kl_15": 1, "ZAS_Kl_50": 0}, 12.5, "D"),
        (5.0, {"ZAS_Kl_15": 1, "ZAS_Kl_50": 0}, 48.25, "T"),
        (6.0, {"ZAS_Kl_15": 0, "ZAS_Kl_50": 0}, 0.0, "P"),
    ]
    frames = []
    for start, terminals, speed, gear in script:
        for step in range(50):
            now = start + step * 0.02
            if step % 5 == 0:
                frames.append((now, vw_frame(database, "Klemmen_Status_01", terminals)))
            frames.append((now, vw_frame(database, "ESP_21", {"ESP_v_Signal": speed})))
            frames.append((now, vw_frame(database, "Getriebe_11", {"GE_Fahrstufe": gear})))
    for now, message in frames:
        message.timestamp = 1000.0 + now
    timeline = replay(profile, [message for _, message in frames])

    assert states(timeline, POWER) == [
        (0.0, "OFF"), (1.0, "ON"), (2.0, "START"), (3.0, "ON"), (6.0, "OFF"),
    ]
    # The last terminal frame is at 6.90 s; it is stale 0.30 s later.
    # Unlocking waits for three consecutive ON frames, 0.2 s at 100 ms.
    assert gates(timeline) == [
        (0.0, True), (1.0, True), (1.2, False), (2.0, True), (3.0, True),
        (3.2, False), (6.0, True), (7.22, True),
    ]
    assert states(timeline, GEAR) == [
        (0.0, 126), (3.0, -1), (4.0, 127), (5.0, None), (6.0, 126),
    ]
    # The DBC labels both 13 and 14 "T"; cantools encodes "T" as 14.
    assert problems(timeline, GEAR)[0][1] == (
        "GE_Fahrstufe: raw value T (14) is not mapped by the profile"
    )
    assert states(timeline, SPEED) == [(0.0, 0.0), (4.0, 12.5), (5.0, 48.25), (6.0, 0.0)]


def test_camaro_gear_policy_names_both_signals() -> None:
    profile = load_profile(REPO / "dbc" / "chevrolet_camaro.profile.toml")
    policies = parse_policies({"park": {GEAR: {"values": ["P"]}}})
    monitor = VehicleMonitor(profile, policies=policies)
    frames = list(read_frames(DATA / "reverse.log"))
    start = frames[0].timestamp
    decisions: dict[float, tuple[bool, bool, str]] = {}
    for frame in frames:
        monitor.on_frame(frame, frame.timestamp)
        offset = round(frame.timestamp - start, 1)
        if offset in (1.0, 3.0, 6.0, 8.0):
            park = monitor.policy_decision("park")
            decisions[offset] = (monitor.locked, park.locked, park.reason)

    # The default gate reads the power mode only and stays unlocked.
    assert [default for default, _, _ in decisions.values()] == [False] * 4
    # PRNDL2 raw 15 (1.0 s, 6.0 s) and R against PRNDL's P (3.0 s, 8.0 s).
    assert decisions[1.0][1:] == (True, (
        f"gate policy 'park': {GEAR} is invalid: PRNDL2: raw value 15 is not "
        "mapped by the profile"))
    assert decisions[3.0][1:] == (True, (
        f"gate policy 'park': {GEAR} is invalid: contradiction: ECMPRDNL2.PRNDL2 "
        "is -1 but ECMPRDNL.PRNDL is 126"))
    assert decisions[6.0] == decisions[1.0]
    assert decisions[8.0] == decisions[3.0]
