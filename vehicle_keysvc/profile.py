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

A fact read from several signals lists them as ``[[facts."...".sources]]``
tables (each with the keys of a single-source fact) and sets ``combine``:
``"all"`` needs every source fresh, valid and in agreement, ``"any"`` takes
the first usable source in list order. Under both rules, two usable sources
that disagree (beyond ``tolerance`` for numbers) make the fact invalid. The
README describes every key.
"""

from __future__ import annotations

import logging
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cantools.database

from .dbc import DbcFile, load_dbc
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

# Speed units found in real DBC files, as factors to km/h (the VSS unit of
# Vehicle.Speed). Keys are lower case.
SPEED_UNITS: dict[str, float] = {
    "km/h": 1.0,
    "kph": 1.0,
    "kmh": 1.0,
    "unit_kilometerperhour": 1.0,
    "mph": 1.609344,
    "unit_milesperhour": 1.609344,
    "m/s": 3.6,
}

COMBINE_RULES = ("all", "any")


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


# Compared and hashed by identity: each source keeps its own reading.
@dataclass(frozen=True, eq=False)
class SignalSource:
    """One source of a fact: a DBC signal, several signals read together, or
    the arrival of a message, with the conversion to the fact's value.

    ``values`` maps a value label or raw integer to the fact's value; for
    several signals its keys are the raw integers joined by commas. Without
    signals, every decodable frame of the message gives ``constant``.
    """

    fact: str
    message: str
    signals: tuple[str, ...]
    values: dict[str, Any] | None = None
    factor: float = 1.0
    offset: float = 0.0
    unit_factor: float = 1.0  # from the signal's unit to the fact's unit
    constant: Any = None
    # A signal in the same message that gives the unit, with the factor to
    # the fact's unit for each of its raw values. It replaces unit_factor.
    unit_signal: str | None = None
    unit_factors: dict[str, float] | None = None
    max_age: float = math.inf  # seconds after the last frame until stale

    @property
    def name(self) -> str:
        """``Message.Signal`` (signals joined by ``+``), or the message name."""
        if not self.signals:
            return self.message
        return f"{self.message}.{'+'.join(self.signals)}"

    @property
    def required_signals(self) -> tuple[str, ...]:
        """Signals a frame must carry for this source: its own and the unit's."""
        if self.unit_signal is None:
            return self.signals
        return (*self.signals, self.unit_signal)

    def convert(self, decoded: dict[str, Any]) -> tuple[Any, str | None]:
        """Convert a frame's decoded signals to the fact's value.

        Returns ``(value, None)``, or ``(None, reason)`` when the raw value has
        no meaning in this profile; the caller must then treat the fact as
        invalid, never guess.
        """
        if not self.signals:
            return self.constant, None
        if len(self.signals) > 1:
            return self._convert_combined(decoded)
        signal = self.signals[0]
        unit_factor = self.unit_factor
        if self.unit_signal is not None:
            assert self.unit_factors is not None
            raw_unit = decoded[self.unit_signal]
            key = _raw_key(getattr(raw_unit, "value", raw_unit))
            if key not in self.unit_factors:
                return None, (
                    f"{self.unit_signal}: raw value {key} is not a unit in the profile"
                )
            unit_factor = self.unit_factors[key]
        value, problem = self._convert_one(decoded[signal], unit_factor)
        return value, (None if problem is None else f"{signal}: {problem}")

    def _convert_one(self, decoded: Any, unit_factor: float) -> tuple[Any, str | None]:
        if self.values is not None:
            label = getattr(decoded, "name", None)
            raw = getattr(decoded, "value", decoded)
            if label is not None and label in self.values:
                return self.values[label], None
            if _raw_key(raw) in self.values:
                return self.values[_raw_key(raw)], None
            shown = f"{label} ({raw})" if label is not None else str(raw)
            return None, f"raw value {shown} is not mapped by the profile"
        number = getattr(decoded, "value", decoded)
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            return None, f"value {decoded!r} is not a number"
        value = (number * self.factor + self.offset) * unit_factor
        target = FACT_TYPES[self.fact]
        return (target(value) if target in (int, float) else value), None

    def _convert_combined(self, decoded: dict[str, Any]) -> tuple[Any, str | None]:
        assert self.values is not None
        key = ",".join(_raw_key(getattr(decoded[s], "value", decoded[s]))
                       for s in self.signals)
        if key in self.values:
            return self.values[key], None
        return None, f"{'+'.join(self.signals)}: raw values {key} are not mapped by the profile"


