"""Signing latency and throughput, side by side on one swtpm, in one run.

Compares, for one ECC P-256 key bound to PolicyPCR:

- ``dbus``: Sign over D-Bus on the service process (private dbus-daemon,
  gate unlocked by the simulated car over socketcand);
- ``dbus-signed``: the same with a key whose policy is signed by an OEM
  key (PolicyPCR, PolicyNV on the release counter, PolicyAuthorize);
- ``in-process``: the same load, PolicyPCR and TPM2_Sign, then flush,
  called directly with tpm2-pytss in this process;
- ``tpm2-tools``: the same steps as a shell script would run them with
  tpm2-tools, one process per step (tpm2_load, tpm2_startauthsession,
  tpm2_policypcr, tpm2_sign, tpm2_flushcontext);
- ``software``: ECDSA P-256 with cryptography, no TPM (the floor).

The methods run in interleaved rounds, so a change in machine load hits
each of them alike. Prints median and p99 latency per method, the ratio of
D-Bus to in-process, and D-Bus throughput with 1, 8 and 32 concurrent
clients (one bus connection each).

Run from the repository root: ``.venv/bin/python -m bench.sign``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path

os.environ.setdefault("TSS2_LOG", "all+NONE")

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, utils  # noqa: E402
from dbus_fast import Message, Variant  # noqa: E402
from dbus_fast.aio import MessageBus  # noqa: E402
from tpm2_pytss import ESAPI, TCTILdr  # noqa: E402
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RH, TPM2_SE, TPM2_ST  # noqa: E402
from tpm2_pytss.types import (  # noqa: E402
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TPMT_TK_HASHCHECK,
)

from sim.processes import Swtpm, start_dbus_daemon, start_swtpm, stop_process  # noqa: E402
from sim.socketcand import SocketcandServer  # noqa: E402
from sim.transmit import PeriodicTransmitter  # noqa: E402
from sim.vehicle import ReferenceVehicle  # noqa: E402
from vehicle_keysvc.client import KeyStorageClient  # noqa: E402
from vehicle_keysvc.policy import sign_policy  # noqa: E402
from vehicle_keysvc.tpm import SRK_HANDLE  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PCRS = "sha256:7,16"
DIGEST = hashlib.sha256(b"bench").digest()
KEY_ID = "bench"
AUTHORIZED_KEY_ID = "bench-authorized"
POLICY_REF = "bench-product"

# Returns the seconds one signature took.
Sampler = Callable[[], Awaitable[float]]


def write_config(directory: Path, swtpm: Swtpm, bus_address: str, can_port: int) -> Path:
    path = directory / "keysvc.toml"
    path.write_text(textwrap.dedent(f"""\
        [tpm]
        tcti = "{swtpm.tcti}"
        pcrs = "{PCRS}"

        [dbus]
        bus = "{bus_address}"

        [access]
        admin_uids = [{os.getuid()}]

        [storage]
        key_dir = "{directory / 'keys'}"

        [vehicle]
        profile = "{REPO / 'dbc' / 'reference.profile.toml'}"

        [can]
        interface = "socketcand"
        channel = "vcan0"
        options = {{ host = "127.0.0.1", port = {can_port} }}

        [policy]
        oem_public_key = "oem.pem"
        policy_ref = "{POLICY_REF}"

        # The bench measures signing, so the per-uid rate limit is off.
        [limits]
        rate_per_second = 0
        """))
    return path


def write_oem_key(directory: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    (directory / "oem.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def read_pcr_values(swtpm: Swtpm) -> dict[int, bytes]:
    tcti = TCTILdr("swtpm", f"host=127.0.0.1,port={swtpm.port}")
    esapi = ESAPI(tcti)
    try:
        values = {}
        for index in (7, 16):
            _, _, digests = esapi.pcr_read(TPML_PCR_SELECTION.parse(f"sha256:{index}"))
            values[index] = bytes(digests[0])
        return values
    finally:
        esapi.close()
        tcti.close()


async def wait_for_name(bus: MessageBus, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}")
        reply = await bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="NameHasOwner", signature="s",
            body=["org.webinos.KeyStorage1"]))
        if reply is not None and reply.body and reply.body[0]:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("service did not own its D-Bus name in time")


async def wait_unlocked(client: KeyStorageClient) -> None:
    deadline = time.monotonic() + 30.0
    while await client.get_property("Locked"):
        if time.monotonic() > deadline:
            raise RuntimeError("the gate did not unlock")
        await asyncio.sleep(0.05)


class InProcessSigner:
    """PolicyPCR + TPM2_Sign with tpm2-pytss, load and flush per signature."""

    def __init__(self, swtpm: Swtpm, public: bytes, private: bytes) -> None:
        self.tcti = TCTILdr("swtpm", f"host=127.0.0.1,port={swtpm.port}")
        self.esapi = ESAPI(self.tcti)
        self.srk = self.esapi.tr_from_tpmpublic(SRK_HANDLE)
        self.public, _ = TPM2B_PUBLIC.unmarshal(public)
        self.private, _ = TPM2B_PRIVATE.unmarshal(private)
        self.selection = TPML_PCR_SELECTION.parse(PCRS)

    def sign(self) -> bytes:
        esapi = self.esapi
        key = esapi.load(self.srk, self.private, self.public)
        try:
            session = esapi.start_auth_session(
                ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
            try:
                esapi.policy_pcr(session, None, self.selection)
                scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
                scheme.details.any.hashAlg = TPM2_ALG.SHA256
                ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
                signature = esapi.sign(key, DIGEST, scheme, ticket, session1=session)
            finally:
                esapi.flush_context(session)
        finally:
            esapi.flush_context(key)
        return bytes(signature.signature.ecdsa.signatureR)

    def close(self) -> None:
        self.esapi.close()
        self.tcti.close()


class ToolsSigner:
    """The same steps with tpm2-tools, one process per step."""

    def __init__(self, swtpm: Swtpm, public: bytes, private: bytes, directory: Path) -> None:
        self.directory = directory
        (directory / "key.pub").write_bytes(public)
        (directory / "key.priv").write_bytes(private)
        (directory / "digest.bin").write_bytes(DIGEST)
        self.env = {**os.environ, "TPM2TOOLS_TCTI": swtpm.tcti}

    def _run(self, *command: str) -> None:
        subprocess.run(command, cwd=self.directory, env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def sign(self) -> None:
        self._run("tpm2_load", "-C", hex(SRK_HANDLE), "-u", "key.pub", "-r", "key.priv",
                  "-c", "key.ctx")
        self._run("tpm2_startauthsession", "--policy-session", "-S", "session.ctx")
        self._run("tpm2_policypcr", "-S", "session.ctx", "-l", PCRS)
        self._run("tpm2_sign", "-c", "key.ctx", "-g", "sha256", "-s", "ecdsa", "-d",
                  "-p", "session:session.ctx", "-o", "sig.bin", "digest.bin")
        # Without a resource manager every tool leaves its objects loaded.
        self._run("tpm2_flushcontext", "-t")
        self._run("tpm2_flushcontext", "-s")


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def timed_async(call: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await call()
    return time.perf_counter() - start


async def timed_blocking(call: Callable[[], object]) -> float:
    """Time a blocking call in a thread, so the simulated car keeps sending frames."""

    def measure() -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    return await asyncio.to_thread(measure)


async def throughput(bus_address: str, clients: int, duration: float) -> tuple[float, int]:
    """Return signatures per second and errors with ``clients`` connections."""
    buses = [await MessageBus(bus_address=bus_address).connect() for _ in range(clients)]
    done = 0
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker(bus: MessageBus) -> None:
        nonlocal done, errors
        client = KeyStorageClient(bus)
        while time.perf_counter() < deadline:
            try:
                await client.sign(KEY_ID, DIGEST)
                done += 1
            except Exception:  # counted and reported; the bench keeps going
                errors += 1

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker(bus) for bus in buses))
    finally:
        for bus in buses:
            bus.disconnect()
    return done / (time.perf_counter() - start), errors


def versions() -> str:
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    swtpm = subprocess.run(["swtpm", "--version"], capture_output=True, text=True).stdout
    tools = "missing"
    if shutil.which("tpm2_sign"):
        tools = subprocess.run(["tpm2_sign", "--version"], capture_output=True,
                               text=True).stdout.strip()
    packages = ", ".join(f"{name} {metadata.version(name)}" for name in
                         ("tpm2-pytss", "dbus-fast", "cryptography"))
    return (f"nproc {os.cpu_count()}, {cpu}\nPython {platform.python_version()}, "
            f"{packages}\n{swtpm.strip()}; tpm2-tools: {tools}")


async def run(rounds: int, per_round: int, duration: float) -> int:
    work = Path(tempfile.mkdtemp(prefix="keysvc-bench-"))
    swtpm = start_swtpm(work / "tpm")
    dbus = start_dbus_daemon()
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    server = SocketcandServer(port=0)
    await server.start()
    transmitter = PeriodicTransmitter(vehicle, server.broadcast)
    transmitter.start()
    oem_key = write_oem_key(work)
    log = open(work / "service.log", "ab")
    service = subprocess.Popen(
        [sys.executable, "-m", "vehicle_keysvc.cli", "run", "--config",
         str(write_config(work, swtpm, dbus.address, server.port))],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    bus = await MessageBus(bus_address=dbus.address).connect()
    in_process: InProcessSigner | None = None
    try:
        await wait_for_name(bus, service)
        client = KeyStorageClient(bus)
        await client.generate_key(KEY_ID, owner_uid=os.getuid())
        signed = sign_policy(oem_key, POLICY_REF.encode(), 1, "sha256", (7, 16),
                             read_pcr_values(swtpm))
        await client.load_policy(signed.to_json().encode())
        await client.generate(AUTHORIZED_KEY_ID, "ecc-p256", {
            "owner_uid": Variant("u", os.getuid()), "policy": Variant("s", "authorized")})
        await wait_unlocked(client)
        record = json.loads((work / "keys" / f"{KEY_ID}.key.json").read_text())
        public = base64.b64decode(record["tpm_public"])
        private = base64.b64decode(record["tpm_private"])
        in_process = InProcessSigner(swtpm, public, private)
        software_key = ec.generate_private_key(ec.SECP256R1())

        signer = in_process

        def software_sign() -> None:
            software_key.sign(DIGEST, ec.ECDSA(utils.Prehashed(hashes.SHA256())))

        samplers: dict[str, Sampler] = {
            "dbus": lambda: timed_async(lambda: client.sign(KEY_ID, DIGEST)),
            "dbus-signed": lambda: timed_async(
                lambda: client.sign(AUTHORIZED_KEY_ID, DIGEST)),
            "in-process": lambda: timed_blocking(signer.sign),
            "software": lambda: timed_blocking(software_sign),
        }
        if shutil.which("tpm2_sign"):
            tools = ToolsSigner(swtpm, public, private, work)
            samplers["tpm2-tools"] = lambda: timed_blocking(tools.sign)
        else:
            print("tpm2-tools column skipped: tpm2_sign not found "
                  "(apt-get install tpm2-tools)")

        samples: dict[str, list[float]] = {name: [] for name in samplers}
        for name, sampler in samplers.items():  # warm-up, not recorded
            await sampler()
        for _ in range(rounds):
            for name, sampler in samplers.items():
                count = max(1, per_round // 10) if name == "tpm2-tools" else per_round
                for _ in range(count):
                    samples[name].append(await sampler())

        print(versions())
        print(f"\nlatency per signature (rounds {rounds}, {per_round} per round per method)")
        print(f"{'method':12s} {'n':>5s} {'median ms':>10s} {'p99 ms':>10s}")
        medians = {}
        for name, values in samples.items():
            medians[name] = statistics.median(values)
            print(f"{name:12s} {len(values):5d} {medians[name] * 1000:10.3f} "
                  f"{percentile(values, 0.99) * 1000:10.3f}")
        print(f"\nratio dbus / in-process (medians): "
              f"{medians['dbus'] / medians['in-process']:.2f}")
        print(f"ratio dbus-signed / dbus (medians): "
              f"{medians['dbus-signed'] / medians['dbus']:.2f}")
        print(f"ratio in-process / software (medians): "
              f"{medians['in-process'] / medians['software']:.1f}")
        if "tpm2-tools" in medians:
            print(f"ratio tpm2-tools / dbus (medians): "
                  f"{medians['tpm2-tools'] / medians['dbus']:.1f}")

        print(f"\nD-Bus throughput ({duration:.0f} s per level)")
        print(f"{'clients':>7s} {'signatures/s':>13s} {'errors':>7s}")
        for clients in (1, 8, 32):
            rate, errors = await throughput(dbus.address, clients, duration)
            print(f"{clients:7d} {rate:13.1f} {errors:7d}")
    finally:
        if in_process is not None:
            in_process.close()
        bus.disconnect()
        stop_process(service, grace=10.0)
        log.close()
        await transmitter.stop()
        await server.stop()
        dbus.stop()
        swtpm.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--per-round", type=int, default=100,
                        help="signatures per method per round; tpm2-tools does a "
                             "tenth of it (default 100)")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds per throughput level (default 5)")
    args = parser.parse_args()
    return asyncio.run(run(args.rounds, args.per_round, args.duration))


if __name__ == "__main__":
    sys.exit(main())
