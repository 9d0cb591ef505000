"""CRC-8 SAE J1850 and the E2E receiver check."""

from __future__ import annotations

from vehicle_keysvc.e2e import E2EReceiver, E2EStatus, compute_crc, crc8_sae_j1850


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
    assert receiver.check(*frame(1, 3)) is E2EStatus.OK
    assert receiver.check(*frame(1, 7)) is E2EStatus.WRONG_SEQUENCE
