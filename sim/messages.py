"""Per-message transmit data of the reference vehicle, read from its DBC.

Each E2E-protected message has three signals, identified by name: one ending in
``_CRC`` (an 8-bit, byte-aligned CRC), one ending in ``_Counter`` (the alive
counter) and the value signal. The E2E data id is the message's ``E2EDataID``
attribute and the cycle time its ``GenMsgCycleTime`` attribute (milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cantools.database.can import Database, Message, Signal

INVALID_LABEL = "INVALID"


@dataclass
class TxMessage:
    """One cyclic message with its signal roles, schedule, counter and faults."""

    message: Message
    attribute: str
    crc_signal: str
    counter_signal: str
    value_signal: str
    data_id: int
    crc_byte: int
    cycle_time: float
    labels: tuple[str, ...]
    invalid_raw: int
    counter: int = 0
    next_due: float | None = None
    faults: set[str] = field(default_factory=set)
    # One-shot faults: frames still to drop or to send twice, and counter
    # values the next frame skips.
    drop_next: int = 0
    repeat_next: int = 0
    counter_skip: int = 0


def load_tx_messages(
    database: Database, attributes: dict[str, str]
) -> dict[str, TxMessage]:
    """Build a TxMessage for each message in ``attributes`` (attribute -> message name).

    Returns them keyed by message name, in DBC order. Raises ValueError when a
    message is missing or lacks a CRC, counter or value signal, a cycle time or an
    E2E data id.
    """
    attribute_by_message = {name: attribute for attribute, name in attributes.items()}
    missing = set(attribute_by_message) - {
        message.name for message in database.messages
    }
    if missing:
        raise ValueError(f"DBC has no message named {', '.join(sorted(missing))}")

    result = {}
    for message in database.messages:
        if message.name in attribute_by_message:
            attribute = attribute_by_message[message.name]
            result[message.name] = _load_tx_message(message, attribute)
    return result


def _load_tx_message(message: Message, attribute: str) -> TxMessage:
    crc = _signal_with_suffix(message, "_CRC")
    counter = _signal_with_suffix(message, "_Counter")
    values = [s for s in message.signals if s.name not in (crc.name, counter.name)]
    if len(values) != 1:
        raise ValueError(
            f"{message.name}: expected one value signal, found {len(values)}"
        )
    value = values[0]

    if crc.length != 8 or crc.start % 8 != 0 or crc.byte_order != "little_endian":
        raise ValueError(f"{message.name}: {crc.name} must be one whole byte")
    if not message.cycle_time:
        raise ValueError(f"{message.name}: GenMsgCycleTime is missing")
    data_id = message.dbc.attributes.get("E2EDataID") if message.dbc else None
    if data_id is None:
        raise ValueError(f"{message.name}: E2EDataID is missing")

    choices = {str(label): raw for raw, label in (value.choices or {}).items()}
    labels = tuple(label for label in choices if label != INVALID_LABEL)
    # A signal without an INVALID label uses its all-ones raw value, the same
    # pattern the DBC gives the INVALID labels of the other signals.
    invalid_raw = choices.get(INVALID_LABEL, (1 << value.length) - 1)

    return TxMessage(
        message=message,
        attribute=attribute,
        crc_signal=crc.name,
        counter_signal=counter.name,
        value_signal=value.name,
        data_id=data_id.value,
        crc_byte=crc.start // 8,
        cycle_time=message.cycle_time / 1000.0,
        labels=labels,
        invalid_raw=invalid_raw,
    )


def _signal_with_suffix(message: Message, suffix: str) -> Signal:
    matches = [s for s in message.signals if s.name.endswith(suffix)]
    if len(matches) != 1:
        raise ValueError(f"{message.name}: expected one signal ending in {suffix}")
    return matches[0]
