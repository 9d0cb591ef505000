#!/usr/bin/env python3
"""Measure what the request guard (drain count, rate limit, audit) adds per request.

Runs the same trivial coroutine four ways in one process, interleaved in
rounds so that load from other processes hits every variant alike:

- direct: awaited without the guard;
- guard, limit off: RequestGuard with rate 0, audit lines dropped below INFO;
- guard, limit on: a token bucket at 1e6 requests/s, so no call is rejected;
- guard, audit written: as above, with every audit line formatted and
  written to /dev/null (what a Sign costs, since Signs are logged at INFO).

Prints the median and p99 per call in microseconds and each median's ratio
to the direct call. With ``--swtpm N`` it also times N real TPM signatures
on a swtpm it starts, which is what the guard's cost compares to in the
service.

    .venv/bin/python bench/bench_request_guard.py [--calls 20000] [--rounds 5] [--swtpm 200]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vehicle_keysvc.audit import AuditLog  # noqa: E402
from vehicle_keysvc.callers import Caller  # noqa: E402
from vehicle_keysvc.ratelimit import RateLimiter  # noqa: E402
from vehicle_keysvc.request_guard import RequestGuard  # noqa: E402
from sim.processes import start_swtpm  # noqa: E402
from vehicle_keysvc.tpm import PcrSelection, TpmBackend  # noqa: E402

CALLER = Caller(":1.42", 1000, 4242)


async def identify() -> Caller:
    return CALLER


async def sign() -> bytes:
    return b"signature"


def quiet_logger() -> logging.Logger:
    logger = logging.getLogger("bench.audit.quiet")
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    return logger


def written_logger(stream: object) -> logging.Logger:
    logger = logging.getLogger("bench.audit.written")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = logging.StreamHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    return logger


async def time_calls(call: Callable[[], Awaitable[bytes]], count: int) -> list[float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        await call()
        samples.append((clock() - start) / 1000.0)
    return samples


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


async def main(calls: int, rounds: int) -> None:
    with open(os.devnull, "w") as devnull:
        guards = {
            "guard, limit off": RequestGuard(AuditLog(logger=quiet_logger()),
                                             RateLimiter(0.0, 1)),
            "guard, limit on": RequestGuard(AuditLog(logger=quiet_logger()),
                                            RateLimiter(1e6, 1_000_000)),
            "guard, audit written": RequestGuard(AuditLog(logger=written_logger(devnull)),
                                                 RateLimiter(1e6, 1_000_000)),
        }
        variants: dict[str, Callable[[], Awaitable[bytes]]] = {"direct": sign}
        for name, guard in guards.items():
            variants[name] = (
                lambda guard=guard: guard.run("Sign", ("pzp",), identify, sign)
            )
        results: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, call in variants.items():
                results[name] += await time_calls(call, calls)

    direct = statistics.median(results["direct"])
    print(f"{'variant':<22} {'median us':>10} {'p99 us':>9} {'ratio':>7}")
    for name, samples in results.items():
        median = statistics.median(samples)
        print(f"{name:<22} {median:>10.2f} {p99(samples):>9.2f} {median / direct:>7.1f}")
    print(f"{calls * rounds} calls per variant in {rounds} interleaved rounds")


async def time_tpm_signs(count: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="keysvc-bench-") as folder:
        swtpm = start_swtpm(Path(folder) / "tpm")
        backend = TpmBackend(swtpm.tcti)
        try:
            await backend.start()
            blobs, _ = await backend.create_key(PcrSelection("sha256", (7,)))
            digest = bytes(32)
            samples = []
            for _ in range(count):
                start = time.perf_counter_ns()
                await backend.sign(blobs, digest)
                samples.append((time.perf_counter_ns() - start) / 1000.0)
            return samples
        finally:
            await backend.close()
            swtpm.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per variant per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--swtpm", type=int, default=0, metavar="N",
                        help="also time N signatures on swtpm (default 0: skip)")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.calls, arguments.rounds))
    if arguments.swtpm:
        signs = asyncio.run(time_tpm_signs(arguments.swtpm))
        print(f"{'TPM sign on swtpm':<22} {statistics.median(signs):>10.2f} "
              f"{p99(signs):>9.2f}  ({arguments.swtpm} signatures)")