def _raw_key(raw: Any) -> str:
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw)


@dataclass(frozen=True)
class FactMapping:
    """Mapping of one VSS fact to its sources and the rule that combines them."""

    fact: str
    sources: tuple[SignalSource, ...]
    combine: str = "all"
    tolerance: float = 0.0  # largest difference of two agreeing numeric values

    @property
    def message(self) -> str:
        """Message of the first source."""
        return self.sources[0].message

    @property
    def signal(self) -> str:
        """Signal names of the first source, joined by ``+``."""
        return "+".join(self.sources[0].signals)

    def agree(self, first: Any, second: Any) -> bool:
        """Return True if two source values agree (within ``tolerance`` for numbers)."""
        numbers = (int, float)
        if (isinstance(first, numbers) and isinstance(second, numbers)
                and not isinstance(first, bool) and not isinstance(second, bool)):
            return abs(first - second) <= self.tolerance
        return bool(first == second)


@dataclass(frozen=True)
class SignalCheck:
    """Result of checking one mapped source against the DBC."""

    fact: str
    source: str
    usable: bool
    reason: str


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
    checks: list[SignalCheck] = field(default_factory=list)
    # Messages of the DBC that cannot be decoded, with the reason.
    undecodable: dict[str, str] = field(default_factory=dict)

    @property
    def provided_facts(self) -> frozenset[str]:
        return frozenset(self.facts)

    @property
    def max_age(self) -> float:
        """Largest time in seconds that any source stays fresh."""
        return max(s.max_age for f in self.facts.values() for s in f.sources)

    def facts_in_message(self, message: str) -> tuple[str, ...]:
        """Return the facts that have a source in ``message``."""
        return tuple(
            fact for fact, mapping in self.facts.items()
            if any(source.message == message for source in mapping.sources)
        )

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


def _number(table: dict[str, Any], key: str, default: float | None, where: str,
            minimum: float | None = None, above: float | None = None) -> float | None:
    value = table.get(key, default)
    if value is None:
        return None
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value)):
        raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: '{key}' must be at least {minimum}, got {value!r}")
    if above is not None and value <= above:
        raise ConfigError(f"{where}: '{key}' must be a number above {above}, got {value!r}")
    return float(value)


def _check_fact_value(fact: str, label: str, value: Any, where: str) -> None:
    expected = FACT_TYPES[fact]
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


