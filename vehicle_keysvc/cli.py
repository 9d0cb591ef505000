"""Command line: ``vehicle-keysvc run | replay | profile | policy`` and operator commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from . import cli_policy, cli_profile
from .cli_ops import register_operator_commands
from .config import load_config
from .errors import KeyServiceError
from .journal import use_journal_if_connected
from .profile import load_profile
from .logfiles import LogStats
from .replay import read_frames, replay

_LOGGER = logging.getLogger("vehicle_keysvc")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from .app import run_service

    config = load_config(args.config)
    if not use_journal_if_connected(args.log_level or config.log_level):
        _setup_logging(args.log_level or config.log_level)
    asyncio.run(run_service(config, config_path=Path(args.config)))
    return 0


def _positive_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.1 <= value <= 1000.0:
        raise argparse.ArgumentTypeError(
            f"invalid interval {text!r}: give milliseconds from 0.1 to 1000"
        )
    return value


def _cmd_replay(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level or "WARNING")
    profile = load_profile(args.profile)
    stats = LogStats(args.logfile)
    try:
        timeline = replay(
            profile, read_frames(args.logfile, stats), tick=args.tick_ms / 1000.0
        )
    except (OSError, ValueError) as err:
        print(f"vehicle-keysvc: error: cannot read {args.logfile}: {err}", file=sys.stderr)
        return 2
    print(
        f"{args.logfile}: {stats.frames} data frames, {stats.error_frames} error "
        f"frames, {stats.remote_frames} remote frames, {len(stats.malformed)} "
        "malformed lines skipped",
        file=sys.stderr,
    )
    if args.json:
        json.dump([e.as_dict() for e in timeline], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for entry in timeline:
            print(entry)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vehicle-keysvc",
        description="TPM key service gated by CAN vehicle state, served over D-Bus.",
    )
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level (default: the config's, or WARNING for replay)")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the service")
    run.add_argument("--config", required=True, help="path of the TOML config file")
    run.set_defaults(func=_cmd_run)

    rep = commands.add_parser(
        "replay", help="print the state and gate timeline of a CAN recording"
    )
    rep.add_argument("--profile", required=True, help="vehicle profile (TOML)")
    rep.add_argument("logfile", help="recording: candump .log, .asc, .trc or .blf")
    rep.add_argument("--json", action="store_true", help="print JSON instead of text")
    rep.add_argument("--tick-ms", type=_positive_ms, default=20.0,
                     help="gate re-evaluation interval between frames, in ms (default 20)")
    rep.set_defaults(func=_cmd_replay)
    cli_profile.register(commands)
    cli_policy.register(commands)
    register_operator_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyServiceError as err:
        print(f"vehicle-keysvc: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`... | head`). Point stdout at
        # /dev/null so that flushing it at exit raises nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
