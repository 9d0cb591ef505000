"""Vehicle profiles: which DBC signals carry which vehicle facts.

A profile is a TOML file that names a DBC file and maps DBC messages and
signals to COVESA VSS paths. It states which facts the car provides, so the
gate requires only those. Example (the reference vehicle)::

    name = "Reference vehicle"
    dbc = "vehicle.dbc"            # relative to the profile file
    stale_after_cycles = 3         # a fact is stale after 3 cycle times

    [messages.VCU_PowerMode]
    cycle_time_ms = 100            # default: the DBC's GenMsgCycleTime
    e2e = { counter = "PowerMode_Counter", crc = "PowerMode_CRC" }
    # Optional e2e keys: data_id (default: the DBC's E2EDataID),
    # max_counter_delta = 1, sync_frames = 2, max_no_new_data = 2
    # (see vehicle_keysvc.e2e.E2EReceiver).

    [facts."Vehicle.LowVoltageSystemState"]
    message = "VCU_PowerMode"
    signal = "PowerMode"
    values = { OFF = "OFF", ACC = "ACC", RUN = "ON", CRANK = "START" }
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cantools
import cantools.database

from .errors import ConfigError

_LOGGER = logging.getLogger(__name__)

POWER_STATE = "Vehicle.LowVoltageSystemState"
SPEED = "Vehicle.Speed"
SELECTED_GEAR = "Vehicle.Powertrain.Transmission.SelectedGear"
DRIVER_DOOR_LOCKED = "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked"
# VSS has no alarm branch; this name follows its conventions (a boolean
# "Is..." leaf under Vehicle.Body), true while the alarm is triggered.
ALARM_ACTIVE = "Vehicle.Body.Alarm.IsActive"

# VSS values of LowVoltageSystemState.
POWER_STATES = ("UNDEFINED", "LOCK", "OFF", "ACC", "ON", "START")

# Type of each fact's value; SelectedGear follows VSS: -1 is R, 0 is N,
# 1..125 forward gears, 126 is P and 127 is D.
FACT_TYPES: dict[str, type] = {
    POWER_STATE: str,
    SPEED: float,
    SELECTED_GEAR: int,
    DRIVER_DOOR_LOCKED: bool,
    ALARM_ACTIVE: bool,
}


@dataclass(frozen=True)
class E2ESettings:
    """E2E settings of one message: counter and CRC signals, CRC byte, data id."""

    counter_signal: str
    crc_signal: str
    crc_byte: int
    data_id: int
    max_counter_delta: int = 1
    sync_frames: int = 2
    max_no_new_data: int = 2


@dataclass(frozen=True)
class MessageSettings:
    """Receive settings of one DBC message the profile reads."""

    name: str
    frame_id: int
    is_extended_id: bool
    cycle_time: float  # seconds
    e2e: E2ESettings | None


@dataclass(frozen=True)
class FactMapping:
    """Mapping of one VSS fact to one DBC signal, with its value conversion."""

    fact: str
    message: str
    signal: str
    values: dict[str, Any] | None = None  # choice label or raw integer -> value
    factor: float = 1.0
    offset: float = 0.0

    def convert(self, decoded: Any) -> tuple[Any, str | None]:
        """Convert a decoded signal value to the fact's value.

        Returns ``(value, None)``, or ``(None, reason)`` when the raw value has
        no meaning in this profile; the caller must then treat the fact as
        invalid, never guess.
        """
        if self.values is not None:
            label = getattr(decoded, "name", None)
            raw = getattr(decoded, "value", decoded)
            if label is not None and label in self.values:
                return self.values[label], None
            if str(raw) in self.values:
                return self.values[str(raw)], None
            shown = f"{label} ({raw})" if label is not None else str(raw)
            return None, f"raw value {shown} is not mapped by the profile"
        number = getattr(decoded, "value", decoded)
        if not isinstance(number, (int, float)):
            return None, f"value {decoded!r} is not a number"
        value = number * self.factor + self.offset
        target = FACT_TYPES[self.fact]
        return (target(value) if target in (int, float) else value), None


@dataclass
class Profile:
    """A loaded and checked vehicle profile."""

    name: str
    path: Path
    database: cantools.database.Database
    messages: dict[str, MessageSettings]
    facts: dict[str, FactMapping]
    stale_after_cycles: float = 3.0
    e2e_protected: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def provided_facts(self) -> frozenset[str]:
        return frozenset(self.facts)

    def can_filters(self) -> list[dict[str, Any]]:
        """Return python-can receive filters that pass only the mapped ids."""
        filters = []
        for settings in self.messages.values():
            mask = 0x1FFFFFFF if settings.is_extended_id else 0x7FF
            filters.append(
                {
                    "can_id": settings.frame_id,
                    "can_mask": mask,
                    "extended": settings.is_extended_id,
                }
            )
        return filters


def _require(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in table:
        raise ConfigError(f"{where}: missing key '{key}'")
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(
            f"{where}: '{key}' must be a {kind.__name__}, got {value!r}"
        )
    return value


def _check_fact_values(fact: str, values: dict[str, Any], where: str) -> None:
    expected = FACT_TYPES[fact]
    for label, value in values.items():
        ok = isinstance(value, expected) and not (
            expected is not bool and isinstance(value, bool)
        )
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ConfigError(
                f"{where}: value for '{label}' must be a {expected.__name__}, "
                f"got {value!r}"
            )
        if fact == POWER_STATE and value not in POWER_STATES:
            raise ConfigError(
                f"{where}: '{value}' is not a VSS power state; use one of "
                f"{', '.join(POWER_STATES)}"
            )


def _load_database(path: Path) -> cantools.database.Database:
    if not path.is_file():
        raise ConfigError(f"DBC file {path} not found; fix 'dbc' in the profile")
    try:
        return cantools.database.load_file(str(path), strict=True)
    except Exception as err:  # cantools raises several unrelated types
        _LOGGER.warning(
            "DBC %s fails strict parsing (%s); loading it non-strict", path, err
        )
    try:
        return cantools.database.load_file(str(path), strict=False)
    except Exception as err:
        raise ConfigError(f"DBC file {path} cannot be parsed: {err}") from err


def _message_settings(
    database: cantools.database.Database,
    name: str,
    table: dict[str, Any],
    where: str,
) -> MessageSettings:
    try:
        message = database.get_message_by_name(name)
    except KeyError:
        raise ConfigError(f"{where}: message '{name}' is not in the DBC") from None

    cycle_ms = table.get("cycle_time_ms", message.cycle_time)
    if not cycle_ms or not isinstance(cycle_ms, (int, float)) or cycle_ms <= 0:
        raise ConfigError(
            f"{where}: message '{name}' has no cycle time in the DBC; set "
            f"[messages.{name}] cycle_time_ms to its period in milliseconds"
        )

    e2e = None
    e2e_table = table.get("e2e")
    if e2e_table is not None:
        e2e = _e2e_settings(message, e2e_table, f"{where} e2e")
    return MessageSettings(
        name=name,
        frame_id=message.frame_id,
        is_extended_id=message.is_extended_frame,
        cycle_time=float(cycle_ms) / 1000.0,
        e2e=e2e,
    )


def _e2e_settings(message: Any, table: dict[str, Any], where: str) -> E2ESettings:
    counter = _require(table, "counter", str, where)
    crc = _require(table, "crc", str, where)
    for signal_name in (counter, crc):
        try:
            message.get_signal_by_name(signal_name)
        except KeyError:
            raise ConfigError(
                f"{where}: signal '{signal_name}' is not in message "
                f"'{message.name}'"
            ) from None
    crc_signal = message.get_signal_by_name(crc)
    if crc_signal.length != 8 or crc_signal.start % 8 != 0:
        raise ConfigError(
            f"{where}: CRC signal '{crc}' must be one whole byte (8 bits on a "
            "byte boundary)"
        )
    data_id = table.get("data_id")
    if data_id is None:
        attribute = message.dbc.attributes.get("E2EDataID") if message.dbc else None
        if attribute is None:
            raise ConfigError(
                f"{where}: no data_id given and message '{message.name}' has no "
                "E2EDataID attribute in the DBC"
            )
        data_id = int(attribute.value)
    if not isinstance(data_id, int) or not 0 <= data_id <= 0xFFFF:
        raise ConfigError(f"{where}: data_id must be 0..65535, got {data_id!r}")
    max_delta = table.get("max_counter_delta", 1)
    if not isinstance(max_delta, int) or not 1 <= max_delta <= 14:
        raise ConfigError(
            f"{where}: max_counter_delta must be 1..14, got {max_delta!r}"
        )
    sync_frames = table.get("sync_frames", 2)
    if (not isinstance(sync_frames, int) or isinstance(sync_frames, bool)
            or not 1 <= sync_frames <= 15):
        raise ConfigError(
            f"{where}: sync_frames must be 1..15 (frames in sequence needed "
            f"before the first OK), got {sync_frames!r}"
        )
    max_no_new_data = table.get("max_no_new_data", 2)
    if (not isinstance(max_no_new_data, int) or isinstance(max_no_new_data, bool)
            or not 0 <= max_no_new_data <= 14):
        raise ConfigError(
            f"{where}: max_no_new_data must be 0..14 (cycles without new data "
            f"before the receiver syncs again), got {max_no_new_data!r}"
        )
    return E2ESettings(
        counter, crc, crc_signal.start // 8, data_id, max_delta, sync_frames,
        max_no_new_data,
    )


def _fact_mapping(
    database: cantools.database.Database, fact: str, table: dict[str, Any]
) -> FactMapping:
    where = f"facts.\"{fact}\""
    if fact not in FACT_TYPES:
        raise ConfigError(
            f"{where}: unknown fact; known facts are {', '.join(FACT_TYPES)}"
        )
    message_name = _require(table, "message", str, where)
    signal_name = _require(table, "signal", str, where)
    try:
        message = database.get_message_by_name(message_name)
    except KeyError:
        raise ConfigError(
            f"{where}: message '{message_name}' is not in the DBC"
        ) from None
    try:
        message.get_signal_by_name(signal_name)
    except KeyError:
        raise ConfigError(
            f"{where}: signal '{signal_name}' is not in message '{message_name}'"
        ) from None

    values = table.get("values")
    if values is not None:
        if not isinstance(values, dict) or not values:
            raise ConfigError(f"{where}: 'values' must be a non-empty table")
        _check_fact_values(fact, values, where)
    elif FACT_TYPES[fact] in (str, bool):
        raise ConfigError(
            f"{where}: a {FACT_TYPES[fact].__name__} fact needs a 'values' table "
            "that maps the DBC value labels to it"
        )
    factor = table.get("factor", 1.0)
    offset = table.get("offset", 0.0)
    for key, number in (("factor", factor), ("offset", offset)):
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            raise ConfigError(f"{where}: '{key}' must be a number, got {number!r}")
    return FactMapping(
        fact, message_name, signal_name, values, float(factor), float(offset)
    )


def load_profile(path: str | Path) -> Profile:
    """Load a profile and its DBC file and check every mapped name.

    Raises:
        ConfigError: the file is missing, not TOML, or names a message,
            signal, fact or value that does not exist.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"profile {path} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"profile {path} is not valid TOML: {err}") from err

    where = str(path)
    name = _require(data, "name", str, where)
    dbc_path = (path.parent / _require(data, "dbc", str, where)).resolve()
    database = _load_database(dbc_path)
    stale = data.get("stale_after_cycles", 3)
    if not isinstance(stale, (int, float)) or isinstance(stale, bool) or stale <= 1:
        raise ConfigError(
            f"{where}: stale_after_cycles must be a number above 1, got {stale!r}"
        )

    fact_tables = data.get("facts", {})
    if not fact_tables:
        raise ConfigError(f"{where}: the profile maps no facts; add [facts.\"...\"]")
    facts = {
        fact: _fact_mapping(database, fact, table)
        for fact, table in fact_tables.items()
    }

    message_tables = data.get("messages", {})
    messages = {}
    for mapping in facts.values():
        if mapping.message not in messages:
            table = message_tables.get(mapping.message, {})
            messages[mapping.message] = _message_settings(
                database, mapping.message, table, f"{where} [messages.{mapping.message}]"
            )
    for extra in set(message_tables) - set(messages):
        raise ConfigError(
            f"{where}: [messages.{extra}] is set but no fact reads that message"
        )

    e2e_protected = all(m.e2e is not None for m in messages.values())
    declared = data.get("e2e_protected", e2e_protected)
    if declared != e2e_protected:
        raise ConfigError(
            f"{where}: e2e_protected = {declared} but the messages' e2e settings "
            f"say {e2e_protected}"
        )
    return Profile(
        name=name,
        path=path,
        database=database,
        messages=messages,
        facts=facts,
        stale_after_cycles=float(stale),
        e2e_protected=e2e_protected,
        notes=list(data.get("notes", [])),
    )
