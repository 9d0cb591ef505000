"""Operator commands: ``status``, ``keys list|generate|delete|import``, ``watch``.

A thin layer over :mod:`vehicle_keysvc.client`. Each command connects to
the bus given by ``--bus`` (the system bus by default), prints its result
on stdout, and prints one line on stderr when it fails, saying what to do.

Exit codes: 0 success, 1 the service rejected or failed the request,
2 invalid arguments or files, 3 the bus or the service cannot be reached,
4 access denied by the D-Bus policy or the service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from dbus_fast.aio import MessageBus

from .client import KeyStorageClient, KeyStorageError, connect

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_DENIED = 4

_UNIT = "vehicle-keysvc"
_NOT_RUNNING = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.Spawn.ChildExited",
    "org.freedesktop.DBus.Error.Spawn.Failed",
}
_RETRY_LATER = {"TpmUnavailable", "Stopping"}

Action = Callable[[KeyStorageClient, argparse.Namespace], Awaitable[int]]


class OperatorError(Exception):
    """A failed command: the one-line message and the exit code."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def explain(error: KeyStorageError, bus: str) -> OperatorError:
    """Turn a D-Bus error reply into a one-line message with the next step to take."""
    if error.name in _NOT_RUNNING:
        return OperatorError(
            EXIT_UNAVAILABLE,
            f"the key service is not running on the {bus} bus ({error.short_name}); "
            f"start it with: systemctl start {_UNIT}",
        )
    if error.name == "org.freedesktop.DBus.Error.NoReply":
        return OperatorError(
            EXIT_UNAVAILABLE,
            f"the key service did not reply; check: systemctl status {_UNIT}",
        )
    if error.name == "org.freedesktop.DBus.Error.AccessDenied":
        if "Rejected send message" in error.text:
            return OperatorError(
                EXIT_DENIED,
                f"the D-Bus policy does not let uid {os.getuid()} call the key service; "
                "run as root or as the PZP user",
            )
        return OperatorError(EXIT_DENIED, f"{error.text}; run as root or as an admin uid")
    if error.name == "org.freedesktop.DBus.Error.UnknownMethod":
        return OperatorError(
            EXIT_FAILED,
            f"the running service does not support this command ({error.text}); "
            "update and restart it",
        )
    if error.short_name in _RETRY_LATER:
        return OperatorError(EXIT_UNAVAILABLE, f"{error.text}; retry in a few seconds")
    return OperatorError(EXIT_FAILED, f"{error.short_name}: {error.text}")


async def _with_client(args: argparse.Namespace, action: Action) -> int:
    try:
        bus: MessageBus = await asyncio.wait_for(connect(args.bus), args.timeout)
    except (OSError, ValueError, TimeoutError, EOFError) as err:
        raise OperatorError(
            EXIT_UNAVAILABLE,
            f"cannot connect to the D-Bus bus {args.bus!r}: "
            f"{err or type(err).__name__}; check --bus and that dbus-daemon runs",
        ) from None
    try:
        if args.follow:
            return await action(KeyStorageClient(bus), args)
        return await asyncio.wait_for(action(KeyStorageClient(bus), args), args.timeout)
    except KeyStorageError as err:
        raise explain(err, args.bus) from None
    except TimeoutError:
        raise OperatorError(
            EXIT_UNAVAILABLE,
            f"no reply from the key service within {args.timeout:g} s; "
            f"check: systemctl status {_UNIT}",
        ) from None
    finally:
        bus.disconnect()


def _run(action: Action) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(_with_client(args, action))
        except OperatorError as err:
            print(f"vehicle-keysvc: error: {err}", file=sys.stderr)
            return err.exit_code

    return command


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


# status ---------------------------------------------------------------------


async def _status(client: KeyStorageClient, args: argparse.Namespace) -> int:
    locked, reason = await client.locked()
    status = {
        "locked": locked,
        "reason": reason,
        "service_pid": await client.service_pid(),
        "vehicle_state": await client.vehicle_state(),
        "keys": await client.list_keys(),
        "tpm": await client.tpm_info(),
    }
    if args.json:
        _print_json(status)
        return 0
    print(f"state:    {'locked' if locked else 'unlocked'}")
    print(f"reason:   {reason}")
    print(f"service:  pid {status['service_pid']} on the {args.bus} bus")
    print("signals:")
    for fact, entry in sorted(status["vehicle_state"].items()):
        print("  " + _fact_line(fact, entry))
    keys = status["keys"]
    print(f"keys:     {len(keys)}" + (f" ({', '.join(keys)})" if keys else ""))
    print("tpm:      " + _tpm_line(status["tpm"]))
    return 0


def _fact_line(fact: str, entry: dict[str, Any]) -> str:
    value = entry.get("value", "-")
    age = entry.get("age")
    age_text = "never received" if age is None else f"age {age:.2f} s"
    notes = [] if entry.get("fresh") else ["stale"]
    if "problem" in entry:
        notes.append(str(entry["problem"]))
    line = f"{fact:<48} {str(value):<8} {age_text}"
    return line + (f"  ({'; '.join(notes)})" if notes else "")


def _tpm_line(tpm: dict[str, Any]) -> str:
    parts = [f"{tpm.get('manufacturer', '?')} {tpm.get('vendor', '')}".strip()]
    if "spec" in tpm:
        parts.append(f"TPM {tpm['spec']}")
    if "firmware" in tpm:
        parts.append(f"firmware {tpm['firmware']}")
    parts.append("available" if tpm.get("available") else "unavailable")
    return ", ".join(parts)


