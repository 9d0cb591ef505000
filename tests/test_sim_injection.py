"""Faults the simulator injects, each with the gate result it must cause.

Frames are encoded by the reference vehicle with cantools and fed to a
monitor with explicit times, so no test sleeps. The reference profile has
max_counter_delta 1, sync_frames 2 and debounce_frames 3.
"""

from __future__ import annotations

import pytest

from conftest import REFERENCE_PROFILE
from sim.traffic import UnrelatedTraffic, burst, unrelated_ids
from sim.vehicle import ReferenceVehicle
from vehicle_keysvc.e2e import E2EStatus
from vehicle_keysvc.monitor import LockEvent, VehicleMonitor
from vehicle_keysvc.profile import POWER_STATE, load_profile

POWER_MESSAGE = "VCU_PowerMode"


@pytest.fixture(scope="module")
def profile():
    return load_profile(REFERENCE_PROFILE)


class Drive:
    """A monitor fed by a reference vehicle, with every lock event recorded."""

    def __init__(self, profile, power_mode: str = "RUN") -> None:
        self.monitor = VehicleMonitor(profile)
        self.vehicle = ReferenceVehicle()
        self.vehicle.set(power_mode=power_mode, alarm="DISARMED")
        self.events: list[LockEvent] = []
        self.monitor.add_listener(
            lambda e: self.events.append(e) if isinstance(e, LockEvent) else None
        )
        self.now = 0.0
        self.power_statuses: list[E2EStatus | None] = []

    def run(self, seconds: float, extra=None) -> None:
        """Advance in 10 ms steps; ``extra(now)`` returns frames to add."""
        end = self.now + seconds
        while self.now < end:
            # Forged frames are built first, so they can use the counter that
            # the genuine frame of this step will carry.
            frames = extra(self.now) if extra is not None else []
            frames += self.vehicle.due_frames(self.now)
            for frame in frames:
                self.monitor.on_frame(frame, self.now)
                if frame.arbitration_id == 0x110:
                    self.power_statuses.append(self.power_status())
            self.monitor.tick(self.now)
            self.now = round(self.now + 0.01, 6)

    def power_status(self) -> E2EStatus | None:
        receiver = self.monitor.state._decoders[(0x110, False)].receiver
        assert receiver is not None
        return receiver.status

    def locks_since(self, index: int) -> list[LockEvent]:
        return [e for e in self.events[index:] if e.lock_changed and e.decision.locked]


def test_one_dropped_frame_is_oksomelost(profile) -> None:
    drive = Drive(profile)
    drive.run(1.0)
    assert drive.monitor.locked is False
    mark, before = len(drive.events), len(drive.power_statuses)

    drive.vehicle.drop(POWER_MESSAGE)
    drive.run(0.5)

    assert E2EStatus.OK_SOME_LOST in drive.power_statuses[before:]
    assert drive.locks_since(mark) == []
    assert drive.monitor.locked is False


def test_many_dropped_frames_lock_until_resync(profile) -> None:
    drive = Drive(profile)
    drive.run(1.0)
    mark, before = len(drive.events), len(drive.power_statuses)

    drive.vehicle.drop(POWER_MESSAGE, count=5)
    drive.run(0.5)
    locks = drive.locks_since(mark)
    drive.run(1.0)

    assert len(locks) == 1
    assert "is stale" in locks[0].decision.reason
    statuses = drive.power_statuses[before:]
    # More than max_no_new_data cycles without a frame: sync again first.
    assert statuses[:3] == [E2EStatus.INITIAL, E2EStatus.SYNC, E2EStatus.OK]
    assert drive.monitor.locked is False


def test_repeated_frame_locks_at_once(profile) -> None:
    drive = Drive(profile)
    drive.run(1.0)
    mark = len(drive.events)

    drive.vehicle.repeat(POWER_MESSAGE)
    drive.run(0.1)
    locks = drive.locks_since(mark)
    drive.run(1.0)

    assert len(locks) == 1
    assert "VCU_PowerMode failed its E2E check (REPEATED)" in locks[0].decision.reason
    assert drive.monitor.locked is False


def test_counter_jump_locks_and_resyncs(profile) -> None:
    drive = Drive(profile)
    drive.run(1.0)
    mark, before = len(drive.events), len(drive.power_statuses)

    drive.vehicle.jump_counter(POWER_MESSAGE, by=5)
    drive.run(0.1)
    locks = drive.locks_since(mark)
    drive.run(1.0)

    assert len(locks) == 1
    assert "(WRONGSEQUENCE)" in locks[0].decision.reason
    statuses = drive.power_statuses[before:]
    assert statuses[:3] == [E2EStatus.WRONG_SEQUENCE, E2EStatus.SYNC, E2EStatus.OK]
    assert drive.monitor.locked is False


