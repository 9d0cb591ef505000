"""End-to-end (E2E) protection of CAN frames in the style of AUTOSAR profile 1.

Each protected message carries a 4-bit alive counter and a CRC-8 SAE J1850
(polynomial 0x1D, initial value 0xFF, final XOR 0xFF). The CRC covers the
16-bit data id (low byte first) followed by every payload byte except the
CRC byte itself, so a frame copied to another message id fails its check.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

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
    """Result of one receiver check, named as in AUTOSAR E2E profile 1.

    ERROR is profile 1's WRONGCRC. Only OK and OKSOMELOST mark data that may
    be used.
    """

    OK = "OK"
    OK_SOME_LOST = "OKSOMELOST"
    INITIAL = "INITIAL"
    SYNC = "SYNC"
    REPEATED = "REPEATED"
    WRONG_SEQUENCE = "WRONGSEQUENCE"
    ERROR = "ERROR"
    NO_NEW_DATA = "NONEWDATA"

    @property
    def valid(self) -> bool:
        return self in (E2EStatus.OK, E2EStatus.OK_SOME_LOST)


# Upper bound of the widened counter delta. A delta of 15 on the 4-bit counter
# is a step back by one, so it is never read as lost frames.
MAX_DELTA_LIMIT = COUNTER_MODULO - 2


@dataclass
class E2EReceiver:
    """Receiver state machine of one message in the style of AUTOSAR E2E profile 1.

    ``check`` runs on every received frame and ``poll`` on the receiver's
    tick. Rules, in order:

    - A bad CRC is ERROR and changes neither the reference counter nor the
      sync state.
    - The first frame after start, or after more than ``max_no_new_data``
      cycles in a row without new data, is INITIAL and only sets the
      reference counter.
    - A counter equal to the reference is REPEATED.
    - A step of 1 is OK. A step of 2 up to the allowed delta is OKSOMELOST.
      The allowed delta starts at ``max_delta`` and grows by one for every
      cycle without new data, every REPEATED and every ERROR, up to 14, so
      frames lost on the bus do not count as a wrong sequence.
    - A larger step is WRONGSEQUENCE. That frame becomes the new reference.
    - After INITIAL or WRONGSEQUENCE, the next ``sync_frames - 1`` frames
      in sequence are SYNC. Only the frame after them is OK again.
    - ``poll`` returns NONEWDATA once per ``cycle_time`` in which no frame
      arrived. The first such cycle ends 1.5 cycle times after the last
      frame, which absorbs jitter in the sender's timing.

    Times are seconds on the frames' clock. Without ``cycle_time`` or a
    time argument, cycles without new data are not counted. ``status`` is
    the result of the last ``check`` or of a ``poll`` that found a cycle
    without new data.
    """

    data_id: int
    crc_byte: int
    max_delta: int = 1
    cycle_time: float | None = None
    sync_frames: int = 1
    max_no_new_data: int = 2
    status: E2EStatus | None = field(default=None, init=False)
    _last_counter: int | None = field(default=None, init=False, repr=False)
    _allowed_delta: int = field(default=0, init=False, repr=False)
    _sync_remaining: int = field(default=0, init=False, repr=False)
    _no_new_data: int = field(default=0, init=False, repr=False)
    _next_deadline: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.max_delta <= MAX_DELTA_LIMIT:
            raise ValueError(f"max_delta {self.max_delta} is not in 1..14")
        if self.sync_frames < 1:
            raise ValueError(f"sync_frames {self.sync_frames} is below 1")
        if self.max_no_new_data < 0:
            raise ValueError(f"max_no_new_data {self.max_no_new_data} is negative")
        self._allowed_delta = self.max_delta

    def check(
        self, payload: bytes, counter: int, crc: int, now: float | None = None
    ) -> E2EStatus:
        """Check one received frame and return its status.

        ``now`` is the frame's time in seconds.
        """
        if now is not None:
            self.poll(now)
            if self.cycle_time is not None:
                self._next_deadline = now + 1.5 * self.cycle_time
        self.status = self._check_frame(payload, counter, crc)
        return self.status

    def poll(self, now: float) -> E2EStatus | None:
        """Count the cycles without a new frame up to ``now``.

        Returns NONEWDATA when at least one such cycle ended since the last
        call, else None.
        """
        if self.cycle_time is None or self._next_deadline is None:
            return None
        if now < self._next_deadline:
            return None
        # Computed, not looped, because a recording can have gaps of hours.
        missed = int((now - self._next_deadline) // self.cycle_time) + 1
        self._next_deadline += missed * self.cycle_time
        self._no_new_data += missed
        self._allowed_delta = min(self._allowed_delta + missed, MAX_DELTA_LIMIT)
        self.status = E2EStatus.NO_NEW_DATA
        return self.status

    def reset(self) -> None:
        """Forget the reference counter, so the next frame is INITIAL."""
        self._last_counter = None
        self._allowed_delta = self.max_delta
        self._sync_remaining = 0
        self._no_new_data = 0
        self._next_deadline = None
        self.status = None

    def _check_frame(self, payload: bytes, counter: int, crc: int) -> E2EStatus:
        if crc != compute_crc(self.data_id, payload, self.crc_byte):
            self._widen()
            return E2EStatus.ERROR
        counter %= COUNTER_MODULO
        if self._last_counter is None or self._no_new_data > self.max_no_new_data:
            self._restart_sync(counter)
            return E2EStatus.INITIAL

        delta = (counter - self._last_counter) % COUNTER_MODULO
        if delta == 0:
            self._count_no_new_data()
            return E2EStatus.REPEATED
        if delta > self._allowed_delta:
            self._restart_sync(counter)
            return E2EStatus.WRONG_SEQUENCE

        self._last_counter = counter
        self._allowed_delta = self.max_delta
        self._no_new_data = 0
        if self._sync_remaining > 0:
            self._sync_remaining -= 1
            return E2EStatus.SYNC
        return E2EStatus.OK if delta == 1 else E2EStatus.OK_SOME_LOST

    def _restart_sync(self, counter: int) -> None:
        self._last_counter = counter
        self._allowed_delta = self.max_delta
        self._no_new_data = 0
        self._sync_remaining = self.sync_frames - 1

    def _count_no_new_data(self) -> None:
        self._no_new_data += 1
        self._widen()

    def _widen(self) -> None:
        self._allowed_delta = min(self._allowed_delta + 1, MAX_DELTA_LIMIT)
