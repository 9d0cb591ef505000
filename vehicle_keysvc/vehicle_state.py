"""Vehicle state decoded from CAN frames, with E2E checks and ages.

Times are seconds on the clock of the frames (``can.Message.timestamp`` or a
replay's clock), never the wall clock of the process, so a replay at any
speed gives the same state at the same frame time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import can

from .e2e import E2EReceiver, E2EStatus
from .profile import FactMapping, MessageSettings, Profile, SignalSource

_LOGGER = logging.getLogger(__name__)


@dataclass
class FactReading:
    """The latest reading of one source of a fact.

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
    """One fact as seen at a given time: its reading plus age and freshness.

    For a fact with several sources, ``message``, ``signal`` and ``age``
    are those of the source that decided the view (the stale one, the
    invalid one, or the one whose value is used).
    """

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
    """A fact whose value or validity changed with a frame.

    ``source`` is the ``Message.Signal`` whose frame caused the change and
    ``e2e_status`` that frame's E2E result (None for unprotected messages).
    """

    fact: str
    old: Any
    new: Any
    problem: str | None
    timestamp: float
    source: str = ""
    e2e_status: E2EStatus | None = None


class _MessageDecoder:
    def __init__(self, profile: Profile, settings: MessageSettings) -> None:
        self.settings = settings
        self.message = profile.database.get_message_by_name(settings.name)
        self.sources: list[SignalSource] = [
            source
            for mapping in profile.facts.values()
            for source in mapping.sources
            if source.message == settings.name
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
            if self.message.is_multiplexed() and "multiplexer id" in str(err):
                # A selector value the DBC does not define: the frame carries
                # none of the mapped signals, which keep their last reading.
                return {}, None, None
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
    """Decodes frames of the profile's messages into VSS facts.

    Each source of a fact keeps its own reading and age, so a multiplexed
    signal ages by the frames that carry it, not by its message. The
    sources of a fact are combined when the state is viewed, because a
    source can go stale between frames.
    """

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._decoders: dict[tuple[int, bool], _MessageDecoder] = {}
        for settings in profile.messages.values():
            key = (settings.frame_id, settings.is_extended_id)
            self._decoders[key] = _MessageDecoder(profile, settings)
        self._source_readings: dict[SignalSource, FactReading] = {
            source: FactReading(fact, source.message, "+".join(source.signals))
            for fact, mapping in profile.facts.items()
            for source in mapping.sources
        }
        self.latest_time: float | None = None
        # Facts that the last processed frame carried a reading for. A frame
        # of a multiplexed message may carry none of its mapped signals.
        self.last_frame_facts: tuple[str, ...] = ()

    def process_frame(self, frame: can.Message, now: float) -> list[FactChange]:
        """Apply one frame received at ``now``; return the facts that changed."""
        if frame.is_error_frame or frame.is_remote_frame:
            return []
        self.last_frame_facts = ()
        decoder = self._decoders.get((frame.arbitration_id, frame.is_extended_id))
        if decoder is None:
            return []
        self.latest_time = now if self.latest_time is None else max(self.latest_time, now)
        data = bytes(frame.data)
        signals, status, frame_problem = decoder.decode(data, now)

        facts = {source.fact for source in decoder.sources}
        before = {fact: self._fact_view(fact, now) for fact in facts}
        updated: dict[str, SignalSource] = {}
        for source in decoder.sources:
            value, problem = None, frame_problem
            if problem is None:
                absent = [s for s in source.required_signals if s not in signals]
                if absent and not _cut_off(decoder, data, absent):
                    continue  # another multiplexer value: not in this frame
                if absent:
                    problem = (
                        f"{'+'.join(absent)} is missing from a "
                        f"{len(data)}-byte frame of {source.message}"
                    )
                else:
                    value, problem = source.convert(signals)
            reading = self._source_readings[source]
            reading.value = None if problem is not None else value
            reading.problem = problem
            reading.timestamp, reading.e2e_status = now, status
            updated.setdefault(source.fact, source)

        self.last_frame_facts = tuple(updated)
        changes = []
        for fact, source in updated.items():
            old, new = before[fact], self._fact_view(fact, now)
            if new.value != old.value or new.problem != old.problem:
                changes.append(FactChange(
                    fact, old.value, new.value, new.problem, now, source.name, status,
                ))
        return changes

    def poll_e2e(self, now: float) -> None:
        """Record NONEWDATA for E2E-protected messages with a cycle without frames.

        The fact keeps its last valid value until it is stale.
        """
        for decoder in self._decoders.values():
            if decoder.receiver is None or decoder.receiver.poll(now) is None:
                continue
            for source in decoder.sources:
                self._source_readings[source].e2e_status = E2EStatus.NO_NEW_DATA

    def view(self, now: float) -> dict[str, FactView]:
        """Return every fact with its age at time ``now``."""
        return {fact: self._fact_view(fact, now) for fact in self.profile.facts}

    def _source_view(self, source: SignalSource, now: float) -> FactView:
        reading = self._source_readings[source]
        age = None if reading.timestamp is None else max(0.0, now - reading.timestamp)
        return FactView(
            fact=source.fact,
            value=reading.value,
            problem=reading.problem,
            age=age,
            max_age=source.max_age,
            message=reading.message,
            signal=reading.signal,
        )

    def _fact_view(self, fact: str, now: float) -> FactView:
        mapping = self.profile.facts[fact]
        views = [self._source_view(source, now) for source in mapping.sources]
        if len(views) == 1:
            return views[0]
        if mapping.combine == "all":
            for view in views:
                if not view.fresh or view.problem is not None:
                    return view
            usable = views
        else:
            usable = [view for view in views if view.usable]
            if not usable:
                return views[0]
        chosen = usable[0]
        for other in usable[1:]:
            if not mapping.agree(chosen.value, other.value):
                problem = (
                    f"contradiction: {chosen.message}.{chosen.signal} is "
                    f"{chosen.value} but {other.message}.{other.signal} is {other.value}"
                )
                return replace(chosen, value=None, problem=problem)
        return chosen


def _cut_off(decoder: _MessageDecoder, data: bytes, absent: list[str]) -> bool:
    """Return True if a short frame cut off signals absent from its decoding.

    A signal is cut off when it decodes once the frame is padded to the DBC
    length. Otherwise the frame's multiplexer value does not carry it.
    """
    length = decoder.message.length
    if len(data) >= length:
        return False
    try:
        padded = decoder.message.decode(
            data + bytes(length - len(data)), decode_choices=False
        )
    except Exception:  # cantools raises several error types
        return False
    return any(signal in padded for signal in absent)
