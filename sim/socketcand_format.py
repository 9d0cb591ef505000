"""Text form of CAN frames in the socketcand protocol."""

from __future__ import annotations

import can

_MAX_STANDARD_ID = 0x7FF
_MAX_EXTENDED_ID = 0x1FFFFFFF
_MAX_CLASSIC_DLC = 8


class SendCommandError(ValueError):
    """A ``< send ... >`` command that does not describe a valid CAN frame."""


def format_frame(msg: can.Message, timestamp: float) -> bytes:
    """Format ``msg`` as ``< frame ID SECONDS.USEC HEXDATA >`` (``timestamp``: s).

    The id has 3 upper-case hex digits for a standard id and 8 for an extended id,
    which is how the client tells them apart. A frame without data keeps the space
    before the empty data field, because python-can's parser needs that field.
    """
    if msg.is_extended_id:
        frame_id = f"{msg.arbitration_id & _MAX_EXTENDED_ID:08X}"
    else:
        frame_id = f"{msg.arbitration_id & _MAX_STANDARD_ID:03X}"
    data = bytes(msg.data[: msg.dlc]).hex().upper()
    return f"< frame {frame_id} {timestamp:.6f} {data} >".encode("ascii")


def format_error_frame(msg: can.Message, timestamp: float) -> bytes:
    """Format an error frame as ``< error ID SECONDS.USEC >`` (``timestamp``: s).

    ID is the hex error class of Linux's can/error.h, without the error flag.
    """
    error_class = msg.arbitration_id & _MAX_EXTENDED_ID
    return f"< error {error_class:X} {timestamp:.6f} >".encode("ascii")


def parse_send_command(
    fields: list[str], timestamp: float, channel: str
) -> can.Message:
    """Parse the fields of ``< send ID DLC B0 B1 ... >`` after the word "send".

    ID, DLC and data bytes are hex; an 8-digit id is extended and a 3-digit id is
    standard. Raises SendCommandError naming the invalid field.
    """
    if len(fields) < 2:
        raise SendCommandError(
            f"expected 'send ID DLC BYTES...', got {' '.join(fields)!r}"
        )
    id_text, dlc_text, byte_texts = fields[0], fields[1], fields[2:]

    if len(id_text) == 3:
        is_extended, max_id = False, _MAX_STANDARD_ID
    elif len(id_text) == 8:
        is_extended, max_id = True, _MAX_EXTENDED_ID
    else:
        raise SendCommandError(f"invalid id {id_text!r}: expected 3 or 8 hex digits")
    arbitration_id = _parse_hex(id_text, "id", max_id)

    dlc = _parse_hex(dlc_text, "DLC", _MAX_CLASSIC_DLC)
    if len(byte_texts) != dlc:
        raise SendCommandError(f"DLC {dlc} does not match {len(byte_texts)} data bytes")
    data = bytes(_parse_hex(text, "data byte", 0xFF) for text in byte_texts)

    return can.Message(
        timestamp=timestamp,
        arbitration_id=arbitration_id,
        is_extended_id=is_extended,
        dlc=dlc,
        data=data,
        channel=channel,
        is_rx=True,
    )


def _parse_hex(text: str, field_name: str, maximum: int) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise SendCommandError(
            f"invalid {field_name} {text!r}: expected hex digits"
        ) from None
    if not 0 <= value <= maximum:
        raise SendCommandError(
            f"invalid {field_name} {text!r}: expected at most 0x{maximum:X}"
        )
    return value