# keys -----------------------------------------------------------------------


async def _keys_list(client: KeyStorageClient, args: argparse.Namespace) -> int:
    keys = await client.list_keys()
    if args.json:
        _print_json(keys)
    else:
        for key_id in keys:
            print(key_id)
    return 0


def _print_public_key(key_id: str, public_der: bytes, as_json: bool) -> None:
    pem = serialization.load_der_public_key(public_der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    if as_json:
        _print_json({"key_id": key_id, "public_key_pem": pem})
    else:
        sys.stdout.write(pem)


async def _keys_generate(client: KeyStorageClient, args: argparse.Namespace) -> int:
    public_der = await client.generate_key(
        args.key_id, owner_uid=args.owner_uid, key_type=args.type, pcrs=args.pcrs
    )
    _print_public_key(args.key_id, public_der, args.json)
    return 0


async def _keys_import(client: KeyStorageClient, args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        key_data = bytearray(path.read_bytes())
    except OSError as err:
        raise OperatorError(
            EXIT_USAGE, f"cannot read key file {path}: {err.strerror or err}"
        ) from None
    try:
        public_der = await client.import_key(
            args.key_id, bytes(key_data), owner_uid=args.owner_uid, pcrs=args.pcrs
        )
    finally:
        # NOTE: this clears the command's own buffer only; the bytes copy
        # sent to dbus-fast stays in memory until it is collected.
        key_data[:] = bytes(len(key_data))
    _print_public_key(args.key_id, public_der, args.json)
    return 0


async def _keys_delete(client: KeyStorageClient, args: argparse.Namespace) -> int:
    await client.delete_key(args.key_id)
    print(f"deleted key {args.key_id!r}")
    return 0


# watch ----------------------------------------------------------------------


async def _watch(client: KeyStorageClient, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    seen = 0

    def show(locked: bool, reason: str, event: str) -> None:
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        if args.json:
            line = json.dumps({"time": now, "event": event, "locked": locked,
                               "reason": reason})
        else:
            line = f"{now} {'locked' if locked else 'unlocked':<8} {reason}"
        print(line, flush=True)

    def on_lock_changed(locked: bool, reason: str) -> None:
        nonlocal seen
        show(locked, reason, "LockChanged")
        seen += 1
        if args.count is not None and seen >= args.count:
            stop.set()

    try:
        await client.watch(on_lock_changed)
        locked, reason = await asyncio.wait_for(client.locked(), args.timeout)
        show(locked, reason, "current")
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0


# parser ---------------------------------------------------------------------


def _uid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(
            f"invalid uid {text!r}: give a number 0..4294967295 (see: id -u USER)"
        )
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(
            f"invalid timeout {text!r}: give seconds from 0.1 to 3600"
        )
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: give a number from 1")
    return int(text)


def register_operator_commands(commands: Any) -> None:
    """Add the operator commands to the ``vehicle-keysvc`` subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--bus", default="system",
        help="D-Bus bus: system (default), session, or an address such as "
             "unix:path=/run/dbus/system_bus_socket",
    )
    common.add_argument("--timeout", type=_seconds, default=30.0,
                        help="seconds to wait for the service (default 30)")
    common.set_defaults(follow=False)
    with_json = argparse.ArgumentParser(add_help=False)
    with_json.add_argument("--json", action="store_true", help="print JSON")

    status = commands.add_parser(
        "status", parents=[common, with_json],
        help="show lock state and reason, vehicle signal ages, keys and TPM",
    )
    status.set_defaults(func=_run(_status))

    keys = commands.add_parser("keys", help="list, generate, delete or import keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)

    listing = key_commands.add_parser("list", parents=[common, with_json],
                                      help="print the key ids the caller may use")
    listing.set_defaults(func=_run(_keys_list))

    generate = key_commands.add_parser(
        "generate", parents=[common, with_json],
        help="create a key in the TPM and print its public key (PEM)",
    )
    generate.add_argument("key_id", help="id of the new key")
    generate.add_argument("--owner-uid", type=_uid, required=True,
                          help="uid of the process that will sign with the key")
    generate.add_argument("--type", default="ecc-p256", help="key type (default ecc-p256)")
    generate.add_argument("--pcrs", help="PCR selection, e.g. sha256:0,7 "
                                         "(default: the service's [tpm] pcrs)")
    generate.set_defaults(func=_run(_keys_generate))

    delete = key_commands.add_parser("delete", parents=[common],
                                     help="delete a key")
    delete.add_argument("key_id", help="id of the key to delete")
    delete.set_defaults(func=_run(_keys_delete))

    importing = key_commands.add_parser(
        "import", parents=[common, with_json],
        help="import a private key (PEM or DER file) into the TPM",
    )
    importing.add_argument("key_id", help="id of the new key")
    importing.add_argument("file", help="private key file, PEM or DER, not encrypted")
    importing.add_argument("--owner-uid", type=_uid, required=True,
                           help="uid of the process that will sign with the key")
    importing.add_argument("--pcrs", help="PCR selection, e.g. sha256:0,7")
    importing.set_defaults(func=_run(_keys_import))

    watch = commands.add_parser(
        "watch", parents=[common, with_json],
        help="print the lock state, then every LockChanged signal, until interrupted",
    )
    watch.add_argument("--count", type=_count,
                       help="exit after this many LockChanged signals")
    watch.set_defaults(func=_run(_watch), follow=True)
