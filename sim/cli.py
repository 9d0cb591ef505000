"""Command line: serve the reference vehicle or a CAN log over socketcand.

    python -m sim serve --port 0 drive --speed 10
    python -m sim serve --port 29536 replay tests/data/keyofftokeyonandlocks.log --loop

The first line on stdout is ``LISTENING HOST PORT``. The drive mode then prints
one line per scenario step and keeps sending the final state, and the replay mode
prints one line per pass over the log. The server runs until SIGTERM or SIGINT,
which close every socket and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from sim.replay import replay_log
from sim.scenario import DRIVE_CYCLE, Step, run_scenario
from sim.socketcand import SocketcandServer
from sim.transmit import PeriodicTransmitter
from sim.vehicle import ReferenceVehicle

_LOGGER = logging.getLogger(__name__)

# The port in python-can's socketcand documentation example.
DEFAULT_PORT = 29536


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(_serve(args))


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected a number > 0"
        )
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="level of the log written to stderr (default: %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run a socketcand server on one CAN channel"
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="TCP port, 0 picks a free one (default: %(default)s)",
    )
    serve.add_argument(
        "--channel",
        default="vcan0",
        help="CAN channel name clients open (default: %(default)s)",
    )
    sources = serve.add_subparsers(dest="source", required=True)

    drive = sources.add_parser(
        "drive", help="send the reference vehicle through the drive cycle"
    )
    drive.add_argument(
        "--speed",
        type=_positive_float,
        default=1.0,
        help="time factor, 2 runs the 21 s cycle twice as fast (default: %(default)s)",
    )

    replay = sources.add_parser("replay", help="replay a CAN log that python-can reads")
    replay.add_argument("logfile", type=Path, help="log file (.log, .asc, .trc, .blf)")
    replay.add_argument(
        "--speed",
        type=_positive_float,
        default=1.0,
        help="time factor (default: %(default)s)",
    )
    replay.add_argument(
        "--loop",
        action="store_true",
        help="replay the log again and again until stopped",
    )
    return parser


async def _serve(args: argparse.Namespace) -> int:
    if args.source == "replay" and not args.logfile.is_file():
        print(f"error: log file not found: {args.logfile}", file=sys.stderr)
        return 2

    server = SocketcandServer(host=args.host, port=args.port, channel=args.channel)
    try:
        await server.start()
    except OSError as err:
        print(
            f"error: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr
        )
        return 1
    print(f"LISTENING {args.host} {server.port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    work, transmitter = _start_source(args, server)
    stop_waiter = asyncio.create_task(stop.wait())
    status = 0
    try:
        await asyncio.wait((stop_waiter, work), return_when=asyncio.FIRST_COMPLETED)
        error = None if work.cancelled() or not work.done() else work.exception()
        if error is not None:
            _LOGGER.debug("%s failed", args.source, exc_info=error)
            print(f"error: {args.source} failed: {error}", file=sys.stderr)
            status = 1
        else:
            # A finished source keeps the server up until a signal: the drive
            # cycle keeps sending its final state, a replay sends nothing more.
            await stop_waiter
            _LOGGER.info("stop signal received")
    finally:
        stop_waiter.cancel()
        work.cancel()
        await asyncio.gather(stop_waiter, work, return_exceptions=True)
        if transmitter is not None:
            await transmitter.stop()
        await server.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return status


def _start_source(
    args: argparse.Namespace, server: SocketcandServer
) -> tuple[asyncio.Task[None], PeriodicTransmitter | None]:
    """Start the frame source of ``args.source``, sending to ``server``."""
    if args.source == "drive":
        vehicle = ReferenceVehicle()
        transmitter = PeriodicTransmitter(vehicle, server.broadcast)
        transmitter.start()
        return asyncio.create_task(_drive(vehicle, args.speed)), transmitter
    replay = _replay(server, args.logfile, args.speed, args.loop)
    return asyncio.create_task(replay), None


def _print_step(step: Step) -> None:
    print(f"t={step.at:5.1f}s  {step.label}", flush=True)


async def _drive(vehicle: ReferenceVehicle, speed: float) -> None:
    await run_scenario(vehicle, DRIVE_CYCLE, on_step=_print_step, speed=speed)
    _LOGGER.info("drive cycle finished, holding the final state")


async def _replay(
    server: SocketcandServer, path: Path, speed: float, loop: bool
) -> None:
    while True:
        sent = await replay_log(path, server.broadcast, speed=speed)
        print(f"replayed {sent} frames from {path}", flush=True)
        if not loop:
            _LOGGER.info("replay finished, serving until stopped")
            return
