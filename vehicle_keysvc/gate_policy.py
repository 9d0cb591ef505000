"""Named gate policies: extra vehicle conditions that single keys require.

A key created with the GenerateKey option ``gate_policy`` may sign only
while the default gate is unlocked and every condition of its policy holds.
Policies are defined in the service config, for example::

    [gate_policies.payment]
    "Vehicle.Speed" = { max = 0 }
    "Vehicle.Powertrain.Transmission.SelectedGear" = { values = ["P"] }

    [gate_policies.run-only]
    "Vehicle.LowVoltageSystemState" = { values = ["ON"] }

A condition lists the allowed VSS ``values``, or a ``min`` and/or ``max``
for a number (km/h for the speed). SelectedGear accepts its VSS numbers or
the letters P, R, N and D.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .gate import Decision, _unusable_reason
from .profile import FACT_TYPES, POWER_STATE, POWER_STATES, SELECTED_GEAR, Profile
from .vehicle_state import FactView

POLICY_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# VSS SelectedGear numbers of the selector positions.
GEAR_LETTERS = {"P": 126, "R": -1, "N": 0, "D": 127}


@dataclass(frozen=True)
class Condition:
    """Allowed values, or an allowed range, of one fact."""

    fact: str
    values: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def violation(self, value: Any) -> str | None:
        """Return why ``value`` breaks the condition, or None if it holds."""
        if self.values is not None and value not in self.values:
            allowed = ", ".join(str(v) for v in self.values)
            return f"{self.fact} is {value}, allowed: {allowed}"
        if self.minimum is not None and value < self.minimum:
            return f"{self.fact} is {value}, allowed minimum {self.minimum:g}"
        if self.maximum is not None and value > self.maximum:
            return f"{self.fact} is {value}, allowed maximum {self.maximum:g}"
        return None


@dataclass(frozen=True)
class GatePolicy:
    """A named set of conditions that must all hold for a key to be used."""

    name: str
    conditions: tuple[Condition, ...]

    @property
    def required(self) -> list[str]:
        """Facts the policy reads."""
        return [condition.fact for condition in self.conditions]

    def evaluate(self, views: Mapping[str, FactView]) -> Decision:
        """Lock when a fact is missing, stale or invalid, or breaks its condition."""
        readings = []
        for condition in self.conditions:
            view = views.get(condition.fact)
            if view is None:
                return Decision(
                    True, f"gate policy {self.name!r}: {condition.fact} is not provided"
                )
            problem = _unusable_reason(view) or condition.violation(view.value)
            if problem is not None:
                return Decision(True, f"gate policy {self.name!r}: {problem}")
            readings.append(f"{condition.fact} is {view.value}")
        return Decision(False, f"gate policy {self.name!r}: {', '.join(readings)}")

    def check_profile(self, profile: Profile) -> None:
        """Raise ConfigError if the profile does not map a fact the policy reads."""
        for fact in self.required:
            if fact not in profile.provided_facts:
                raise ConfigError(
                    f"[gate_policies.{self.name}] reads {fact}, but profile "
                    f"{profile.path} does not map it; remove the condition or "
                    "use a profile that maps the fact"
                )


def parse_policies(table: Mapping[str, Any]) -> dict[str, GatePolicy]:
    """Build the policies of a config's ``[gate_policies]`` table.

    Raises:
        ConfigError: a name, fact, key or value is invalid. The message
            names the policy and the fact.
    """
    policies = {}
    for name, conditions in table.items():
        where = f"[gate_policies.{name}]"
        if not POLICY_NAME_PATTERN.fullmatch(name):
            raise ConfigError(
                f"{where}: the policy name is invalid; use 1 to 64 letters, "
                "digits, '.', '_' or '-', starting with a letter or digit"
            )
        if not isinstance(conditions, dict) or not conditions:
            raise ConfigError(
                f"{where} must be a table with at least one condition, such as "
                '"Vehicle.Speed" = { max = 0 }'
            )
        parsed = tuple(
            _parse_condition(where, fact, spec) for fact, spec in conditions.items()
        )
        policies[name] = GatePolicy(name, parsed)
    return policies


def _parse_condition(where: str, fact: str, spec: Any) -> Condition:
    if fact not in FACT_TYPES:
        raise ConfigError(
            f"{where}: unknown fact {fact!r}; known facts are {', '.join(FACT_TYPES)}"
        )
    where = f'{where} "{fact}"'
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(
            f"{where} must be a table with values, min or max, such as "
            "{ values = [...] } or { max = 0 }"
        )
    unknown = set(spec) - {"values", "min", "max"}
    if unknown:
        raise ConfigError(
            f"{where} has unknown key(s) {', '.join(sorted(unknown))}; use values, "
            "min or max"
        )
    if "values" in spec and ({"min", "max"} & set(spec)):
        raise ConfigError(f"{where}: give either values or min/max, not both")

    if "values" in spec:
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: values must be a non-empty list")
        return Condition(fact, values=tuple(_fact_value(where, fact, v) for v in values))

    if FACT_TYPES[fact] not in (int, float):
        raise ConfigError(
            f"{where}: min and max apply only to numbers; {fact} needs values"
        )
    bounds = {}
    for key in ("min", "max"):
        if key in spec:
            number = spec[key]
            if not isinstance(number, (int, float)) or isinstance(number, bool):
                raise ConfigError(f"{where}: {key} must be a number, got {number!r}")
            bounds[key] = float(number)
    if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
        raise ConfigError(f"{where}: min {bounds['min']:g} is above max {bounds['max']:g}")
    return Condition(fact, minimum=bounds.get("min"), maximum=bounds.get("max"))


def _fact_value(where: str, fact: str, value: Any) -> Any:
    expected = FACT_TYPES[fact]
    if fact == SELECTED_GEAR and isinstance(value, str):
        if value not in GEAR_LETTERS:
            raise ConfigError(
                f"{where}: gear {value!r} is invalid; use P, R, N, D or a VSS "
                "gear number"
            )
        return GEAR_LETTERS[value]
    if fact == POWER_STATE and value not in POWER_STATES:
        raise ConfigError(
            f"{where}: {value!r} is not a VSS power state; use one of "
            f"{', '.join(POWER_STATES)}"
        )
    number_ok = expected is float and isinstance(value, int)
    if isinstance(value, bool) != (expected is bool) or not (
        isinstance(value, expected) or number_ok
    ):
        raise ConfigError(
            f"{where}: value {value!r} must be a {expected.__name__}"
        )
    return float(value) if expected is float else value