def _message_settings(
    database: cantools.database.Database,
    name: str,
    table: dict[str, Any],
    where: str,
) -> MessageSettings | str:
    """Return the message's receive settings, or why it cannot be used."""
    message = database.get_message_by_name(name)
    cycle_ms = table.get("cycle_time_ms", message.cycle_time)
    if cycle_ms is None:
        return (
            f"message '{name}' has no cycle time in the DBC; set "
            f"[messages.{name}] cycle_time_ms to its period in milliseconds"
        )
    if (not isinstance(cycle_ms, (int, float)) or isinstance(cycle_ms, bool)
            or not math.isfinite(cycle_ms) or cycle_ms <= 0):
        raise ConfigError(
            f"{where}: cycle_time_ms must be a positive number of milliseconds, "
            f"got {cycle_ms!r}"
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


_E2E_KEYS = frozenset(
    {"counter", "crc", "data_id", "max_counter_delta", "sync_frames", "max_no_new_data"}
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
    unknown = sorted(set(table) - _E2E_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys {', '.join(unknown)}; use "
            f"{', '.join(sorted(_E2E_KEYS))}"
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


@dataclass
class _Loader:
    """State shared by the checks of one profile file."""

    where: str
    dbc: DbcFile
    message_tables: dict[str, Any]
    stale_after_cycles: float
    messages: dict[str, MessageSettings] = field(default_factory=dict)
    checks: list[SignalCheck] = field(default_factory=list)
    referenced: set[str] = field(default_factory=set)

    def fact(self, fact: str, table: dict[str, Any]) -> FactMapping | None:
        where = f"{self.where}: facts.\"{fact}\""
        if fact not in FACT_TYPES:
            raise ConfigError(
                f"{where}: unknown fact; known facts are {', '.join(FACT_TYPES)}"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        fact_stale = _number(table, "stale_after_cycles", None, where, above=1)
        if "sources" in table:
            source_tables = table["sources"]
            misplaced = sorted(set(table) & (_SOURCE_KEYS - {"stale_after_cycles"}))
            if misplaced:
                raise ConfigError(
                    f"{where}: {', '.join(misplaced)} belong in each "
                    "[[...sources]] table when the fact has sources"
                )
            if not isinstance(source_tables, list) or not source_tables:
                raise ConfigError(f"{where}: 'sources' must be a non-empty array of tables")
        else:
            source_tables = [table]
        combine = table.get("combine", "all")
        if combine not in COMBINE_RULES:
            raise ConfigError(
                f"{where}: combine = {combine!r} is invalid; use \"all\" (every "
                "source must agree) or \"any\" (the first usable source wins)"
            )
        tolerance = _number(table, "tolerance", 0.0, where, minimum=0.0)
        assert tolerance is not None

        sources = []
        for index, source_table in enumerate(source_tables):
            source_where = where if len(source_tables) == 1 else f"{where} source {index + 1}"
            if not isinstance(source_table, dict):
                raise ConfigError(f"{source_where}: must be a table")
            # A single-source fact keeps the fact's own keys in the same table.
            allowed = _SOURCE_KEYS if "sources" in table else _SOURCE_KEYS | _FACT_KEYS
            source = self.source(fact, source_table, source_where, fact_stale, allowed)
            if source is not None:
                sources.append(source)
        if len(sources) != len(source_tables):
            return None
        return FactMapping(fact, tuple(sources), combine, tolerance)

    def source(self, fact: str, table: dict[str, Any], where: str,
               fact_stale: float | None, allowed: frozenset[str]) -> SignalSource | None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(
                f"{where}: unknown keys {', '.join(unknown)}; use "
                f"{', '.join(sorted(allowed))}"
            )
        message_name = _require(table, "message", str, where)
        self.referenced.add(message_name)
        signals = _signal_names(table, where)
        spec = _ValueSpec.parse(fact, table, signals, where)
        source_stale = _number(table, "stale_after_cycles", None, where, above=1)
        name = f"{message_name}.{'+'.join(signals)}" if signals else message_name

        problem = self._dbc_problem(message_name, signals, spec, fact)
        if problem is None:
            settings = self.messages.get(message_name)
            if settings is None:
                message_table = self.message_tables.get(message_name, {})
                result = _message_settings(
                    self.dbc.database, message_name, message_table,
                    f"{self.where} [messages.{message_name}]",
                )
                if isinstance(result, str):
                    problem = result
                else:
                    settings = self.messages[message_name] = result
        if problem is not None:
            self.checks.append(SignalCheck(fact, name, False, problem))
            return None

        assert settings is not None
        message_stale = _number(
            self.message_tables.get(message_name, {}), "stale_after_cycles", None,
            f"{self.where} [messages.{message_name}]", above=1,
        )
        cycles = next(c for c in (source_stale, fact_stale, message_stale,
                                  self.stale_after_cycles) if c is not None)
        unit_factor, unit_text = self._unit(fact, message_name, signals, spec)
        source = SignalSource(
            fact=fact,
            message=message_name,
            signals=signals,
            values=spec.values,
            factor=spec.factor,
            offset=spec.offset,
            unit_factor=unit_factor,
            constant=spec.constant,
            unit_signal=spec.unit_signal,
            unit_factors=spec.unit_factors,
            max_age=settings.cycle_time * cycles,
        )
        self.checks.append(SignalCheck(
            fact, name, True, self._describe(source, settings, cycles, unit_text)))
        return source

    def _dbc_problem(self, message_name: str, signals: tuple[str, ...],
                     spec: _ValueSpec, fact: str) -> str | None:
        database = self.dbc.database
        try:
            message = database.get_message_by_name(message_name)
        except KeyError:
            return f"message '{message_name}' is not in the DBC"
        needed = (*signals, spec.unit_signal) if spec.unit_signal else signals
        for signal_name in needed:
            try:
                message.get_signal_by_name(signal_name)
            except KeyError:
                return f"signal '{signal_name}' is not in message '{message_name}'"
        if message_name in self.dbc.undecodable:
            return (
                f"message '{message_name}' cannot be decoded: "
                f"{self.dbc.undecodable[message_name]}"
            )
        strict_error = self.dbc.strict_errors.get(message_name, "")
        for signal_name in needed:
            if signal_name in strict_error.replace(".", " ").split():
                return f"the DBC is inconsistent for this signal: {strict_error}"
        if spec.values is not None and len(signals) == 1:
            signal = message.get_signal_by_name(signals[0])
            labels = {str(label) for label in (signal.choices or {}).values()}
            for key in spec.values:
                if key in labels or _is_integer_text(key):
                    continue
                known = ", ".join(sorted(labels)) if labels else "none (use raw integers)"
                return (
                    f"'{key}' is not a value label of {signals[0]}; the DBC's "
                    f"labels are {known}"
                )
        if (fact == SPEED and spec.values is None and signals and spec.unit is None
                and spec.unit_signal is None):
            unit = message.get_signal_by_name(signals[0]).unit or ""
            if unit.lower() not in SPEED_UNITS:
                return (
                    f"the DBC gives {signals[0]} the unit {unit!r}, which is not a "
                    f"speed unit this service knows; set unit = \"km/h\" or "
                    f"\"mph\" in the profile"
                )
        return None

    def _unit(self, fact: str, message_name: str, signals: tuple[str, ...],
              spec: _ValueSpec) -> tuple[float, str]:
        if fact != SPEED or spec.values is not None or not signals:
            return 1.0, ""
        if spec.unit_signal is not None:
            assert spec.unit_names is not None
            units = ", ".join(f"{k} {v}" for k, v in spec.unit_names.items())
            return 1.0, f", unit from {spec.unit_signal} ({units}) to km/h"
        message = self.dbc.database.get_message_by_name(message_name)
        unit = spec.unit or message.get_signal_by_name(signals[0]).unit or ""
        factor = SPEED_UNITS[unit.lower()]
        origin = "profile" if spec.unit else "DBC"
        return factor, f", unit {unit} ({origin}) to km/h"

    def _describe(self, source: SignalSource, settings: MessageSettings,
                  cycles: float, unit_text: str) -> str:
        message = self.dbc.database.get_message_by_name(source.message)
        parts = []
        for signal_name in source.signals:
            signal = message.get_signal_by_name(signal_name)
            order = "big-endian" if signal.byte_order == "big_endian" else "little-endian"
            sign = "signed" if signal.is_signed else "unsigned"
            mux = ", multiplexed" if signal.multiplexer_ids else ""
            parts.append(f"{signal_name} {order} {signal.length}-bit {sign}{mux}")
        carried = "; ".join(parts) if parts else f"arrival of a frame means {source.constant!r}"
        id_kind = "29-bit" if settings.is_extended_id else "11-bit"
        return (
            f"{carried}{unit_text}; {id_kind} id 0x{settings.frame_id:X}, "
            f"stale after {source.max_age:.2f} s ({cycles:g} x "
            f"{settings.cycle_time * 1000:g} ms)"
        )


_SOURCE_KEYS = frozenset(
    {"message", "signal", "values", "value", "factor", "offset", "unit",
     "unit_signal", "unit_values", "stale_after_cycles"}
)
_FACT_KEYS = frozenset({"combine", "tolerance"})
_PROFILE_KEYS = frozenset(
    {"name", "dbc", "stale_after_cycles", "e2e_protected", "notes", "messages", "facts"}
)
_MESSAGE_KEYS = frozenset({"cycle_time_ms", "e2e", "stale_after_cycles"})


def _is_integer_text(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _signal_names(table: dict[str, Any], where: str) -> tuple[str, ...]:
    signal = table.get("signal")
    if signal is None:
        if "value" not in table:
            raise ConfigError(
                f"{where}: missing key 'signal' (or 'value' for a fact given by "
                "the arrival of the message)"
            )
        return ()
    if "value" in table:
        raise ConfigError(f"{where}: set 'signal' or 'value', not both")
    if isinstance(signal, str):
        return (signal,)
    if (isinstance(signal, list) and len(signal) >= 2
            and all(isinstance(s, str) for s in signal)):
        return tuple(signal)
    raise ConfigError(
        f"{where}: 'signal' must be a signal name or a list of at least two, "
        f"got {signal!r}"
    )


@dataclass(frozen=True)
class _ValueSpec:
    values: dict[str, Any] | None
    factor: float
    offset: float
    unit: str | None
    constant: Any
    unit_signal: str | None = None
    unit_names: dict[str, str] | None = None
    unit_factors: dict[str, float] | None = None

    @classmethod
    def parse(cls, fact: str, table: dict[str, Any], signals: tuple[str, ...],
              where: str) -> _ValueSpec:
        expected = FACT_TYPES[fact]
        constant = table.get("value")
        if not signals:
            _check_fact_value(fact, "value", constant, where)
        values = table.get("values")
        if values is not None:
            if not isinstance(values, dict) or not values:
                raise ConfigError(f"{where}: 'values' must be a non-empty table")
            for label, value in values.items():
                _check_fact_value(fact, label, value, where)
            if len(signals) > 1:
                _check_combined_keys(values, len(signals), where)
        elif len(signals) > 1:
            raise ConfigError(
                f"{where}: a source of several signals needs a 'values' table "
                "keyed by their raw values joined by commas, e.g. \"1,0\""
            )
        elif signals and expected in (str, bool):
            raise ConfigError(
                f"{where}: a {expected.__name__} fact needs a 'values' table "
                "that maps the DBC value labels to it"
            )
        factor = _number(table, "factor", 1.0, where)
        offset = _number(table, "offset", 0.0, where)
        unit = table.get("unit")
        if unit is not None:
            if fact != SPEED or not isinstance(unit, str) or unit.lower() not in SPEED_UNITS:
                raise ConfigError(
                    f"{where}: unit = {unit!r} is invalid; 'unit' applies to "
                    f"{SPEED} only and is one of {', '.join(SPEED_UNITS)}"
                )
        unit_signal, unit_names = _unit_signal(fact, table, signals, unit, where)
        unit_factors = None
        if unit_names is not None:
            unit_factors = {k: SPEED_UNITS[v.lower()] for k, v in unit_names.items()}
        assert factor is not None and offset is not None
        return cls(values, factor, offset, unit, constant, unit_signal, unit_names,
                   unit_factors)


def _unit_signal(fact: str, table: dict[str, Any], signals: tuple[str, ...],
                 unit: str | None, where: str) -> tuple[str | None, dict[str, str] | None]:
    """Return the unit signal and its raw value to unit table, if the source has one."""
    unit_signal = table.get("unit_signal")
    unit_values = table.get("unit_values")
    if unit_signal is None and unit_values is None:
        return None, None
    if fact != SPEED or len(signals) != 1 or "values" in table or unit is not None:
        raise ConfigError(
            f"{where}: 'unit_signal' applies to a {SPEED} source of one signal "
            "without 'values' or 'unit'"
        )
    if not isinstance(unit_signal, str) or not isinstance(unit_values, dict) or not unit_values:
        raise ConfigError(
            f"{where}: set both 'unit_signal' (a signal name) and 'unit_values' "
            "(its raw values to units), e.g. { 0 = \"km/h\", 1 = \"mph\" }"
        )
    for key, name in unit_values.items():
        known = isinstance(name, str) and name.lower() in SPEED_UNITS
        if not _is_integer_text(key) or not known:
            raise ConfigError(
                f"{where}: unit_values entry {key} = {name!r} is invalid; keys are "
                f"raw integers and units are one of {', '.join(SPEED_UNITS)}"
            )
    return unit_signal, dict(unit_values)


def _check_combined_keys(values: dict[str, Any], count: int, where: str) -> None:
    for key in values:
        parts = key.split(",")
        if len(parts) != count or not all(_is_integer_text(p.strip()) for p in parts):
            raise ConfigError(
                f"{where}: key '{key}' must be {count} raw integers joined by "
                "commas, one per signal in the order of 'signal'"
            )


def load_profile(path: str | Path, *, reject_unusable: bool = True) -> Profile:
    """Load a profile and its DBC file and check every mapped signal.

    With ``reject_unusable`` false, mapped signals that cannot be used are
    left out of the profile and listed in ``Profile.checks``, which is how
    ``vehicle-keysvc profile check`` reports them.

    Raises:
        ConfigError: the file is missing, not TOML, names a fact or value
            that does not exist, or (with ``reject_unusable``) maps a
            signal that cannot be used.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"profile {path} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"profile {path} is not valid TOML: {err}") from err

    where = str(path)
    unknown = sorted(set(data) - _PROFILE_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys {', '.join(unknown)}; use "
            f"{', '.join(sorted(_PROFILE_KEYS))}"
        )
    name = _require(data, "name", str, where)
    dbc = load_dbc((path.parent / _require(data, "dbc", str, where)).resolve())
    stale = _number(data, "stale_after_cycles", 3.0, where, above=1)
    assert stale is not None

    fact_tables = data.get("facts", {})
    if not isinstance(fact_tables, dict) or not fact_tables:
        raise ConfigError(f"{where}: the profile maps no facts; add [facts.\"...\"]")
    message_tables = data.get("messages", {})
    if not isinstance(message_tables, dict):
        raise ConfigError(f"{where}: 'messages' must be a table of [messages.NAME]")
    for message_name, message_table in message_tables.items():
        if not isinstance(message_table, dict):
            raise ConfigError(f"{where}: [messages.{message_name}] must be a table")
        unknown = sorted(set(message_table) - _MESSAGE_KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: [messages.{message_name}] has unknown keys "
                f"{', '.join(unknown)}; use {', '.join(sorted(_MESSAGE_KEYS))}"
            )
    loader = _Loader(where, dbc, message_tables, stale)
    facts = {}
    for fact, table in fact_tables.items():
        mapping = loader.fact(fact, table)
        if mapping is not None:
            facts[fact] = mapping
    unusable = [c for c in loader.checks if not c.usable]
    if unusable and reject_unusable:
        details = "; ".join(f"{c.fact} from {c.source}: {c.reason}" for c in unusable)
        raise ConfigError(
            f"{where}: {len(unusable)} mapped signals cannot be used: {details}. "
            f"Fix the profile or the DBC; 'vehicle-keysvc profile check {path}' "
            "lists every mapped signal"
        )

    for extra in sorted(set(message_tables) - loader.referenced):
        raise ConfigError(
            f"{where}: [messages.{extra}] is set but no fact reads that message"
        )

    messages = loader.messages
    e2e_protected = bool(messages) and all(m.e2e is not None for m in messages.values())
    declared = data.get("e2e_protected", e2e_protected)
    if declared != e2e_protected:
        raise ConfigError(
            f"{where}: e2e_protected = {declared} but the messages' e2e settings "
            f"say {e2e_protected}"
        )
    return Profile(
        name=name,
        path=path,
        database=dbc.database,
        messages=messages,
        facts=facts,
        stale_after_cycles=stale,
        e2e_protected=e2e_protected,
        notes=list(data.get("notes", [])),
        checks=loader.checks,
        undecodable=dict(dbc.undecodable),
    )
