"""CRC-8 SAE J1850 and the E2E receiver check."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REFERENCE_PROFILE
from vehicle_keysvc.e2e import E2EReceiver, E2EStatus, compute_crc, crc8_sae_j1850
from vehicle_keysvc.errors import ConfigError
from vehicle_keysvc.profile import load_profile
from vehicle_keysvc.vehicle_state import VehicleState


def frame(data_id: int, counter: int, value: int = 2) -> tuple[bytes, int, int]:
    payload = bytearray([0, counter & 0x0F, value, 0])
    payload[0] = compute_crc(data_id, bytes(payload), 0)
    return bytes(payload), counter & 0x0F, payload[0]


def test_crc8_check_value() -> None:
    # Published check value of CRC-8 SAE J1850 (AUTOSAR SWS CRC Library).
    assert crc8_sae_j1850(b"123456789") == 0x4B
    assert crc8_sae_j1850(b"\x00\x00\x00\x00") == 0x59


def test_crc_depends_on_data_id() -> None:
    payload = bytes([0, 1, 2, 0])
    assert compute_crc(0x1110, payload, 0) != compute_crc(0x1120, payload, 0)


def test_receiver_sequence() -> None:
    receiver = E2EReceiver(data_id=0x1110, crc_byte=0)
    statuses = [receiver.check(*frame(0x1110, c)) for c in (3, 4, 5, 5, 8, 9)]
    assert statuses == [
        E2EStatus.INITIAL,
        E2EStatus.OK,
        E2EStatus.OK,
        E2EStatus.REPEATED,
        E2EStatus.WRONG_SEQUENCE,
        E2EStatus.OK,
    ]


def test_receiver_counter_wraps() -> None:
    receiver = E2EReceiver(data_id=7, crc_byte=0)
    receiver.check(*frame(7, 15))
    assert receiver.check(*frame(7, 0)) is E2EStatus.OK


def test_receiver_bad_crc_and_wrong_data_id() -> None:
    receiver = E2EReceiver(data_id=0x1110, crc_byte=0)
    payload, counter, crc = frame(0x1110, 1)
    assert receiver.check(payload, counter, crc ^ 0x01) is E2EStatus.ERROR
    other_id = frame(0x1120, 2)
    assert receiver.check(*other_id) is E2EStatus.ERROR
    # Frames with a bad CRC do not move the reference counter.
    assert receiver.check(*frame(0x1110, 1)) is E2EStatus.INITIAL


def test_receiver_max_delta_allows_lost_frames() -> None:
    receiver = E2EReceiver(data_id=1, crc_byte=0, max_delta=3)
    receiver.check(*frame(1, 0))
    assert receiver.check(*frame(1, 3)) is E2EStatus.OK_SOME_LOST
    assert receiver.check(*frame(1, 7)) is E2EStatus.WRONG_SEQUENCE


def test_status_valid_only_ok_and_oksomelost() -> None:
    valid = {status for status in E2EStatus if status.valid}
    assert valid == {E2EStatus.OK, E2EStatus.OK_SOME_LOST}


def test_crc8_other_published_check_values() -> None:
    # Regression values for the same parameters. The check value 0x4B above
    # and the frame below are the ones checked against published results.
    assert crc8_sae_j1850(b"\xF2\x01\x83") == 0x37
    assert crc8_sae_j1850(b"\x0F\xAA\x00\x55") == 0x79
    assert crc8_sae_j1850(b"\x00\xFF\x55\x11") == 0xB8
    assert crc8_sae_j1850(b"\x33\x22\x55\xAA\xBB\xCC\xDD\xEE\xFF") == 0xCB
    assert crc8_sae_j1850(b"\x92\x6B\x55") == 0x8C
    assert crc8_sae_j1850(b"\xFF\xFF\xFF\xFF") == 0x74
    # A Mercedes frame from elektronik-keller.de ("AVC-LAN CRC-8 J1850"),
    # checked there with reveng -m crc-8 -p 1D -i FF -x FF.
    assert crc8_sae_j1850(bytes.fromhex("00C0DFACAA0740")) == 0x6C


def test_sync_frames_before_first_ok() -> None:
    receiver = E2EReceiver(data_id=1, crc_byte=0, sync_frames=3)
    statuses = [receiver.check(*frame(1, c)) for c in (0, 1, 2, 3, 4)]
    assert statuses == [
        E2EStatus.INITIAL,
        E2EStatus.SYNC,
        E2EStatus.SYNC,
        E2EStatus.OK,
        E2EStatus.OK,
    ]


def test_wrong_sequence_needs_sync_again() -> None:
    receiver = E2EReceiver(data_id=1, crc_byte=0, sync_frames=2)
    statuses = [receiver.check(*frame(1, c)) for c in (0, 1, 2, 9, 10, 11)]
    assert statuses == [
        E2EStatus.INITIAL,
        E2EStatus.SYNC,
        E2EStatus.OK,
        E2EStatus.WRONG_SEQUENCE,
        E2EStatus.SYNC,
        E2EStatus.OK,
    ]


def test_jump_during_sync_restarts_sync() -> None:
    receiver = E2EReceiver(data_id=1, crc_byte=0, sync_frames=3)
    statuses = [receiver.check(*frame(1, c)) for c in (0, 1, 5, 6, 7, 8)]
    assert statuses == [
        E2EStatus.INITIAL,
        E2EStatus.SYNC,
        E2EStatus.WRONG_SEQUENCE,
        E2EStatus.SYNC,
        E2EStatus.SYNC,
        E2EStatus.OK,
    ]


def test_no_new_data_per_missed_cycle() -> None:
    receiver = E2EReceiver(data_id=1, crc_byte=0, cycle_time=0.1)
    receiver.check(*frame(1, 0), now=10.0)
    assert receiver.poll(10.1) is None
    assert receiver.poll(10.16) is E2EStatus.NO_NEW_DATA
    assert receiver.status is E2EStatus.NO_NEW_DATA
    assert receiver.poll(10.2) is None
    assert receiver.poll(10.26) is E2EStatus.NO_NEW_DATA


def test_lost_frame_is_oksomelost() -> None:
    receiver = E2EReceiver(data_id=1, crc_byte=0, cycle_time=0.1)
    receiver.check(*frame(1, 0), now=10.0)
    assert receiver.check(*frame(1, 1), now=10.1) is E2EStatus.OK
    # Frame 2 is lost on the bus, so the tick at 10.25 s finds no new data.
    assert receiver.poll(10.25) is E2EStatus.NO_NEW_DATA
    assert receiver.check(*frame(1, 3), now=10.3) is E2EStatus.OK_SOME_LOST
    # After a valid frame the allowed delta is back to max_delta.
    assert receiver.check(*frame(1, 5), now=10.4) is E2EStatus.WRONG_SEQUENCE


def test_lost_frame_counted_without_poll() -> None:
    receiver = E2EReceiver(data_id=1, crc_byte=0, cycle_time=0.1)
    receiver.check(*frame(1, 0), now=10.0)
    receiver.check(*frame(1, 1), now=10.1)
    assert receiver.check(*frame(1, 3), now=10.3) is E2EStatus.OK_SOME_LOST


def test_long_silence_needs_initial_again() -> None:
    receiver = E2EReceiver(
        data_id=1, crc_byte=0, cycle_time=0.1, sync_frames=2, max_no_new_data=2
    )
    for index, counter in enumerate((0, 1, 2)):
        receiver.check(*frame(1, counter), now=10.0 + index * 0.1)
    # Three cycles without new data exceed max_no_new_data = 2.
    assert receiver.check(*frame(1, 6), now=10.6) is E2EStatus.INITIAL
    assert receiver.check(*frame(1, 7), now=10.7) is E2EStatus.SYNC
    assert receiver.check(*frame(1, 8), now=10.8) is E2EStatus.OK


def test_short_silence_keeps_sync() -> None:
    receiver = E2EReceiver(data_id=1, crc_byte=0, cycle_time=0.1, max_no_new_data=2)
    receiver.check(*frame(1, 0), now=10.0)
    receiver.check(*frame(1, 1), now=10.1)
    # Two cycles without new data widen the allowed delta to 3 without a resync.
    assert receiver.check(*frame(1, 4), now=10.4) is E2EStatus.OK_SOME_LOST


def test_bad_crc_widens_delta_but_keeps_reference() -> None:
    receiver = E2EReceiver(data_id=1, crc_byte=0)
    receiver.check(*frame(1, 0))
    receiver.check(*frame(1, 1))
    payload, counter, crc = frame(1, 2)
    assert receiver.check(payload, counter, crc ^ 0x10) is E2EStatus.ERROR
    assert receiver.check(*frame(1, 3)) is E2EStatus.OK_SOME_LOST


def test_repeated_frames_lead_to_resync() -> None:
    receiver = E2EReceiver(data_id=1, crc_byte=0, max_no_new_data=1)
    receiver.check(*frame(1, 0))
    receiver.check(*frame(1, 1))
    assert receiver.check(*frame(1, 1)) is E2EStatus.REPEATED
    assert receiver.check(*frame(1, 1)) is E2EStatus.REPEATED
    assert receiver.check(*frame(1, 2)) is E2EStatus.INITIAL


def test_delta_widening_is_capped() -> None:
    receiver = E2EReceiver(data_id=1, crc_byte=0, max_no_new_data=14)
    receiver.check(*frame(1, 0))
    payload, counter, crc = frame(1, 1)
    for _ in range(20):
        receiver.check(payload, counter, crc ^ 0xFF)
    # A delta of 15 is the counter going back by one, never frames lost.
    assert receiver.check(*frame(1, 15)) is E2EStatus.WRONG_SEQUENCE


def test_reset_forgets_reference() -> None:
    receiver = E2EReceiver(data_id=1, crc_byte=0)
    receiver.check(*frame(1, 0))
    receiver.reset()
    assert receiver.status is None
    assert receiver.check(*frame(1, 1)) is E2EStatus.INITIAL


@pytest.mark.parametrize(
    "arguments",
    [{"max_delta": 0}, {"max_delta": 15}, {"sync_frames": 0}, {"max_no_new_data": -1}],
)
def test_receiver_rejects_bad_settings(arguments) -> None:
    with pytest.raises(ValueError):
        E2EReceiver(data_id=1, crc_byte=0, **arguments)


def test_hours_of_silence_counted_at_once() -> None:
    receiver = E2EReceiver(data_id=1, crc_byte=0, cycle_time=0.01)
    receiver.check(*frame(1, 0), now=0.0)
    assert receiver.poll(36_000.0) is E2EStatus.NO_NEW_DATA
    assert receiver.poll(36_000.001) is None
    assert receiver.check(*frame(1, 1), now=36_000.002) is E2EStatus.INITIAL


def reference_profile_with(tmp_path: Path, e2e_keys: str) -> Path:
    text = REFERENCE_PROFILE.read_text().replace(
        'e2e = { counter = "PowerMode_Counter", crc = "PowerMode_CRC" }',
        'e2e = { counter = "PowerMode_Counter", crc = "PowerMode_CRC", '
        + e2e_keys + " }",
    )
    (tmp_path / "vehicle.dbc").write_text((REFERENCE_PROFILE.parent / "vehicle.dbc").read_text())
    path = tmp_path / "profile.toml"
    path.write_text(text)
    return path


def test_profile_e2e_settings_reach_receiver(tmp_path: Path) -> None:
    profile = load_profile(
        reference_profile_with(tmp_path, "sync_frames = 4, max_no_new_data = 0")
    )
    receiver = VehicleState(profile)._decoders[(0x110, False)].receiver

    assert receiver is not None
    assert receiver.sync_frames == 4
    assert receiver.max_no_new_data == 0
    assert receiver.cycle_time == pytest.approx(0.1)


@pytest.mark.parametrize("keys,message", [
    ("sync_frames = 0", "sync_frames must be 1..15"),
    ("sync_frames = true", "sync_frames must be 1..15"),
    ("max_no_new_data = 15", "max_no_new_data must be 0..14"),
    ('max_no_new_data = "2"', "max_no_new_data must be 0..14"),
    ("sync_frame = 2", "unknown keys sync_frame"),
])
def test_profile_rejects_bad_e2e_settings(tmp_path: Path, keys: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_profile(reference_profile_with(tmp_path, keys))
