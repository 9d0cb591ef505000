"""End-to-end (E2E) protection of CAN frames in the style of AUTOSAR profile 1.

Each protected message carries a 4-bit alive counter and a CRC-8 SAE J1850
(polynomial 0x1D, initial value 0xFF, final XOR 0xFF). The CRC covers the
16-bit data id (low byte first) followed by every payload byte except the
CRC byte itself, so a frame copied to another message id fails its check.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

COUNTER_MODULO = 16


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1D) if crc & 0x80 else (crc << 1)
            crc &= 0xFF
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def crc8_sae_j1850(data: bytes, initial: int = 0xFF, final_xor: int = 0xFF) -> int:
    """Return the CRC-8 SAE J1850 of ``data`` (check value of b"123456789": 0x4B)."""
    crc = initial
    for byte in data:
        crc = _TABLE[crc ^ byte]
    return crc ^ final_xor


def compute_crc(data_id: int, payload: bytes, crc_byte: int) -> int:
    """Return the E2E CRC of a frame whose CRC sits in byte ``crc_byte``."""
    covered = bytes((data_id & 0xFF, (data_id >> 8) & 0xFF))
    covered += payload[:crc_byte] + payload[crc_byte + 1 :]
    return crc8_sae_j1850(covered)


class E2EStatus(enum.Enum):
    """Result of checking one received frame."""

    OK = "OK"
    INITIAL = "INITIAL"
    REPEATED = "REPEATED"
    WRONG_SEQUENCE = "WRONGSEQUENCE"
    ERROR = "ERROR"

    @property
    def valid(self) -> bool:
        return self is E2EStatus.OK


@dataclass
class E2EReceiver:
    """Receiver-side check of one message's counter and CRC.

    The first frame after start, or after an error, is INITIAL: it sets the
    reference counter but is not trusted yet. A frame is OK only when its CRC
    matches and its counter advanced by 1 to ``max_delta`` from the last
    frame with a good CRC. A repeated counter (a stuck sender or a replayed
    frame) is REPEATED, a larger jump is WRONGSEQUENCE.
    """

    data_id: int
    crc_byte: int
    max_delta: int = 1
    _last_counter: int | None = None

    def check(self, payload: bytes, counter: int, crc: int) -> E2EStatus:
        if crc != compute_crc(self.data_id, payload, self.crc_byte):
            return E2EStatus.ERROR
        last, self._last_counter = self._last_counter, counter
        if last is None:
            return E2EStatus.INITIAL
        delta = (counter - last) % COUNTER_MODULO
        if delta == 0:
            return E2EStatus.REPEATED
        if delta > self.max_delta:
            return E2EStatus.WRONG_SEQUENCE
        return E2EStatus.OK

    def reset(self) -> None:
        self._last_counter = None
