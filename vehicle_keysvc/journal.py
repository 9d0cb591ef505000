"""Logging to journald with structured fields, without a library.

When systemd connects stderr to the journal it sets ``$JOURNAL_STREAM`` to
the device and inode of that stream (systemd.exec(5)). The service then
sends each record over the journal's native protocol instead: one datagram
of ``FIELD=value`` lines to ``/run/systemd/journal/socket``, with the
record's ``journal_fields`` (see :mod:`vehicle_keysvc.audit`) as extra
fields, so ``journalctl KEYSVC_DECISION=deny`` finds every denial.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
from collections.abc import Mapping

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "vehicle-keysvc"

# syslog priorities (RFC 5424) of the logging levels.
_PRIORITIES = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """Return whether stderr is the journal stream systemd set up."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stat.st_dev == int(device) and stat.st_ino == int(inode)


def encode_fields(fields: Mapping[str, str]) -> bytes:
    """Encode fields in the journal's native protocol.

    A value with a newline uses the binary form: the name, a newline, the
    length as a little-endian 64-bit integer, the value and a newline.
    """
    parts = []
    for name, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            parts.append(name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(name.encode() + b"=" + data + b"\n")
    return b"".join(parts)


class JournalHandler(logging.Handler):
    """Sends log records to journald as native-protocol datagrams."""

    def __init__(self, address: str = JOURNAL_SOCKET, identifier: str = SYSLOG_IDENTIFIER) -> None:
        super().__init__()
        self.address = address
        self.identifier = identifier
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            fields = {
                "MESSAGE": message,
                "PRIORITY": str(_PRIORITIES.get(record.levelno, 6)),
                "SYSLOG_IDENTIFIER": self.identifier,
                "LOGGER": record.name,
                "CODE_FILE": record.pathname,
                "CODE_LINE": str(record.lineno),
                "CODE_FUNC": record.funcName,
            }
            extra = getattr(record, "journal_fields", None)
            if isinstance(extra, Mapping):
                for name, value in extra.items():
                    fields[str(name)] = str(value)
            # NOTE: a datagram larger than the socket's send buffer fails
            # with EMSGSIZE; journald would accept it through a memfd, which
            # is not implemented. Such records go to handleError (stderr).
            self._socket.sendto(encode_fields(fields), self.address)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self._socket.close()
        super().close()


def use_journal_if_connected(level: str) -> bool:
    """Log to journald with structured fields if stderr is the journal.

    Returns False, and changes nothing, when stderr is not the journal.
    """
    if not stderr_is_journal() or not os.path.exists(JOURNAL_SOCKET):
        return False
    handler = JournalHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return True
