"""Descriptions of CAN error frames.

The error class bits of an error frame's arbitration id follow Linux's
``include/uapi/linux/can/error.h``, which python-can's socketcan interface
passes on unchanged.
"""

from __future__ import annotations

import can

ERROR_CLASSES = (
    (0x001, "TX timeout"),
    (0x002, "lost arbitration"),
    (0x004, "controller problem"),
    (0x008, "protocol violation"),
    (0x010, "transceiver status"),
    (0x020, "no ACK on transmission"),
    (0x040, "bus-off"),
    (0x080, "bus error"),
    (0x100, "controller restarted"),
    (0x200, "error counters"),
)


def describe_error_frame(frame: can.Message) -> str:
    """Return the error classes of an error frame, such as ``bus-off``."""
    names = [name for bit, name in ERROR_CLASSES if frame.arbitration_id & bit]
    if not names:
        return f"error frame 0x{frame.arbitration_id:X}"
    return "error frame: " + ", ".join(names)
