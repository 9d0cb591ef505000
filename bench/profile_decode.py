"""Measure how fast each car profile decodes its real recordings.

Every shipped profile and recording is measured in one run, side by side.
The script reports the frames per second through
``VehicleState.process_frame`` (every frame of the recording, mapped or
not) and the p99 time of one mapped frame. It also reports how many times
faster than real time a full ``replay`` (state plus gate ticks every 20 ms)
runs. Each figure is the median over ``--runs`` runs, because the machine
is shared.

Usage: .venv/bin/python bench/profile_decode.py [--runs 7]
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path

from vehicle_keysvc.profile import load_profile
from vehicle_keysvc.replay import read_frames, replay
from vehicle_keysvc.vehicle_state import VehicleState

REPO = Path(__file__).resolve().parent.parent
CASES = [
    ("ford_gt350", "keyofftokeyonandlocks.log"),
    ("ford_gt350", "2reverselog.trc"),
    ("chevrolet_camaro", "engineon.log"),
    ("chevrolet_camaro", "reverse.log"),
    ("scion", "startupcold.log"),
    ("subaru_wrx", "allgears.log"),
    ("hyundai_genesis", "mphloggenesis.log"),
]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def measure(profile_name: str, log: str, runs: int) -> dict[str, float]:
    profile = load_profile(REPO / "dbc" / f"{profile_name}.profile.toml")
    frames = list(read_frames(REPO / "tests" / "data" / log))
    mapped_ids = {(m.frame_id, m.is_extended_id) for m in profile.messages.values()}
    duration = frames[-1].timestamp - frames[0].timestamp

    rates, p99s, speedups = [], [], []
    for _ in range(runs):
        state = VehicleState(profile)
        per_frame = []
        start = time.perf_counter()
        for frame in frames:
            before = time.perf_counter_ns()
            state.process_frame(frame, frame.timestamp)
            if (frame.arbitration_id, frame.is_extended_id) in mapped_ids:
                per_frame.append(time.perf_counter_ns() - before)
        elapsed = time.perf_counter() - start
        rates.append(len(frames) / elapsed)
        p99s.append(statistics.quantiles(per_frame, n=100)[98] / 1000.0)

        start = time.perf_counter()
        replay(profile, frames)
        speedups.append(duration / (time.perf_counter() - start))
    mapped = sum((f.arbitration_id, f.is_extended_id) in mapped_ids for f in frames)
    return {
        "frames": len(frames),
        "mapped": mapped,
        "rate": statistics.median(rates),
        "p99_us": statistics.median(p99s),
        "speedup": statistics.median(speedups),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per case (default 7)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    print(f"machine: {len(__import__('os').sched_getaffinity(0))} CPUs, {cpu_model()}")
    print(f"Python {platform.python_version()}, python-can {version('python-can')}, "
          f"cantools {version('cantools')}; median of {args.runs} runs")
    results = [(p, log, measure(p, log, args.runs)) for p, log in CASES]
    reference = results[0][2]["rate"]
    print()
    print("| profile | recording | frames | mapped | frames/s | ratio to first "
          "| p99 mapped frame (us) | replay x real time |")
    print("|---|---|---|---|---|---|---|---|")
    for profile_name, log, result in results:
        print(f"| {profile_name} | {log} | {result['frames']} | {result['mapped']} "
              f"| {result['rate']:,.0f} | {result['rate'] / reference:.2f} "
              f"| {result['p99_us']:.1f} | {result['speedup']:.0f} |")


if __name__ == "__main__":
    main()
