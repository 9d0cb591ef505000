"""Model of the reference vehicle that sends its state as E2E-protected CAN frames.

``dbc/vehicle.dbc`` describes the reference vehicle: one cyclic message per state
value, each with a CRC-8 byte, a 4-bit alive counter and the value signal. This
module keeps the state, encodes the frames with cantools and decides which frames
are due, so tests can drive it with explicit times and no sleeping.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import can
import cantools
from cantools.database.can import Database

from sim.messages import INVALID_LABEL, TxMessage, load_tx_messages
from vehicle_keysvc.e2e import COUNTER_MODULO, compute_crc

_LOGGER = logging.getLogger(__name__)

DEFAULT_DBC = Path(__file__).resolve().parent.parent / "dbc" / "vehicle.dbc"

FAULTS = ("silence", "bad_crc", "stuck_counter", "invalid_value")

# DBC message that carries each state attribute.
STATE_MESSAGES = {
    "power_mode": "VCU_PowerMode",
    "speed_kmh": "ESP_VehicleSpeed",
    "gear": "TCU_GearSelection",
    "central_lock": "BCM_CentralLock",
    "alarm": "BCM_AlarmState",
}

# Parked, locked and armed with the power off.
INITIAL_STATE: dict[str, Any] = {
    "power_mode": "OFF",
    "speed_kmh": 0.0,
    "gear": "P",
    "central_lock": "LOCKED",
    "alarm": "ARMED",
}

# Absorbs float rounding when a next-due time is compared with a caller's clock.
_DUE_TOLERANCE = 1e-6

T = TypeVar("T")


class _StateAttribute(Generic[T]):
    """Vehicle state value that is validated on assignment."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, vehicle: None, owner: type) -> _StateAttribute[T]: ...

    @overload
    def __get__(self, vehicle: ReferenceVehicle, owner: type | None = None) -> T: ...

    def __get__(
        self, vehicle: ReferenceVehicle | None, owner: type | None = None
    ) -> T | _StateAttribute[T]:
        if vehicle is None:
            return self
        return vehicle._state[self._name]  # type: ignore[no-any-return]

    def __set__(self, vehicle: ReferenceVehicle, value: T) -> None:
        vehicle.set(**{self._name: value})


