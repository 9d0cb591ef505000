"""Tests of ``python -m sim serve`` run as a separate process."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import can
import cantools
import pytest

REPO = Path(__file__).resolve().parent.parent
DATABASE = cantools.database.load_file(str(REPO / "dbc" / "vehicle.dbc"), strict=True)
REAL_LOG = Path("tests") / "data" / "keyofftokeyonandlocks.log"
STEP_LINE = re.compile(r"^t=[ \d]{2}\d\.\ds  \S.*$")


async def start_sim(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sim",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_port(process: asyncio.subprocess.Process) -> int:
    assert process.stdout is not None
    first = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    match = re.fullmatch(r"LISTENING 127\.0\.0\.1 (\d+)\n", first)
    assert match, first
    return int(match.group(1))


async def read_until(process: asyncio.subprocess.Process, text: str) -> list[str]:
    assert process.stdout is not None
    lines = []
    while not lines or text not in lines[-1]:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line, f"output ended before {text!r}: {lines}"
        lines.append(line.decode().rstrip("\n"))
    return lines


async def stop_sim(
    process: asyncio.subprocess.Process, signum: int
) -> tuple[int, str, str]:
    process.send_signal(signum)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def kill_if_running(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await process.communicate()


def receive_until(
    bus: can.BusABC, done: Callable[[list[can.Message]], bool], timeout: float = 20.0
) -> list[can.Message]:
    frames: list[can.Message] = []
    deadline = time.monotonic() + timeout
    while not done(frames) and time.monotonic() < deadline:
        frame = bus.recv(0.1)
        if frame is not None:
            frames.append(frame)
    return frames


def power_modes(frames: list[can.Message]) -> list[str]:
    return [
        DATABASE.decode_message(0x110, frame.data)["PowerMode"]
        for frame in frames
        if frame.arbitration_id == 0x110
    ]


@pytest.mark.asyncio
async def test_serve_drive_runs_until_sigterm():
    process = await start_sim("serve", "--port", "0", "drive", "--speed", "10")
    bus = None
    try:
        port = await read_port(process)
        bus = await asyncio.to_thread(
            can.Bus,
            interface="socketcand",
            host="127.0.0.1",
            port=port,
            channel="vcan0",
        )
        step_lines = await read_until(process, "ignition RUN")
        frames = await asyncio.to_thread(
            receive_until, bus, lambda got: "RUN" in power_modes(got)
        )
        returncode, rest, errors = await stop_sim(process, signal.SIGTERM)
    finally:
        if bus is not None:
            await asyncio.to_thread(bus.shutdown)
        await kill_if_running(process)

    assert returncode == 0, errors
    assert step_lines[0] == "t=  0.0s  parked, locked, alarm ARMED, power OFF"
    assert step_lines[-1] == "t=  4.0s  ignition RUN"
    for line in step_lines + rest.splitlines():
        assert STEP_LINE.match(line), line
    assert "RUN" in power_modes(frames)
    assert errors == ""


@pytest.mark.asyncio
async def test_serve_replay_stops_on_sigint():
    process = await start_sim(
        "serve", "--port", "0", "replay", str(REAL_LOG), "--speed", "20", "--loop"
    )
    bus = None
    try:
        port = await read_port(process)
        bus = await asyncio.to_thread(
            can.Bus,
            interface="socketcand",
            host="127.0.0.1",
            port=port,
            channel="vcan0",
        )
        frames = await asyncio.to_thread(
            receive_until, bus, lambda got: any(f.arbitration_id == 0x3B3 for f in got)
        )
        returncode, _, errors = await stop_sim(process, signal.SIGINT)
    finally:
        if bus is not None:
            await asyncio.to_thread(bus.shutdown)
        await kill_if_running(process)

    assert returncode == 0, errors
    assert any(frame.arbitration_id == 0x3B3 for frame in frames)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--port", "0", "drive", "--speed", "0"], "expected a number > 0"),
        (["serve", "--port", "0", "replay", "missing.log"], "log file not found"),
        (["serve", "--port", "0"], "required"),
    ],
)
def test_serve_rejects_bad_arguments(args, message):
    result = subprocess.run(
        [sys.executable, "-m", "sim", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert message in result.stderr
    assert "LISTENING" not in result.stdout
