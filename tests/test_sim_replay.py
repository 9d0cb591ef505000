"""Tests of CAN log replay with logs written by python-can."""

from __future__ import annotations

import time
from pathlib import Path

import can
import pytest

from sim.replay import replay_log

REAL_LOG = Path(__file__).resolve().parent / "data" / "keyofftokeyonandlocks.log"

RECORDED = [
    can.Message(
        timestamp=1000.000, arbitration_id=0x110, is_extended_id=False, data=b"\x01\x02"
    ),
    can.Message(
        timestamp=1000.010, arbitration_id=0x120, is_extended_id=False, data=b"\x03"
    ),
    can.Message(
        timestamp=1000.015,
        arbitration_id=0x7FF,
        is_extended_id=False,
        is_remote_frame=True,
        dlc=2,
    ),
    can.Message(
        timestamp=1000.020,
        arbitration_id=0x20000004,
        is_extended_id=True,
        is_error_frame=True,
    ),
    can.Message(
        timestamp=1000.250,
        arbitration_id=0x18DAF110,
        is_extended_id=True,
        data=bytes(range(8)),
    ),
    can.Message(
        timestamp=1001.000, arbitration_id=0x130, is_extended_id=False, data=b""
    ),
]
# The frames that replay sends: neither remote nor error frames.
DATA_FRAMES = [RECORDED[0], RECORDED[1], RECORDED[4], RECORDED[5]]


def write_log(path: Path, messages: list[can.Message]) -> Path:
    with can.Logger(str(path)) as logger:
        for msg in messages:
            logger.on_message_received(msg)
    return path


@pytest.fixture(params=["log", "asc"])
def recorded_log(request, tmp_path) -> Path:
    return write_log(tmp_path / f"recorded.{request.param}", RECORDED)


@pytest.mark.asyncio
async def test_replay_sends_data_frames_in_order(recorded_log):
    with can.LogReader(recorded_log) as reader:
        in_file = list(reader)
    sent: list[can.Message] = []
    count = await replay_log(recorded_log, sent.append, speed=100.0)

    assert sum(1 for m in in_file if m.is_remote_frame) == 1
    assert sum(1 for m in in_file if m.is_error_frame) == 1
    assert count == len(DATA_FRAMES)
    assert [(m.arbitration_id, m.is_extended_id, bytes(m.data)) for m in sent] == [
        (m.arbitration_id, m.is_extended_id, bytes(m.data)) for m in DATA_FRAMES
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize("speed", [10.0, 40.0])
async def test_replay_rebases_timestamps(recorded_log, speed):
    sent: list[can.Message] = []
    before = time.time()
    await replay_log(recorded_log, sent.append, speed=speed)

    first = sent[0].timestamp
    assert first >= before
    assert first < before + 5.0
    for msg, original in zip(sent, DATA_FRAMES, strict=True):
        expected_offset = (original.timestamp - DATA_FRAMES[0].timestamp) / speed
        assert msg.timestamp - first == pytest.approx(expected_offset, abs=1e-5)


@pytest.mark.asyncio
async def test_replay_recorded_timestamps_keep_spacing(recorded_log):
    sent: list[can.Message] = []
    before = time.time()
    await replay_log(recorded_log, sent.append, speed=40.0, recorded_timestamps=True)

    first = sent[0].timestamp
    assert first >= before
    for msg, original in zip(sent, DATA_FRAMES, strict=True):
        expected_offset = original.timestamp - DATA_FRAMES[0].timestamp
        assert msg.timestamp - first == pytest.approx(expected_offset, abs=1e-5)


@pytest.mark.asyncio
async def test_replay_calls_on_frame_after_sink(recorded_log):
    events: list[tuple[str, int]] = []
    await replay_log(
        recorded_log,
        lambda msg: events.append(("sink", msg.arbitration_id)),
        speed=100.0,
        on_frame=lambda msg: events.append(("on_frame", msg.arbitration_id)),
    )

    expected = []
    for msg in DATA_FRAMES:
        expected += [("sink", msg.arbitration_id), ("on_frame", msg.arbitration_id)]
    assert events == expected


@pytest.mark.asyncio
async def test_replay_real_log_counts():
    sent: list[can.Message] = []
    count = await replay_log(REAL_LOG, sent.append, speed=1000.0)

    assert count == 12874
    assert len(sent) == count
    assert sum(1 for msg in sent if msg.arbitration_id == 0x3B3) == 24
    assert sent[-1].timestamp - sent[0].timestamp == pytest.approx(
        8.759059 / 1000.0, abs=1e-6
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("speed", [0.0, -2.0, float("inf"), float("nan")])
async def test_replay_rejects_bad_speed(recorded_log, speed):
    with pytest.raises(ValueError, match="invalid speed"):
        await replay_log(recorded_log, lambda msg: None, speed=speed)


@pytest.mark.asyncio
async def test_replay_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        await replay_log(tmp_path / "missing.log", lambda msg: None)


@pytest.mark.asyncio
async def test_replay_empty_log_sends_nothing(tmp_path):
    empty = write_log(tmp_path / "empty.log", [])

    assert await replay_log(empty, lambda msg: None) == 0