class ReferenceVehicle:
    """State of the reference car and the CAN frames it sends.

    State attributes (assigning an invalid value raises ValueError):
    ``power_mode`` ("OFF", "ACC", "RUN", "CRANK"), ``speed_kmh`` (km/h, from 0 to
    the DBC maximum), ``gear`` ("P", "R", "N", "D"), ``central_lock`` ("UNLOCKED",
    "LOCKED", "DOUBLE_LOCKED") and ``alarm`` ("DISARMED", "ARMED", "TRIGGERED").
    The allowed labels are read from the DBC value tables, without "INVALID".
    """

    power_mode: _StateAttribute[str] = _StateAttribute()
    speed_kmh: _StateAttribute[float] = _StateAttribute()
    gear: _StateAttribute[str] = _StateAttribute()
    central_lock: _StateAttribute[str] = _StateAttribute()
    alarm: _StateAttribute[str] = _StateAttribute()

    def __init__(self, dbc_path: str | Path = DEFAULT_DBC) -> None:
        self.database: Database = cantools.database.load_file(
            str(dbc_path), strict=True
        )
        self._messages = load_tx_messages(self.database, STATE_MESSAGES)
        self._by_attribute = {tx.attribute: tx for tx in self._messages.values()}
        self._state: dict[str, Any] = {}
        self.set(**INITIAL_STATE)

    @property
    def message_names(self) -> list[str]:
        """Names of the DBC messages this vehicle sends, in DBC order."""
        return list(self._messages)

    @property
    def state(self) -> dict[str, Any]:
        """Copy of the current state, keyed by attribute name."""
        return dict(self._state)

    def set(self, **changes: Any) -> None:
        """Apply several state changes at once.

        Every value is validated before any is applied, so a ValueError leaves the
        state unchanged. Unknown attribute names also raise ValueError.
        """
        validated = {
            name: self._validate(name, value) for name, value in changes.items()
        }
        self._state.update(validated)
        if validated:
            _LOGGER.debug("vehicle state changed: %s", validated)

    def allowed_values(self, attribute: str) -> tuple[str, ...]:
        """Return the labels that a text state attribute accepts."""
        return self._tx_for_attribute(attribute).labels

    def inject(self, fault: str, message: str | None = None) -> None:
        """Start a fault on one message, or on every message when ``message`` is None.

        Faults: "silence" stops sending the message, "bad_crc" sends frames whose
        CRC byte is wrong, "stuck_counter" freezes the alive counter at the value
        the next frame would carry, and "invalid_value" sends the raw INVALID value
        of the message's signal. A signal without an INVALID label in the DBC gets
        its all-ones raw value (0xFFFF for the vehicle speed). Faults add up until
        cleared.
        """
        if fault not in FAULTS:
            raise ValueError(
                f"unknown fault {fault!r}: allowed faults are {', '.join(FAULTS)}"
            )
        for tx in self._select(message):
            tx.faults.add(fault)
            _LOGGER.info("fault %s injected on %s", fault, tx.message.name)

    def clear_faults(self, message: str | None = None) -> None:
        """End the faults of one message, or of all when ``message`` is None."""
        for tx in self._select(message):
            if tx.faults:
                _LOGGER.info(
                    "faults %s cleared on %s", sorted(tx.faults), tx.message.name
                )
            tx.faults.clear()

    def faults(self, message: str) -> frozenset[str]:
        """Return the faults active on ``message``."""
        return frozenset(self._select(message)[0].faults)

    def due_frames(self, now: float) -> list[can.Message]:
        """Return the frames whose cycle time has elapsed at ``now``.

        ``now`` is in seconds on any clock that the caller keeps using, and becomes
        the frames' timestamp. The first call returns one frame of every message.
        Each message keeps its own next-due time, advanced by its cycle time, so
        calls at irregular times keep the average cycle. A message returns at most
        one frame per call: after a gap longer than its cycle, its schedule restarts
        at ``now`` with no catch-up frames. A clock that moves backwards by more than
        one cycle also restarts the schedule. A silenced message stays on its
        schedule but returns no frame, and its counter does not advance.
        """
        frames = []
        for tx in self._messages.values():
            if not _is_due(tx, now):
                continue
            _schedule_next(tx, now)
            if "silence" in tx.faults:
                continue
            frame = self._build_frame(tx, now)
            if tx.drop_next > 0:
                tx.drop_next -= 1
                continue
            frames.append(frame)
            if tx.repeat_next > 0:
                tx.repeat_next -= 1
                frames.append(_copy_frame(frame))
        return frames

    def drop(self, message: str, count: int = 1) -> None:
        """Lose the next ``count`` frames of ``message`` on the bus.

        The sender still counts them, so the receiver gets a counter jump.
        """
        _check_count("count", count)
        self._select(message)[0].drop_next += count

    def repeat(self, message: str, count: int = 1) -> None:
        """Send each of the next ``count`` frames of ``message`` twice."""
        _check_count("count", count)
        self._select(message)[0].repeat_next += count

    def jump_counter(self, message: str, by: int) -> None:
        """Make the next frame of ``message`` skip ``by`` counter values."""
        _check_count("by", by)
        self._select(message)[0].counter_skip += by

    def spoof(
        self,
        message: str,
        value: Any,
        counter_offset: int = 8,
        timestamp: float | None = None,
    ) -> can.Message:
        """Build a frame that another node forges on ``message``'s id.

        The forger has the DBC, the data id and the CRC algorithm, so the CRC
        is correct. Its counter is the genuine next counter plus
        ``counter_offset``. The genuine sender's counter and state do not
        change. ``value`` is a label or number as for the state attribute.
        """
        tx = self._select(message)[0]
        checked = self._validate(tx.attribute, value)
        counter = (tx.counter + counter_offset) % COUNTER_MODULO
        signals = {tx.crc_signal: 0, tx.counter_signal: counter, tx.value_signal: checked}
        payload = bytearray(tx.message.encode(signals, scaling=True))
        payload[tx.crc_byte] = compute_crc(tx.data_id, bytes(payload), tx.crc_byte)
        return can.Message(
            timestamp=time.time() if timestamp is None else timestamp,
            arbitration_id=tx.message.frame_id,
            is_extended_id=tx.message.is_extended_frame,
            dlc=len(payload),
            data=payload,
        )

    def encode(self, message_name: str, timestamp: float | None = None) -> can.Message:
        """Build the next frame of ``message_name`` from the current state.

        The frame carries the bad_crc, stuck_counter and invalid_value faults and
        advances the message's alive counter. It is built even when the message is
        silenced, and it does not change the due_frames schedule. ``timestamp``
        (seconds) defaults to ``time.time()``.
        """
        tx = self._select(message_name)[0]
        return self._build_frame(tx, time.time() if timestamp is None else timestamp)

    def _build_frame(self, tx: TxMessage, timestamp: float) -> can.Message:
        if tx.counter_skip:
            tx.counter = (tx.counter + tx.counter_skip) % COUNTER_MODULO
            tx.counter_skip = 0
        if "invalid_value" in tx.faults:
            signals = {
                tx.crc_signal: 0,
                tx.counter_signal: tx.counter,
                tx.value_signal: tx.invalid_raw,
            }
            payload = bytearray(tx.message.encode(signals, scaling=False))
        else:
            value = self._state[tx.attribute]
            signals = {
                tx.crc_signal: 0,
                tx.counter_signal: tx.counter,
                tx.value_signal: value,
            }
            payload = bytearray(tx.message.encode(signals, scaling=True))

        crc = compute_crc(tx.data_id, bytes(payload), tx.crc_byte)
        if "bad_crc" in tx.faults:
            crc ^= 0xFF
        payload[tx.crc_byte] = crc

        if "stuck_counter" not in tx.faults:
            tx.counter = (tx.counter + 1) % COUNTER_MODULO
        return can.Message(
            timestamp=timestamp,
            arbitration_id=tx.message.frame_id,
            is_extended_id=tx.message.is_extended_frame,
            dlc=len(payload),
            data=payload,
        )

    def _validate(self, attribute: str, value: Any) -> Any:
        tx = self._tx_for_attribute(attribute)
        if tx.labels:
            if not isinstance(value, str) or value not in tx.labels:
                allowed = ", ".join(tx.labels)
                raise ValueError(
                    f"invalid {attribute} {value!r}: allowed values are {allowed}"
                )
            return value

        signal = tx.message.get_signal_by_name(tx.value_signal)
        maximum = signal.maximum if signal.maximum is not None else math.inf
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not is_number or not 0 <= value <= maximum:
            raise ValueError(
                f"invalid {attribute} {value!r}: "
                f"expected a number from 0 to {maximum} {signal.unit}"
            )
        return float(value)

    def _tx_for_attribute(self, attribute: str) -> TxMessage:
        try:
            return self._by_attribute[attribute]
        except KeyError:
            raise ValueError(
                f"unknown state attribute {attribute!r}: allowed attributes are "
                f"{', '.join(self._by_attribute)}"
            ) from None

    def _select(self, message: str | None) -> list[TxMessage]:
        if message is None:
            return list(self._messages.values())
        try:
            return [self._messages[message]]
        except KeyError:
            raise ValueError(
                f"unknown message {message!r}: "
                f"allowed messages are {', '.join(self._messages)}"
            ) from None


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"invalid {name} {value!r}: expected an integer >= 1")


def _copy_frame(frame: can.Message) -> can.Message:
    return can.Message(
        timestamp=frame.timestamp,
        arbitration_id=frame.arbitration_id,
        is_extended_id=frame.is_extended_id,
        dlc=frame.dlc,
        data=bytes(frame.data),
    )


def _is_due(tx: TxMessage, now: float) -> bool:
    if tx.next_due is None:
        return True
    if tx.next_due - now > tx.cycle_time + _DUE_TOLERANCE:
        _LOGGER.debug(
            "clock moved backwards for %s, restarting its schedule", tx.message.name
        )
        return True
    return now >= tx.next_due - _DUE_TOLERANCE


def _schedule_next(tx: TxMessage, now: float) -> None:
    if tx.next_due is None or tx.next_due - now > tx.cycle_time + _DUE_TOLERANCE:
        tx.next_due = now + tx.cycle_time
        return
    tx.next_due += tx.cycle_time
    if tx.next_due <= now + _DUE_TOLERANCE:
        tx.next_due = now + tx.cycle_time


__all__ = [
    "DEFAULT_DBC",
    "FAULTS",
    "INITIAL_STATE",
    "INVALID_LABEL",
    "STATE_MESSAGES",
    "ReferenceVehicle",
]
