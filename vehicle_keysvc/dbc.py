"""Loading of DBC files as real cars ship them.

Real DBC files are messy: cantools rejects many in strict mode (overlapping
signals, signals longer than their message), their comments and value
labels are often Windows-1252 or Latin-1 text, and some messages cannot be
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

# cantools reads DBC files as Windows-1252 by default. Latin-1 maps every
# byte to a character, so it reads the files that Windows-1252 cannot
# (bytes 0x81, 0x8D, 0x8F, 0x90 and 0x9D are undefined there).
_ENCODINGS = ("cp1252", "latin-1")


@dataclass
class DbcFile:
    """A loaded DBC file and the problems found in its messages."""

    path: Path
    database: cantools.database.Database
    strict: bool
    encoding: str
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
    last_error: Exception | None = None
    for encoding in _ENCODINGS:
        for strict in (True, False):
            try:
                database = cantools.database.load_file(
                    str(path), database_format="dbc", encoding=encoding, strict=strict
                )
            except UnicodeDecodeError as err:
                last_error = err
                break  # the same bytes fail non-strict too: try the next encoding
            except Exception as err:  # cantools raises several unrelated types
                last_error = err
                if strict:
                    _LOGGER.warning(
                        "DBC %s fails strict parsing (%s); loading it non-strict",
                        path, err,
                    )
                continue
            if encoding != _ENCODINGS[0]:
                _LOGGER.info("DBC %s is not Windows-1252 text; read as %s", path, encoding)
            dbc = DbcFile(path, database, strict, encoding)
            _find_message_problems(dbc)
            return dbc
    raise ConfigError(f"DBC file {path} cannot be parsed: {last_error}")


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
