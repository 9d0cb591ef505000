"""Command line: ``vehicle-keysvc policy sign | load``.

``policy sign`` runs at the OEM: it computes the approved policy of a
software release from its PCR values and signs it with the OEM policy key.
It needs no TPM unless the values are read from a reference unit.
``policy load`` sends a signed policy to the running service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from .errors import InvalidArgument, KeyServiceError
from .policy import DEFAULT_COUNTER_INDEX, MAX_RELEASE, check_policy_ref, sign_policy
from .tpm import PcrSelection

_BANK_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48}


def register(commands: Any) -> None:
    """Add the ``policy`` command to the top-level subparsers."""
    policy = commands.add_parser("policy", help="sign or load PCR policies for releases")
    actions = policy.add_subparsers(dest="policy_command", required=True)

    sign = actions.add_parser(
        "sign", help="sign the PCR policy of a software release with the OEM key"
    )
    sign.add_argument("--key", required=True, type=Path,
                      help="OEM policy private key, PEM (ECC P-256, unencrypted)")
    sign.add_argument("--pcrs", required=True, help="PCR selection, e.g. sha256:0,2,4,7")
    source = sign.add_mutually_exclusive_group(required=True)
    source.add_argument("--values", type=Path,
                        help="file of the release's PCR values: JSON "
                             '{"7": "HEX", ...} or tpm2_pcrread lines "7 : 0xHEX"')
    source.add_argument("--tcti",
                        help="read the current PCR values of a reference unit's TPM, "
                             "e.g. swtpm:host=127.0.0.1,port=2321")
    sign.add_argument("--policy-ref", required=True,
                      help="product name the devices are configured with ([policy] policy_ref)")
    sign.add_argument("--release", required=True, type=int,
                      help=f"release number, 1..{MAX_RELEASE}; loading it revokes older ones")
    sign.add_argument("--counter", default=f"0x{DEFAULT_COUNTER_INDEX:08x}",
                      help="NV index of the devices' release counter "
                           "([policy] release_counter, default %(default)s)")
    sign.add_argument("--output", "-o", required=True, type=Path,
                      help="signed policy file to write")
    sign.set_defaults(func=_cmd_sign)

    load = actions.add_parser("load", help="send a signed policy to the running service")
    load.add_argument("file", type=Path, help="signed policy file")
    load.add_argument("--bus", default="system",
                      help="'system', 'session' or a D-Bus address (default: system)")
    load.set_defaults(func=_cmd_load)


def read_values(path: Path, selection: PcrSelection) -> dict[int, bytes]:
    """Read PCR values from JSON or from tpm2_pcrread-style lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise InvalidArgument(f"cannot read PCR values from {path}: {err}") from err
    values: dict[int, bytes] = {}
    try:
        if text.lstrip().startswith("{"):
            for index, value in json.loads(text).items():
                values[int(index)] = bytes.fromhex(value.removeprefix("0x"))
        else:
            for line in text.splitlines():
                match = re.fullmatch(r"\s*(\d{1,2})\s*:\s*(?:0x)?([0-9A-Fa-f]+)\s*", line)
                if match:
                    values[int(match.group(1))] = bytes.fromhex(match.group(2))
    except (ValueError, AttributeError) as err:
        raise InvalidArgument(f"PCR values in {path} are malformed: {err}") from None
    missing = [i for i in selection.indices if i not in values]
    if missing:
        raise InvalidArgument(
            f"{path} has no value for PCR {', '.join(map(str, missing))} of {selection}"
        )
    size = _BANK_SIZES[selection.bank]
    for index in selection.indices:
        if len(values[index]) != size:
            raise InvalidArgument(
                f"PCR {index} in {path} is {len(values[index])} bytes; a "
                f"{selection.bank} value is {size} bytes"
            )
    return {i: values[i] for i in selection.indices}


def read_reference_unit(tcti: str, selection: PcrSelection) -> dict[int, bytes]:
    """Read the current PCR values from a reference unit's TPM."""
    from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception
    from tpm2_pytss.types import TPML_PCR_SELECTION

    name, _, conf = tcti.partition(":")
    try:
        context = TCTILdr(name, conf or None)
    except TSS2_Exception as err:
        raise InvalidArgument(f"cannot open TPM TCTI {tcti!r}: {err}") from err
    esapi = ESAPI(context)
    try:
        values = {}
        for index in selection.indices:
            _, _, digests = esapi.pcr_read(
                TPML_PCR_SELECTION.parse(f"{selection.bank}:{index}")
            )
            values[index] = bytes(digests[0])
        return values
    finally:
        esapi.close()
        context.close()


def _cmd_sign(args: argparse.Namespace) -> int:
    selection = PcrSelection.parse(args.pcrs)
    try:
        counter = int(args.counter, 0)
    except ValueError:
        raise InvalidArgument(
            f"--counter {args.counter!r} is invalid: give an NV index such as 0x01800100"
        ) from None
    try:
        pem = args.key.read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
    except OSError as err:
        raise InvalidArgument(f"cannot read OEM key {args.key}: {err}") from err
    except (ValueError, TypeError):
        raise InvalidArgument(
            f"OEM key {args.key} is not an unencrypted PEM private key"
        ) from None
    if args.values is not None:
        values = read_values(args.values, selection)
    else:
        values = read_reference_unit(args.tcti, selection)
    signed = sign_policy(key, check_policy_ref(args.policy_ref), args.release,
                         selection.bank, selection.indices, values, counter)
    args.output.write_text(signed.to_json(), encoding="utf-8")
    print(f"signed policy for release {signed.release} ({signed.pcrs}) "
          f"written to {args.output}")
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    from .client import KeyStorageClient, KeyStorageError
    from .dbus_service import connect_bus

    try:
        data = args.file.read_bytes()
    except OSError as err:
        raise InvalidArgument(f"cannot read {args.file}: {err}") from err

    async def load() -> int:
        bus = await connect_bus(args.bus)
        try:
            return await KeyStorageClient(bus).load_policy(data)
        finally:
            bus.disconnect()

    try:
        counter = asyncio.run(load())
    except KeyStorageError as err:
        print(f"vehicle-keysvc: error: {err.text} ({err.short_name})", file=sys.stderr)
        return 2
    except (OSError, EOFError) as err:
        raise KeyServiceError(f"cannot reach the service on bus {args.bus!r}: {err}") from err
    print(f"signed policy loaded; release counter is {counter}")
    return 0
