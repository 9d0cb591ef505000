"""The gate: decides from the vehicle state whether keys may be used.

Fail closed: a fact the gate reads that is missing, stale, invalid or failed
its E2E check locks the keys, and so does any value that is not explicitly
allowed. The reason names the fact and the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ConfigError
from .profile import ALARM_ACTIVE, POWER_STATE, Profile
from .vehicle_state import FactView

# Power states in which keys may be used.
UNLOCKED_POWER_STATES = frozenset({"ACC", "ON"})


@dataclass(frozen=True)
class Decision:
    """Outcome of one gate evaluation."""

    locked: bool
    reason: str


class Gate:
    """Default gate policy.

    Keys are unlocked only while the power state is ACC or ON, the alarm is
    not active, and both facts are fresh and valid. A profile that does not
    provide the alarm fact is gated on the power state alone.
    """

    def __init__(self, profile: Profile) -> None:
        if POWER_STATE not in profile.provided_facts:
            raise ConfigError(
                f"profile {profile.path} does not map {POWER_STATE}; the gate "
                "needs it to decide when keys may be used"
            )
        self.required = [f for f in (POWER_STATE, ALARM_ACTIVE) if f in profile.facts]

    def evaluate(self, views: Mapping[str, FactView]) -> Decision:
        for fact in self.required:
            problem = _unusable_reason(views[fact])
            if problem is not None:
                return Decision(True, problem)

        power = views[POWER_STATE].value
        if power not in UNLOCKED_POWER_STATES:
            return Decision(True, f"{POWER_STATE} is {power}")
        if ALARM_ACTIVE in views and views[ALARM_ACTIVE].value is not False:
            return Decision(True, f"{ALARM_ACTIVE} is {views[ALARM_ACTIVE].value}")

        reason = f"{POWER_STATE} is {power}"
        if ALARM_ACTIVE in views:
            reason += f", {ALARM_ACTIVE} is False"
        return Decision(False, reason)


def _unusable_reason(view: FactView) -> str | None:
    if view.age is None:
        return f"{view.fact}: no frame of {view.message} received yet"
    if view.age > view.max_age:
        # The text must not change while the fact stays stale, or every tick
        # would publish a new lock reason.
        return (
            f"{view.fact} is stale: no {view.message} frame for more than "
            f"{view.max_age:.2f} s"
        )
    if view.problem is not None:
        return f"{view.fact} is invalid: {view.problem}"
    return None
