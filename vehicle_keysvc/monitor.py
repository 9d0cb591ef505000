"""Vehicle monitor: feeds frames to the vehicle state and re-runs the gate.

The monitor keeps the current gate decision. It is driven by two calls,
``on_frame`` for each received frame and ``tick`` between frames, both with
the time on the frames' clock, so a live bus and a replay behave the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import can

from .bus_errors import describe_error_frame
from .gate import Decision, Gate
from .profile import Profile
from .vehicle_state import FactChange, FactView, VehicleState

if TYPE_CHECKING:
    from .gate_policy import GatePolicy

_LOGGER = logging.getLogger(__name__)

# Consecutive valid frames of each gated fact needed before keys unlock.
DEFAULT_DEBOUNCE_FRAMES = 3


@dataclass(frozen=True)
class LockEvent:
    """The gate decision changed: locked flipped, or its reason changed."""

    decision: Decision
    timestamp: float
    lock_changed: bool


Event = LockEvent | FactChange
Listener = Callable[[Event], None]


class FrameClock:
    """Clock that follows the timestamps of received frames.

    Between frames it advances with the monotonic clock of this process, so
    a silent bus still ages its facts. It never runs backwards.
    """

    def __init__(self) -> None:
        self._frame_time: float | None = None
        self._observed_at = 0.0

    def observe(self, frame_time: float) -> float:
        now = self.now()
        if self._frame_time is None or frame_time > now:
            self._frame_time = frame_time
            self._observed_at = time.monotonic()
            return frame_time
        return now

    def now(self) -> float:
        if self._frame_time is None:
            return time.time()
        return self._frame_time + (time.monotonic() - self._observed_at)


class GatePolicyLike(Protocol):
    """The default Gate or a named GatePolicy."""

    @property
    def required(self) -> list[str]: ...

    def evaluate(self, views: Mapping[str, FactView]) -> Decision: ...


class DebouncedGate:
    """Decision of one gate or gate policy, unlocked only after confirmation.

    Lock is immediate, so the first evaluation that forbids use locks. Unlock
    waits until every fact the gate reads came in ``debounce_frames``
    consecutive valid frames while the gate allowed use. A frame that
    forbids use, a stale fact or a bus fault starts the count again.
    """

    def __init__(self, gate: GatePolicyLike, debounce_frames: int) -> None:
        self.gate = gate
        self.debounce_frames = debounce_frames
        self.decision = Decision(True, "no vehicle state received yet")
        # Incremented on every change to locked, so a request that started
        # while unlocked can tell that a lock happened while it ran.
        self.lock_epoch = 0
        self._confirmed = dict.fromkeys(gate.required, 0)

    def reset(self) -> None:
        for fact in self._confirmed:
            self._confirmed[fact] = 0

    def update(
        self,
        views: Mapping[str, FactView],
        frame_facts: tuple[str, ...],
        fault: str | None,
    ) -> Decision:
        """Evaluate after a frame carrying ``frame_facts``, or a tick if empty."""
        if fault is not None:
            self.reset()
            return Decision(True, f"CAN bus fault: {fault}")
        decision = self.gate.evaluate(views)
        if decision.locked:
            self.reset()
            return decision
        for fact in frame_facts:
            if fact in self._confirmed:
                self._confirmed[fact] += 1
        if self.decision.locked:
            for fact, frames in self._confirmed.items():
                if frames < self.debounce_frames:
                    return Decision(
                        True,
                        f"{fact} is not yet confirmed by {self.debounce_frames} "
                        "consecutive valid frames",
                    )
        return decision


class VehicleMonitor:
    """Current vehicle state and gate decisions, with change listeners.

    ``gate`` is the default gate that every key needs. ``policies`` are the
    named gate policies that single keys need in addition.
    """

    def __init__(
        self,
        profile: Profile,
        gate: Gate | None = None,
        clock: FrameClock | None = None,
        debounce_frames: int = DEFAULT_DEBOUNCE_FRAMES,
        policies: Mapping[str, GatePolicy] | None = None,
    ) -> None:
        if debounce_frames < 1:
            raise ValueError(f"debounce_frames {debounce_frames} is below 1")
        self.profile = profile
        self.clock = clock or FrameClock()
        self.state = VehicleState(profile)
        self.gate = gate or Gate(profile)
        self._default = DebouncedGate(self.gate, debounce_frames)
        self.policies: dict[str, DebouncedGate] = {}
        for name, policy in (policies or {}).items():
            policy.check_profile(profile)
            self.policies[name] = DebouncedGate(policy, debounce_frames)
        self._facts_by_id: dict[tuple[int, bool], tuple[str, ...]] = {}
        for settings in profile.messages.values():
            self._facts_by_id[(settings.frame_id, settings.is_extended_id)] = (
                profile.facts_in_message(settings.name)
            )
        self.bus_fault: str | None = None  # reason of the current bus fault
        self._listeners: list[Listener] = []
        self._last_time: float | None = None

    @property
    def decision(self) -> Decision:
        return self._default.decision

    @property
    def lock_epoch(self) -> int:
        return self._default.lock_epoch

    @property
    def locked(self) -> bool:
        return self.decision.locked

    def policy_decision(self, name: str) -> Decision:
        """Return the decision of a named gate policy, a lock if it is undefined."""
        state = self.policies.get(name)
        if state is None:
            return Decision(
                True,
                f"gate policy {name!r} is not defined in the config; define "
                f"[gate_policies.{name}] or create the key again",
            )
        return state.decision

    def policy_epoch(self, name: str) -> int:
        state = self.policies.get(name)
        return state.lock_epoch if state is not None else -1

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def current_time(self) -> float:
        return self.clock.now()

    def on_frame(self, frame: can.Message, now: float | None = None) -> None:
        """Apply a frame received at ``now`` (seconds on the frames' clock).

        Without ``now``, the frame's own timestamp drives the clock. An error
        frame is a bus fault and locks at once.
        """
        if now is None:
            now = self.clock.observe(frame.timestamp or self.clock.now())
        if frame.is_error_frame:
            self.report_bus_fault(describe_error_frame(frame), now)
            return
        frame_facts = self._facts_by_id.get(
            (frame.arbitration_id, frame.is_extended_id), ()
        )
        if not frame_facts:
            # A frame the profile does not read changes no fact, and the
            # ticker re-runs the gate for the passing time.
            return
        changes = self.state.process_frame(frame, now)
        if frame_facts and self.bus_fault is not None:
            _LOGGER.info(
                "CAN bus fault over (%s): frames of the profile received again",
                self.bus_fault,
            )
            self.bus_fault = None
        for change in changes:
            self._notify(change)
        # A frame of a multiplexed message may carry none of its mapped signals,
        # so only the facts it carried count towards the debounce.
        self._evaluate(now, self.state.last_frame_facts)

    def report_bus_fault(self, reason: str, now: float | None = None) -> None:
        """Lock at once for a CAN bus fault until frames of the profile arrive again.

        Unlocking then needs the usual confirmation by consecutive valid frames.
        """
        self.bus_fault = reason
        self._evaluate(self.clock.now() if now is None else now, ())

    def tick(self, now: float) -> Decision:
        """Re-run the gate at time ``now``; lock at once if it forbids use."""
        self.state.poll_e2e(now)
        return self._evaluate(now, ())

    def _evaluate(self, now: float, frame_facts: tuple[str, ...]) -> Decision:
        self._last_time = now
        views = self.state.view(now)
        for name, state in self.policies.items():
            decision = state.update(views, frame_facts, self.bus_fault)
            if self._apply(state, decision):
                _LOGGER.info(
                    "keys with gate policy %r %s: %s", name,
                    "locked" if decision.locked else "unlocked", decision.reason,
                )
        decision = self._default.update(views, frame_facts, self.bus_fault)
        previous = self._default.decision
        if decision == previous:
            return decision
        lock_changed = self._apply(self._default, decision)
        if lock_changed:
            _LOGGER.info(
                "keys %s: %s",
                "locked" if decision.locked else "unlocked",
                decision.reason,
            )
        self._notify(LockEvent(decision, now, lock_changed))
        return decision

    def replace_settings(self, fresh: VehicleMonitor, profile_changed: bool) -> None:
        """Take the profile, gates and debounce settings of ``fresh``, on a reload.

        Listeners, the clock and the current decisions stay, so the next
        evaluation reports any lock as a change. Unless the profile changed,
        the decoded state and the confirmations of the default gate and of
        each unchanged gate policy stay too, so unlocked keys stay unlocked.
        A new profile or a changed gate policy starts unconfirmed: its keys
        lock and unlock again after the usual confirmation.
        """
        if profile_changed:
            _carry_decision(self._default, fresh._default)
            self.profile = fresh.profile
            self.state = fresh.state
            self.gate = fresh.gate
            self._default = fresh._default
            self._facts_by_id = fresh._facts_by_id
        else:
            self._default.debounce_frames = fresh._default.debounce_frames
        policies = {}
        for name, new_state in fresh.policies.items():
            old_state = self.policies.get(name)
            if old_state is not None and not profile_changed and old_state.gate == new_state.gate:
                old_state.debounce_frames = new_state.debounce_frames
                policies[name] = old_state
                continue
            if old_state is not None:
                # Locked even if the new conditions hold now, because the
                # facts they read were not confirmed under them.
                new_state.lock_epoch = old_state.lock_epoch + (0 if old_state.decision.locked else 1)
                new_state.decision = Decision(
                    True, f"gate policy {name!r} changed by a reload; waiting for "
                    "confirmation by consecutive valid frames"
                )
                if not old_state.decision.locked:
                    _LOGGER.info("keys with gate policy %r locked: %s", name,
                                 new_state.decision.reason)
            policies[name] = new_state
        self.policies = policies
        if profile_changed:
            # Evaluate at once, because the carried decision may be unlocked
            # and a reload that reopens the CAN interface runs no tick meanwhile.
            self._evaluate(self.current_time(), ())

    @staticmethod
    def _apply(state: DebouncedGate, decision: Decision) -> bool:
        """Store a decision and return whether locked changed."""
        previous, state.decision = state.decision, decision
        lock_changed = decision.locked != previous.locked
        if lock_changed and decision.locked:
            state.lock_epoch += 1
        return lock_changed

    def view(self, now: float | None = None) -> dict[str, FactView]:
        if now is None:
            now = self._last_time if self._last_time is not None else 0.0
        return self.state.view(now)

    def _notify(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                _LOGGER.exception("vehicle state listener failed on %s", event)


def _carry_decision(old: DebouncedGate, new: DebouncedGate) -> None:
    """Give a replacement gate state the current decision and lock epoch."""
    new.decision = old.decision
    new.lock_epoch = old.lock_epoch
