"""Loading of DBC files as real cars ship them.

Real DBC files are messy: cantools rejects many in strict mode (overlapping
signals, signals longer than their message), their comments and value
labels are Windows-1252 or Latin-1 text, and some messages cannot be
decoded at all. This module loads such files non-strict and records, per
message, what is wrong with it, so the profile can reject a DBC only when a
signal it maps is affected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cantools
import cantools.database
from cantools.database.can import Message

from .errors import ConfigError

_LOGGER = logging.getLogger(__name__)

# DBC files are Windows-1252 text by convention. Latin-1 text reads the same
# except for bytes 0x80 to 0x9F. cantools (45.1) opens the file with
# errors="replace", so a byte that is undefined in Windows-1252 becomes
# U+FFFD in a comment or label instead of failing the load.
DBC_ENCODING = "cp1252"


@dataclass
class DbcFile:
    """A loaded DBC file and the problems found in its messages."""

    path: Path
    database: cantools.database.Database
    strict: bool
    # Message name -> why cantools's strict check rejects it.
    strict_errors: dict[str, str] = field(default_factory=dict)
    # Message name -> why a frame of the declared length cannot be decoded.
    undecodable: dict[str, str] = field(default_factory=dict)


def load_dbc(path: Path) -> DbcFile:
    """Load a DBC file, non-strict when it fails strict parsing.

    Raises:
        ConfigError: the file is missing or cannot be parsed at all.
    """
    if not path.is_file():
        raise ConfigError(f"DBC file {path} not found; fix 'dbc' in the profile")
    for strict in (True, False):
        try:
            database = cantools.database.load_file(
                str(path), database_format="dbc", encoding=DBC_ENCODING, strict=strict
            )
        except Exception as err:  # cantools raises several unrelated types
            if not strict:
                raise ConfigError(f"DBC file {path} cannot be parsed: {err}") from err
            _LOGGER.warning(
                "DBC %s fails strict parsing (%s); loading it non-strict", path, err
            )
            continue
        dbc = DbcFile(path, database, strict)
        _find_message_problems(dbc)
        return dbc
    raise AssertionError("the non-strict load returns or raises")


def _find_message_problems(dbc: DbcFile) -> None:
    for message in dbc.database.messages:
        if not dbc.strict:
            strict_error = _strict_error(message)
            if strict_error is not None:
                dbc.strict_errors[message.name] = strict_error
        try:
            message.decode(bytes(message.length), decode_choices=False)
        except Exception as err:  # cantools raises DecodeError and struct errors
            if message.is_multiplexed() and "multiplexer id" in str(err):
                continue  # a zero selector the DBC does not define: other frames decode
            dbc.undecodable[message.name] = str(err) or type(err).__name__
    if dbc.undecodable:
        _LOGGER.warning(
            "DBC %s: %d messages cannot be decoded: %s",
            dbc.path, len(dbc.undecodable),
            "; ".join(f"{name} ({why})" for name, why in sorted(dbc.undecodable.items())),
        )


def _strict_error(message: Message) -> str | None:
    """Return why cantools's strict check rejects ``message``, or None."""
    try:
        message.refresh(strict=True)
    except Exception as err:  # cantools.database.Error and ValueError
        return str(err)
    finally:
        message.refresh(strict=False)
    return None