def test_bad_crc_locks_until_confirmed(profile) -> None:
    drive = Drive(profile)
    drive.run(1.0)
    mark = len(drive.events)

    drive.vehicle.inject("bad_crc", POWER_MESSAGE)
    drive.run(0.5)
    locked_reason = drive.monitor.decision.reason
    drive.vehicle.clear_faults()
    drive.run(0.15)
    still_locked = drive.monitor.locked
    drive.run(0.5)

    assert len(drive.locks_since(mark)) == 1
    assert "VCU_PowerMode failed its E2E check (ERROR)" in locked_reason
    # Two valid frames after the fault are fewer than debounce_frames.
    assert still_locked is True
    assert drive.monitor.locked is False


def test_spoof_wrong_counter_never_unlocks(profile) -> None:
    drive = Drive(profile, power_mode="OFF")

    def forged(now: float) -> list:
        return [drive.vehicle.spoof(POWER_MESSAGE, "RUN", 8, now)]

    drive.run(2.0, extra=forged)

    unlocks = [e for e in drive.events if not e.decision.locked]
    assert unlocks == []
    assert drive.monitor.locked is True
    assert E2EStatus.WRONG_SEQUENCE in drive.power_statuses


def test_spoof_right_counter_never_unlocks(profile) -> None:
    drive = Drive(profile, power_mode="OFF")
    genuine_due = {0.0}

    def forged(now: float) -> list:
        # One forged RUN frame just before each genuine frame, with the
        # counter the genuine frame will carry.
        if any(abs(now - due) < 1e-6 for due in genuine_due):
            genuine_due.add(round(now + 0.1, 6))
            return [drive.vehicle.spoof(POWER_MESSAGE, "RUN", 0, now)]
        return []

    drive.run(2.0, extra=forged)

    unlocks = [e for e in drive.events if not e.decision.locked]
    assert unlocks == []
    assert E2EStatus.REPEATED in drive.power_statuses


def test_spoof_burst_unlocks_until_next_genuine(profile) -> None:
    # NOTE: E2E does not authenticate. A node that sends debounce_frames
    # well-formed frames of every gated message between two genuine frames
    # unlocks the keys until the next genuine frame breaks the sequence.
    drive = Drive(profile, power_mode="OFF")
    drive.run(1.0)
    assert drive.monitor.locked is True
    mark = len(drive.events)

    def forged(now: float) -> list:
        if abs(now - 1.05) > 1e-6:
            return []
        frames = []
        for offset in range(3):
            frames.append(drive.vehicle.spoof(POWER_MESSAGE, "RUN", offset, now))
            frames.append(drive.vehicle.spoof("BCM_AlarmState", "DISARMED", offset, now))
        return frames

    drive.run(0.2, extra=forged)

    changes = [e.decision.locked for e in drive.events[mark:] if e.lock_changed]
    assert changes == [False, True]
    assert "(WRONGSEQUENCE)" in drive.monitor.decision.reason
    assert drive.monitor.locked is True


def test_spoof_of_power_alone_never_unlocks(profile) -> None:
    # Facts count towards unlocking only while the gate allows use, so the
    # genuine alarm frames seen while the power was OFF confirm nothing.
    drive = Drive(profile, power_mode="OFF")
    drive.run(1.0)
    mark = len(drive.events)

    def forged(now: float) -> list:
        if abs(now - 1.05) > 1e-6:
            return []
        return [drive.vehicle.spoof(POWER_MESSAGE, "RUN", k, now) for k in range(3)]

    drive.run(0.2, extra=forged)

    assert [e for e in drive.events[mark:] if not e.decision.locked] == []
    assert drive.monitor.locked is True


def test_silence_locks_as_stale(profile) -> None:
    drive = Drive(profile)
    drive.run(1.0)

    drive.vehicle.inject("silence")
    drive.run(0.5)

    assert drive.monitor.locked is True
    assert "is stale" in drive.monitor.decision.reason


def test_unrelated_burst_keeps_unlocked(profile) -> None:
    drive = Drive(profile)
    drive.run(1.0)
    mark = len(drive.events)
    ids = unrelated_ids(200)

    drive.run(1.0, extra=lambda now: burst(500, now, ids))

    assert drive.locks_since(mark) == []
    assert drive.monitor.locked is False
    assert drive.monitor.view(drive.now)[POWER_STATE].value == "ON"


def test_unrelated_traffic_rate() -> None:
    traffic = UnrelatedTraffic(rate=8000.0)
    count = sum(len(traffic.due_frames(t / 1000.0)) for t in range(0, 1001))
    assert count == 8000
    assert all(i not in (0x110, 0x120, 0x130, 0x140, 0x150) for i in traffic.ids)


@pytest.mark.parametrize(
    "method,arguments",
    [("drop", (POWER_MESSAGE, 0)), ("repeat", (POWER_MESSAGE, -1)),
     ("jump_counter", (POWER_MESSAGE, 0)), ("drop", ("VCU_Power", 1))],
)
def test_injection_rejects_bad_arguments(method: str, arguments) -> None:
    with pytest.raises(ValueError):
        getattr(ReferenceVehicle(), method)(*arguments)
