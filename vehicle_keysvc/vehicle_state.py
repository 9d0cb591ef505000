"""Vehicle state decoded from CAN frames, with E2E checks and ages.

Times are seconds on the clock of the frames (``can.Message.timestamp`` or a
replay's clock), never the wall clock of the process, so a replay at any
speed gives the same state at the same frame time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import can

from .e2e import E2EReceiver, E2EStatus
from .profile import FactMapping, MessageSettings, Profile

_LOGGER = logging.getLogger(__name__)


@dataclass
class FactReading:
    """The latest reading of one fact.

    ``value`` is None whenever ``problem`` is set: a value that failed a
    check is never reported as state.
    """

    fact: str
    message: str
    signal: str
    value: Any = None
    problem: str | None = "no frame received yet"
    timestamp: float | None = None
    e2e_status: E2EStatus | None = None


@dataclass(frozen=True)
class FactView:
    """One fact as seen at a given time: its reading plus age and freshness."""

    fact: str
    value: Any
    problem: str | None
    age: float | None  # seconds since the last frame, None if never received
    max_age: float  # seconds after which the fact is stale
    message: str
    signal: str

    @property
    def received(self) -> bool:
        return self.age is not None

    @property
    def fresh(self) -> bool:
        return self.age is not None and self.age <= self.max_age

    @property
    def usable(self) -> bool:
        return self.fresh and self.problem is None


@dataclass(frozen=True)
class FactChange:
    """A fact whose value or validity changed with a frame."""

    fact: str
    old: Any
    new: Any
    problem: str | None
    timestamp: float


class _MessageDecoder:
    def __init__(self, profile: Profile, settings: MessageSettings) -> None:
        self.settings = settings
        self.message = profile.database.get_message_by_name(settings.name)
        self.mappings: list[FactMapping] = [
            m for m in profile.facts.values() if m.message == settings.name
        ]
        self.receiver: E2EReceiver | None = None
        if settings.e2e is not None:
            self.receiver = E2EReceiver(
                settings.e2e.data_id,
                settings.e2e.crc_byte,
                settings.e2e.max_counter_delta,
                cycle_time=settings.cycle_time,
                sync_frames=settings.e2e.sync_frames,
                max_no_new_data=settings.e2e.max_no_new_data,
            )

    def decode(
        self, data: bytes, now: float | None = None
    ) -> tuple[dict[str, Any], E2EStatus | None, str | None]:
        """Decode a frame received at ``now`` and run its E2E check.

        Returns the signals, the E2E status and a problem. Only E2E status OK
        and OKSOMELOST leave the problem empty.
        """
        try:
            signals = self.message.decode(
                data, decode_choices=True, allow_truncated=True
            )
        except Exception as err:  # cantools raises several error types
            return {}, None, f"frame of {self.settings.name} cannot be decoded: {err}"
        if self.receiver is None:
            return dict(signals), None, None

        e2e = self.settings.e2e
        assert e2e is not None
        if e2e.counter_signal not in signals or e2e.crc_signal not in signals:
            return {}, E2EStatus.ERROR, (
                f"frame of {self.settings.name} is too short for its E2E fields"
            )
        status = self.receiver.check(
            bytes(data),
            int(signals[e2e.counter_signal]),
            int(signals[e2e.crc_signal]),
            now,
        )
        if status.valid:
            return dict(signals), status, None
        if status in (E2EStatus.INITIAL, E2EStatus.SYNC):
            problem = (
                f"{self.settings.name} E2E counter not yet confirmed ({status.value})"
            )
        else:
            problem = f"{self.settings.name} failed its E2E check ({status.value})"
        return dict(signals), status, problem


class VehicleState:
    """Decodes frames of the profile's messages into VSS facts."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._decoders: dict[tuple[int, bool], _MessageDecoder] = {}
        for settings in profile.messages.values():
            key = (settings.frame_id, settings.is_extended_id)
            self._decoders[key] = _MessageDecoder(profile, settings)
        self._readings = {
            fact: FactReading(fact, mapping.message, mapping.signal)
            for fact, mapping in profile.facts.items()
        }
        self.latest_time: float | None = None

    def process_frame(self, frame: can.Message, now: float) -> list[FactChange]:
        """Apply one frame received at ``now``; return the facts that changed."""
        if frame.is_error_frame or frame.is_remote_frame:
            return []
        decoder = self._decoders.get((frame.arbitration_id, frame.is_extended_id))
        if decoder is None:
            return []
        self.latest_time = now if self.latest_time is None else max(self.latest_time, now)
        signals, status, frame_problem = decoder.decode(bytes(frame.data), now)

        changes = []
        for mapping in decoder.mappings:
            reading = self._readings[mapping.fact]
            old_value, old_problem = reading.value, reading.problem
            value, problem = None, frame_problem
            if problem is None:
                if mapping.signal not in signals:
                    problem = (
                        f"{mapping.signal} is missing from a "
                        f"{len(frame.data)}-byte frame of {mapping.message}"
                    )
                else:
                    value, problem = mapping.convert(signals[mapping.signal])
                    if problem is not None:
                        problem = f"{mapping.signal}: {problem}"
            if problem is not None:
                value = None
            reading.value, reading.problem = value, problem
            reading.timestamp, reading.e2e_status = now, status
            if value != old_value or problem != old_problem:
                changes.append(FactChange(mapping.fact, old_value, value, problem, now))
        return changes

    def poll_e2e(self, now: float) -> None:
        """Record NONEWDATA for E2E-protected messages with a cycle without frames.

        The fact keeps its last valid value until it is stale.
        """
        for decoder in self._decoders.values():
            if decoder.receiver is None or decoder.receiver.poll(now) is None:
                continue
            for mapping in decoder.mappings:
                self._readings[mapping.fact].e2e_status = E2EStatus.NO_NEW_DATA

    def view(self, now: float) -> dict[str, FactView]:
        """Return every fact with its age at time ``now``."""
        views = {}
        for fact, reading in self._readings.items():
            settings = self.profile.messages[reading.message]
            age = None if reading.timestamp is None else max(0.0, now - reading.timestamp)
            views[fact] = FactView(
                fact=fact,
                value=reading.value,
                problem=reading.problem,
                age=age,
                max_age=settings.cycle_time * self.profile.stale_after_cycles,
                message=reading.message,
                signal=reading.signal,
            )
        return views
