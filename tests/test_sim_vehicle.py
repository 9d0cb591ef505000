"""Tests of the reference vehicle: frame content, E2E protection, faults, timing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import can
import cantools
import pytest

from sim.vehicle import DEFAULT_DBC, FAULTS, ReferenceVehicle
from vehicle_keysvc.e2e import compute_crc

DBC_PATH = Path(__file__).resolve().parent.parent / "dbc" / "vehicle.dbc"
DATABASE = cantools.database.load_file(str(DBC_PATH), strict=True)

POWER_MODE_ID = 0x110
SPEED_ID = 0x120
GEAR_ID = 0x130
LOCK_ID = 0x140
ALARM_ID = 0x150
ALL_IDS = {POWER_MODE_ID, SPEED_ID, GEAR_ID, LOCK_ID, ALARM_ID}
# GenMsgCycleTime of each message in seconds.
CYCLE_TIMES = {
    POWER_MODE_ID: 0.1,
    SPEED_ID: 0.02,
    GEAR_ID: 0.05,
    LOCK_ID: 0.1,
    ALARM_ID: 0.1,
}


def decode(frame: can.Message) -> dict:
    return DATABASE.decode_message(frame.arbitration_id, frame.data)


def data_id(frame: can.Message) -> int:
    message = DATABASE.get_message_by_frame_id(frame.arbitration_id)
    return message.dbc.attributes["E2EDataID"].value


def crc_matches(frame: can.Message) -> bool:
    return frame.data[0] == compute_crc(data_id(frame), bytes(frame.data), 0)


def counter_of(frame: can.Message) -> int:
    return frame.data[1] & 0x0F


def by_id(frames: list[can.Message]) -> dict[int, can.Message]:
    return {frame.arbitration_id: frame for frame in frames}


def run_for(vehicle: ReferenceVehicle, times: list[float]) -> list[can.Message]:
    frames = []
    for now in times:
        frames.extend(vehicle.due_frames(now))
    return frames


def test_default_dbc_is_repo_dbc():
    assert Path(DEFAULT_DBC).resolve() == DBC_PATH


def test_first_call_sends_every_message():
    frames = ReferenceVehicle().due_frames(100.0)

    assert sorted(frame.arbitration_id for frame in frames) == sorted(ALL_IDS)
    for frame in frames:
        assert frame.timestamp == 100.0
        assert frame.is_extended_id is False
        assert frame.dlc == 4
        assert len(frame.data) == 4


def test_initial_state_parked_locked_armed():
    frames = by_id(ReferenceVehicle().due_frames(0.0))

    assert decode(frames[POWER_MODE_ID])["PowerMode"] == "OFF"
    assert decode(frames[SPEED_ID])["VehicleSpeed"] == 0.0
    assert decode(frames[GEAR_ID])["SelectedGear"] == "P"
    assert decode(frames[LOCK_ID])["CentralLockState"] == "LOCKED"
    assert decode(frames[ALARM_ID])["AlarmState"] == "ARMED"


def test_frames_carry_state_values():
    vehicle = ReferenceVehicle()
    vehicle.set(
        power_mode="RUN",
        speed_kmh=12.34,
        gear="D",
        central_lock="UNLOCKED",
        alarm="DISARMED",
    )
    frames = by_id(vehicle.due_frames(0.0))

    assert decode(frames[POWER_MODE_ID])["PowerMode"] == "RUN"
    assert decode(frames[SPEED_ID])["VehicleSpeed"] == pytest.approx(12.34)
    assert decode(frames[GEAR_ID])["SelectedGear"] == "D"
    assert decode(frames[LOCK_ID])["CentralLockState"] == "UNLOCKED"
    assert decode(frames[ALARM_ID])["AlarmState"] == "DISARMED"


@pytest.mark.parametrize(
    ("attribute", "value", "frame_id", "signal"),
    [
        ("power_mode", "CRANK", POWER_MODE_ID, "PowerMode"),
        ("speed_kmh", 50, SPEED_ID, "VehicleSpeed"),
        ("gear", "R", GEAR_ID, "SelectedGear"),
        ("central_lock", "DOUBLE_LOCKED", LOCK_ID, "CentralLockState"),
        ("alarm", "TRIGGERED", ALARM_ID, "AlarmState"),
    ],
)
def test_attribute_assignment_reaches_frame(attribute, value, frame_id, signal):
    vehicle = ReferenceVehicle()
    setattr(vehicle, attribute, value)
    frame = vehicle.encode(
        DATABASE.get_message_by_frame_id(frame_id).name, timestamp=1.0
    )

    assert getattr(vehicle, attribute) == value
    assert decode(frame)[signal] == value


def test_speed_encoded_in_hundredths():
    vehicle = ReferenceVehicle()
    vehicle.speed_kmh = 50.0
    frame = vehicle.encode("ESP_VehicleSpeed", timestamp=0.0)

    assert int.from_bytes(frame.data[2:4], "little") == 5000


def test_crc_verifies_on_every_frame():
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", speed_kmh=33.3, gear="D")
    frames = run_for(vehicle, [i * 0.01 for i in range(50)])

    assert frames
    for frame in frames:
        assert crc_matches(frame), frame


def test_crc_covers_data_id():
    frame = ReferenceVehicle().encode("VCU_PowerMode", timestamp=0.0)
    other_id = (
        DATABASE.get_message_by_name("TCU_GearSelection")
        .dbc.attributes["E2EDataID"]
        .value
    )

    assert frame.data[0] != compute_crc(other_id, bytes(frame.data), 0)


def test_counter_advances_and_wraps():
    vehicle = ReferenceVehicle()
    frames = [vehicle.encode("VCU_PowerMode", timestamp=float(i)) for i in range(20)]
    counters = [counter_of(frame) for frame in frames]

    assert counters == [*range(16), 0, 1, 2, 3]
    assert [decode(frame)["PowerMode_Counter"] for frame in frames] == counters


def test_counters_are_per_message():
    vehicle = ReferenceVehicle()
    frames = run_for(vehicle, [i * 0.01 for i in range(21)])
    speed_counters = [counter_of(f) for f in frames if f.arbitration_id == SPEED_ID]
    power_counters = [
        counter_of(f) for f in frames if f.arbitration_id == POWER_MODE_ID
    ]

    assert speed_counters == list(range(11))
    assert power_counters == [0, 1, 2]


@pytest.mark.parametrize("step", [0.001, 0.005, 0.007])
def test_cycle_times_over_one_second(step):
    vehicle = ReferenceVehicle()
    times = [i * step for i in range(int(round(1.0 / step)))]
    counts = Counter(frame.arbitration_id for frame in run_for(vehicle, times))

    for frame_id, cycle_time in CYCLE_TIMES.items():
        assert counts[frame_id] == round(1.0 / cycle_time), hex(frame_id)


def test_late_call_sends_no_burst():
    vehicle = ReferenceVehicle()
    vehicle.due_frames(0.0)
    late = vehicle.due_frames(1.0)
    just_after = vehicle.due_frames(1.005)

    assert sorted(frame.arbitration_id for frame in late) == sorted(ALL_IDS)
    assert just_after == []


def test_schedule_restarts_after_late_call():
    vehicle = ReferenceVehicle()
    vehicle.due_frames(0.0)
    vehicle.due_frames(1.0)
    next_speed = [f for f in vehicle.due_frames(1.02) if f.arbitration_id == SPEED_ID]

    assert len(next_speed) == 1


def test_clock_moving_backwards_restarts_schedule():
    vehicle = ReferenceVehicle()
    vehicle.due_frames(1000.0)
    frames = vehicle.due_frames(5.0)

    assert sorted(frame.arbitration_id for frame in frames) == sorted(ALL_IDS)


def test_frame_timestamp_is_now():
    vehicle = ReferenceVehicle()
    vehicle.due_frames(10.0)
    frames = vehicle.due_frames(10.02)

    assert frames
    assert all(frame.timestamp == 10.02 for frame in frames)


@pytest.mark.parametrize(
    ("attribute", "value", "allowed"),
    [
        ("power_mode", "DRIVE", "OFF, ACC, RUN, CRANK"),
        ("power_mode", "INVALID", "OFF, ACC, RUN, CRANK"),
        ("power_mode", 2, "OFF, ACC, RUN, CRANK"),
        ("gear", "L", "P, R, N, D"),
        ("central_lock", "OPEN", "UNLOCKED, LOCKED, DOUBLE_LOCKED"),
        ("alarm", "SILENT", "DISARMED, ARMED, TRIGGERED"),
    ],
)
def test_invalid_label_rejected(attribute, value, allowed):
    vehicle = ReferenceVehicle()
    before = vehicle.state

    with pytest.raises(ValueError) as error:
        setattr(vehicle, attribute, value)

    assert repr(value) in str(error.value)
    assert allowed in str(error.value)
    assert vehicle.state == before


@pytest.mark.parametrize(
    "value", [-0.1, 655.36, float("nan"), float("inf"), "10", True, None]
)
def test_invalid_speed_rejected(value):
    vehicle = ReferenceVehicle()

    with pytest.raises(ValueError) as error:
        vehicle.speed_kmh = value

    assert repr(value) in str(error.value)
    assert vehicle.speed_kmh == 0.0


def test_speed_accepts_int_and_max():
    vehicle = ReferenceVehicle()
    vehicle.speed_kmh = 20
    assert vehicle.speed_kmh == 20.0
    assert isinstance(vehicle.speed_kmh, float)

    vehicle.speed_kmh = 655.35
    assert vehicle.speed_kmh == 655.35


def test_set_is_all_or_nothing():
    vehicle = ReferenceVehicle()
    before = vehicle.state

    with pytest.raises(ValueError, match="'Q'"):
        vehicle.set(power_mode="RUN", gear="Q")

    assert vehicle.state == before


def test_set_unknown_attribute_rejected():
    vehicle = ReferenceVehicle()

    with pytest.raises(ValueError, match="unknown state attribute 'doors'"):
        vehicle.set(doors="OPEN")


def test_allowed_values_from_dbc():
    vehicle = ReferenceVehicle()

    assert vehicle.allowed_values("gear") == ("P", "R", "N", "D")
    assert vehicle.allowed_values("power_mode") == ("OFF", "ACC", "RUN", "CRANK")


def test_bad_crc_fault():
    vehicle = ReferenceVehicle()
    vehicle.inject("bad_crc", "ESP_VehicleSpeed")
    frames = run_for(vehicle, [i * 0.02 for i in range(10)])
    speed = [f for f in frames if f.arbitration_id == SPEED_ID]
    others = [f for f in frames if f.arbitration_id != SPEED_ID]

    assert len(speed) == 10
    assert not any(crc_matches(frame) for frame in speed)
    assert others
    assert all(crc_matches(frame) for frame in others)
    assert [counter_of(frame) for frame in speed] == list(range(10))


def test_stuck_counter_fault():
    vehicle = ReferenceVehicle()
    before = [vehicle.encode("TCU_GearSelection", timestamp=0.0) for _ in range(3)]
    vehicle.inject("stuck_counter", "TCU_GearSelection")
    stuck = [vehicle.encode("TCU_GearSelection", timestamp=0.0) for _ in range(5)]

    assert [counter_of(frame) for frame in before] == [0, 1, 2]
    assert [counter_of(frame) for frame in stuck] == [3] * 5
    assert all(crc_matches(frame) for frame in stuck)


def test_stuck_counter_resumes_after_clear():
    vehicle = ReferenceVehicle()
    vehicle.inject("stuck_counter", "TCU_GearSelection")
    vehicle.encode("TCU_GearSelection", timestamp=0.0)
    vehicle.clear_faults("TCU_GearSelection")
    frames = [vehicle.encode("TCU_GearSelection", timestamp=0.0) for _ in range(3)]

    assert [counter_of(frame) for frame in frames] == [0, 1, 2]


def test_silence_one_message():
    vehicle = ReferenceVehicle()
    vehicle.inject("silence", "BCM_AlarmState")
    counts = Counter(
        f.arbitration_id for f in run_for(vehicle, [i * 0.01 for i in range(100)])
    )

    assert counts[ALARM_ID] == 0
    assert counts[LOCK_ID] == 10
    assert counts[SPEED_ID] == 50


def test_silence_all_messages():
    vehicle = ReferenceVehicle()
    vehicle.inject("silence")

    assert run_for(vehicle, [i * 0.01 for i in range(100)]) == []


def test_silence_cleared_resumes_counter():
    vehicle = ReferenceVehicle()
    vehicle.due_frames(0.0)
    vehicle.inject("silence", "VCU_PowerMode")
    silent = run_for(vehicle, [0.1, 0.2, 0.3])
    vehicle.clear_faults()
    resumed = [f for f in vehicle.due_frames(0.4) if f.arbitration_id == POWER_MODE_ID]

    assert not [f for f in silent if f.arbitration_id == POWER_MODE_ID]
    assert len(resumed) == 1
    assert counter_of(resumed[0]) == 1


@pytest.mark.parametrize(
    ("message_name", "signal", "raw_invalid"),
    [
        ("VCU_PowerMode", "PowerMode", 7),
        ("TCU_GearSelection", "SelectedGear", 15),
        ("BCM_CentralLock", "CentralLockState", 3),
        ("BCM_AlarmState", "AlarmState", 3),
        ("ESP_VehicleSpeed", "VehicleSpeed", 0xFFFF),
    ],
)
def test_invalid_value_fault(message_name, signal, raw_invalid):
    vehicle = ReferenceVehicle()
    vehicle.inject("invalid_value", message_name)
    frame = vehicle.encode(message_name, timestamp=0.0)
    raw = DATABASE.decode_message(
        frame.arbitration_id, frame.data, decode_choices=False, scaling=False
    )

    assert raw[signal] == raw_invalid
    assert crc_matches(frame)


def test_invalid_value_decodes_as_invalid_label():
    vehicle = ReferenceVehicle()
    vehicle.inject("invalid_value", "VCU_PowerMode")

    assert (
        decode(vehicle.encode("VCU_PowerMode", timestamp=0.0))["PowerMode"] == "INVALID"
    )
    assert vehicle.power_mode == "OFF"


def test_faults_add_up_and_clear():
    vehicle = ReferenceVehicle()
    vehicle.inject("bad_crc", "VCU_PowerMode")
    vehicle.inject("invalid_value", "VCU_PowerMode")
    frame = vehicle.encode("VCU_PowerMode", timestamp=0.0)

    assert vehicle.faults("VCU_PowerMode") == {"bad_crc", "invalid_value"}
    assert decode(frame)["PowerMode"] == "INVALID"
    assert not crc_matches(frame)

    vehicle.clear_faults("VCU_PowerMode")
    frame = vehicle.encode("VCU_PowerMode", timestamp=0.0)
    assert vehicle.faults("VCU_PowerMode") == frozenset()
    assert decode(frame)["PowerMode"] == "OFF"
    assert crc_matches(frame)


def test_fault_on_all_messages():
    vehicle = ReferenceVehicle()
    vehicle.inject("bad_crc")
    frames = vehicle.due_frames(0.0)

    assert len(frames) == 5
    assert not any(crc_matches(frame) for frame in frames)


def test_unknown_fault_rejected():
    with pytest.raises(ValueError) as error:
        ReferenceVehicle().inject("flip_bits", "VCU_PowerMode")

    assert "'flip_bits'" in str(error.value)
    for fault in FAULTS:
        assert fault in str(error.value)


def test_unknown_message_rejected():
    with pytest.raises(ValueError, match="unknown message 'VCU_Power'.*VCU_PowerMode"):
        ReferenceVehicle().inject("silence", "VCU_Power")
