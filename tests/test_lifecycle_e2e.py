"""The key lifecycle end to end: real swtpm, real dbus-daemon, real CAN frames.

Key types, import, certificate requests, certificates, rotation and the
over-the-air update story with a signed PCR policy, all called over D-Bus
on the service process.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from dbus_fast import Variant

from conftest import REPO, ServiceProcess, wait_until
from stack import Stack, locked, unlocked, start_stack
from test_key_types_tpm import verify_with_cryptography, verify_with_openssl
from test_service_e2e import dbus_send_as
from tpm_tools import extend_pcr, read_pcrs, transient_handles
from vehicle_keysvc.algorithms import KEY_TYPES, SIGN_ALGORITHMS
from vehicle_keysvc.client import KeyStorageError

ERROR = "org.webinos.KeyStorage1.Error."
MESSAGE = b"webinos PZP authentication"
POLICY_REF = "webinos-headunit-A"


@pytest_asyncio.fixture
async def stack(swtpm, dbus_daemon, bus, tmp_path: Path) -> AsyncIterator[Stack]:
    running = await start_stack(swtpm, dbus_daemon, bus, tmp_path)
    try:
        yield running
    finally:
        if running.service is not None:
            await can_connected(running)
        await running.close()


async def can_connected(stack: Stack) -> None:
    """Wait until the service's socketcand connection is in raw mode.

    A service stopped during its socketcand handshake waits for the
    simulator, which runs in the test's event loop, and the synchronous stop
    blocks that loop. So the tests stop the service only after this.
    """
    await wait_until(lambda: stack.server.client_count >= 1, timeout=15.0)


async def call_error(call) -> KeyStorageError:
    with pytest.raises(KeyStorageError) as caught:
        await call
    return caught.value


def data_for(algorithm: str, message: bytes = MESSAGE) -> bytes:
    spec = SIGN_ALGORITHMS[algorithm]
    if spec.takes_message:
        return message
    return hashlib.new(spec.hash_name, message).digest()


def pem_public(private_key) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def pem_private(private_key) -> bytes:
    return private_key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())


@pytest.mark.asyncio
async def test_every_key_type_signs_over_dbus(stack: Stack, tmp_path: Path) -> None:
    await unlocked(stack)
    for key_type in KEY_TYPES:
        public_der = await stack.client.generate_key(key_type, owner_uid=0,
                                                     key_type=key_type)
        for algorithm in KEY_TYPES[key_type].algorithms:
            signature = await stack.client.sign(key_type, data_for(algorithm), algorithm)

            verify_with_cryptography(public_der, algorithm, signature, MESSAGE)
            result = verify_with_openssl(tmp_path, public_der, algorithm, signature,
                                         MESSAGE)
            assert result.returncode == 0, (key_type, algorithm, result.stderr)
    assert await stack.client.list_keys() == sorted(KEY_TYPES)
    assert transient_handles(stack.swtpm.port) == []


@pytest.mark.asyncio
async def test_algorithm_must_fit_key(stack: Stack) -> None:
    await stack.client.generate_key("ecc", owner_uid=0)
    await stack.client.generate_key("ed", owner_uid=0, key_type="ed25519")
    await unlocked(stack)

    rsa_on_ecc = await call_error(stack.client.sign("ecc", bytes(32), "rsa-pss-sha256"))
    ecdsa_on_ed = await call_error(stack.client.sign("ed", bytes(32), "ecdsa-sha256"))
    short = await call_error(stack.client.sign("ecc", bytes(32), "ecdsa-sha384"))
    huge = await call_error(stack.client.sign("ed", bytes(64 * 1024 + 1), "ed25519"))

    assert rsa_on_ecc.name == ERROR + "InvalidArgument"
    assert "'rsa-pss-sha256' does not fit a ecc-p256 key" in rsa_on_ecc.text
    assert ecdsa_on_ed.name == ERROR + "InvalidArgument"
    assert "use one of ed25519" in ecdsa_on_ed.text
    assert short.name == ERROR + "InvalidArgument"
    assert "48-byte digest" in short.text
    assert huge.name == ERROR + "InvalidArgument"
    assert "at most 65536 bytes" in huge.text


@pytest.mark.asyncio
async def test_ed25519_seed_only_while_unlocked(stack: Stack) -> None:
    public_der = await stack.client.generate_key("ed", owner_uid=0, key_type="ed25519")
    await unlocked(stack)
    verify_with_cryptography(public_der, "ed25519",
                             await stack.client.sign("ed", MESSAGE, "ed25519"), MESSAGE)

    stack.vehicle.set(power_mode="OFF")
    await locked(stack)
    assert stack.service is not None
    await wait_until(lambda: "wiped 1 unsealed Ed25519 seeds" in stack.service.log())
    error = await call_error(stack.client.sign("ed", MESSAGE, "ed25519"))
    assert error.name == ERROR + "Locked"

    stack.vehicle.set(power_mode="RUN")
    await unlocked(stack)
    verify_with_cryptography(public_der, "ed25519",
                             await stack.client.sign("ed", MESSAGE, "ed25519"), MESSAGE)
    # A PCR change while unlocked stops the cached seed at the next Sign.
    extend_pcr(stack.swtpm.port, 16)
    mismatch = await call_error(stack.client.sign("ed", MESSAGE, "ed25519"))
    assert mismatch.name == ERROR + "PolicyMismatch"
    again = await call_error(stack.client.sign("ed", MESSAGE, "ed25519"))
    assert again.name == ERROR + "PolicyMismatch"  # the TPM no longer unseals


@pytest.mark.asyncio
async def test_import_keys_sign_for_original_key(stack: Stack) -> None:
    originals = {
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "rsa": rsa.generate_private_key(65537, 2048),
        "ed": ed25519.Ed25519PrivateKey.generate(),
    }
    await unlocked(stack)
    for key_id, private_key in originals.items():
        encoded = (pem_private(private_key) if key_id != "p384" else
                   private_key.private_bytes(serialization.Encoding.DER,
                                             serialization.PrivateFormat.TraditionalOpenSSL,
                                             serialization.NoEncryption()))
        public_der = await stack.client.import_key(key_id, encoded, owner_uid=0)
        original_der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert public_der == original_der, key_id

    for key_id, algorithm in (("p256", "ecdsa-sha256"), ("p384", "ecdsa-sha384"),
                              ("rsa", "rsa-pss-sha256"), ("ed", "ed25519")):
        signature = await stack.client.sign(key_id, data_for(algorithm), algorithm)
        original_der = originals[key_id].public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        verify_with_cryptography(original_der, algorithm, signature, MESSAGE)

    # The clear key reaches no file: neither its PEM nor its raw scalar.
    secret = originals["p256"].private_numbers().private_value.to_bytes(32, "big")
    raw_ed = originals["ed"].private_bytes(serialization.Encoding.Raw,
                                           serialization.PrivateFormat.Raw,
                                           serialization.NoEncryption())
    for path in stack.directory.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert secret not in content, path
            assert raw_ed not in content, path
            assert b"PRIVATE KEY" not in content, path


@pytest.mark.asyncio
async def test_import_rejects_bad_keys(stack: Stack) -> None:
    encrypted = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass"))
    p521 = pem_private(ec.generate_private_key(ec.SECP521R1()))

    garbage = await call_error(stack.client.import_key("k", b"not a key", owner_uid=0))
    locked_pem = await call_error(stack.client.import_key("k", encrypted, owner_uid=0))
    curve = await call_error(stack.client.import_key("k", p521, owner_uid=0))
    no_owner = await call_error(stack.client._call(
        "ImportKey", "saya{sv}", ["k", p521, {}]))

    assert garbage.name == ERROR + "InvalidArgument"
    assert "not valid PEM or DER" in garbage.text
    assert locked_pem.name == ERROR + "InvalidArgument"
    assert "encrypted" in locked_pem.text
    assert curve.name == ERROR + "InvalidArgument"
    assert "ECC secp521r1 is not supported" in curve.text
    assert no_owner.name == ERROR + "InvalidArgument"
    assert "owner_uid" in no_owner.text
    assert await stack.client.list_keys() == []
    assert stack.service is not None
    assert "PRIVATE KEY" not in stack.service.log()


@pytest.mark.asyncio
async def test_import_is_admin_only(stack: Stack) -> None:
    pem = pem_private(ec.generate_private_key(ec.SECP256R1()))

    result = busctl_as(65534, stack.dbus.address, "ImportKey", "saya{sv}", "stolen",
                       str(len(pem)), *(str(b) for b in pem), "1", "owner_uid", "u", "0")

    assert result.returncode != 0
    assert "Access denied" in result.stderr  # busctl's text for DBus.Error.AccessDenied
    assert stack.service is not None
    assert "denied ImportKey to" in stack.service.log()
    assert await stack.client.list_keys() == []


def busctl_as(uid: int, address: str, member: str, signature: str,
              *args: str) -> subprocess.CompletedProcess[str]:
    """Call a method as another uid with busctl, which can send a{sv}."""
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
         "busctl", f"--address={address}", "call", "org.webinos.KeyStorage1",
         "/org/webinos/KeyStorage1", "org.webinos.KeyStorage1", member, signature, *args],
        capture_output=True, text=True, timeout=30,
    )


def make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test PZH")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
          request: x509.CertificateSigningRequest) -> x509.Certificate:
    key, ca_cert = ca
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(request.subject)
            .issuer_name(ca_cert.subject).public_key(request.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))


def openssl_req_verify(tmp_path: Path, der: bytes) -> subprocess.CompletedProcess[str]:
    (tmp_path / "req.der").write_bytes(der)
    return subprocess.run(
        ["openssl", "req", "-verify", "-noout", "-inform", "DER", "-in", "req.der"],
        cwd=tmp_path, capture_output=True, text=True)


@pytest.mark.asyncio
async def test_csr_verifies_for_every_key_type(stack: Stack, tmp_path: Path) -> None:
    await unlocked(stack)
    for key_type in ("ecc-p256", "ecc-p384", "rsa-2048", "ed25519"):
        public_der = await stack.client.generate_key(key_type, owner_uid=0,
                                                     key_type=key_type)
        der = await stack.client.create_csr(key_type, "CN=car-pzp,O=webinos")

        result = openssl_req_verify(tmp_path, der)
        request = x509.load_der_x509_csr(der)
        assert result.returncode == 0, (key_type, result.stderr)
        assert "verify OK" in result.stdout + result.stderr
        assert request.is_signature_valid
        assert request.subject.rfc4514_string() == "CN=car-pzp,O=webinos"
        assert request.public_key().public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo) == public_der


@pytest.mark.asyncio
async def test_csr_rejects_bad_requests(stack: Stack) -> None:
    await stack.client.generate_key("pzp", owner_uid=0)
    await unlocked(stack)

    subject = await call_error(stack.client.create_csr("pzp", "no equals sign"))
    algorithm = await call_error(stack.client.create_csr("pzp", "CN=x", "rsa-pss-sha256"))
    stack.vehicle.set(power_mode="OFF")
    await locked(stack)
    gated = await call_error(stack.client.create_csr("pzp", "CN=x"))

    assert subject.name == ERROR + "InvalidArgument"
    assert "'no equals sign' is invalid" in subject.text
    assert algorithm.name == ERROR + "InvalidArgument"
    assert "algorithm = 'rsa-pss-sha256'" in algorithm.text
    assert gated.name == ERROR + "Locked"


@pytest.mark.asyncio
async def test_certificate_chain_stored_and_checked(stack: Stack) -> None:
    await stack.client.generate_key("pzp", owner_uid=0)
    await stack.client.generate_key("other", owner_uid=0)
    await unlocked(stack)
    ca = make_ca()
    leaf = issue(ca, x509.load_der_x509_csr(await stack.client.create_csr("pzp", "CN=pzp")))
    wrong = issue(ca, x509.load_der_x509_csr(await stack.client.create_csr("other", "CN=o")))
    chain = (leaf.public_bytes(serialization.Encoding.PEM)
             + ca[1].public_bytes(serialization.Encoding.PEM))

    missing = await call_error(stack.client.get_certificate("pzp"))
    mismatch = await call_error(stack.client.set_certificate(
        "pzp", wrong.public_bytes(serialization.Encoding.DER)))
    reversed_chain = await call_error(stack.client.set_certificate(
        "pzp", ca[1].public_bytes(serialization.Encoding.PEM)
        + leaf.public_bytes(serialization.Encoding.PEM)))
    junk = await call_error(stack.client.set_certificate("pzp", b"\x30\x03abc"))
    await stack.client.set_certificate("pzp", chain)
    der_chain = (leaf.public_bytes(serialization.Encoding.DER)
                 + ca[1].public_bytes(serialization.Encoding.DER))
    await stack.client.set_certificate("other", wrong.public_bytes(serialization.Encoding.DER))

    assert missing.name == ERROR + "NotFound"
    assert "no certificate yet" in missing.text
    assert mismatch.name == ERROR + "InvalidArgument"
    assert "not the public key of key 'pzp'" in mismatch.text
    assert reversed_chain.name == ERROR + "InvalidArgument"
    assert junk.name == ERROR + "InvalidArgument"
    stored = await stack.client.get_certificate("pzp")
    assert stored == chain
    assert x509.load_pem_x509_certificates(stored)[0] == leaf
    await stack.client.set_certificate("pzp", der_chain)
    assert await stack.client.get_certificate("pzp") == chain
    await can_connected(stack)
    assert stack.stop_service() == 0
    await stack.start_service()
    assert await stack.client.get_certificate("pzp") == chain


@pytest.mark.asyncio
async def test_rotation_keeps_old_key_until_certified(stack: Stack) -> None:
    old_der = await stack.client.generate_key("pzp", owner_uid=0)
    await unlocked(stack)
    ca = make_ca()

    new_der = await stack.client.rotate_key("pzp", "pzp-2")
    again = await call_error(stack.client.rotate_key("pzp", "pzp-3"))
    assert await stack.client.list_keys() == ["pzp", "pzp-2"]
    verify_with_cryptography(old_der, "ecdsa-sha256",
                             await stack.client.sign("pzp", data_for("ecdsa-sha256")),
                             MESSAGE)
    request = x509.load_der_x509_csr(await stack.client.create_csr("pzp-2", "CN=pzp"))
    await stack.client.set_certificate("pzp-2", issue(ca, request).public_bytes(
        serialization.Encoding.PEM))

    assert new_der != old_der
    assert again.name == ERROR + "InvalidArgument"
    assert "already being replaced by 'pzp-2'" in again.text
    assert await stack.client.list_keys() == ["pzp-2"]
    deleted = await call_error(stack.client.sign("pzp", data_for("ecdsa-sha256")))
    assert deleted.name == ERROR + "NotFound"
    verify_with_cryptography(new_der, "ecdsa-sha256",
                             await stack.client.sign("pzp-2", data_for("ecdsa-sha256")),
                             MESSAGE)


@pytest.mark.asyncio
async def test_rotate_changes_key_type(stack: Stack) -> None:
    await stack.client.generate_key("pzp", owner_uid=65534)
    new_der = await stack.client.rotate_key("pzp", "pzp-ed",
                                            {"key_type": Variant("s", "ed25519")})
    denied = busctl_as(65534, stack.dbus.address, "RotateKey", "ssa{sv}", "pzp", "pzp-x",
                       "0")

    key = serialization.load_der_public_key(new_der)
    assert isinstance(key, ed25519.Ed25519PublicKey)
    assert denied.returncode != 0
    assert "Access denied" in denied.stderr
    assert stack.service is not None
    assert "denied RotateKey to" in stack.service.log()


def policy_sign(tmp_path: Path, key: Path, release: int, port: int | None = None,
                values: Path | None = None) -> Path:
    output = tmp_path / f"release-{release}.json"
    source = ["--tcti", f"swtpm:host=127.0.0.1,port={port}"] if port else [
        "--values", str(values)]
    result = subprocess.run(
        [sys.executable, "-m", "vehicle_keysvc.cli", "policy", "sign", "--key", str(key),
         "--pcrs", "sha256:7,16", *source, "--policy-ref", POLICY_REF,
         "--release", str(release), "--output", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"signed policy for release {release}" in result.stdout
    return output


async def policy_load(stack: Stack, path: Path) -> tuple[int, str, str]:
    """Run ``vehicle-keysvc policy load`` without blocking the simulator's loop."""
    loader = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vehicle_keysvc.cli", "policy", "load", str(path),
        "--bus", stack.dbus.address, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(loader.communicate(), timeout=60)
    assert loader.returncode is not None
    return loader.returncode, stdout.decode(), stderr.decode()


async def with_policy_config(stack: Stack, oem_key: ec.EllipticCurvePrivateKey) -> None:
    """Restart the service with a [policy] section naming ``oem_key``."""
    (stack.directory / "oem.pem").write_bytes(pem_public(oem_key))
    text = stack.config.read_text()
    stack.config.write_text(text + f'\n[policy]\noem_public_key = "oem.pem"\n'
                                   f'policy_ref = "{POLICY_REF}"\n')
    await can_connected(stack)
    assert stack.stop_service() == 0
    await stack.start_service()


@pytest.mark.asyncio
async def test_signed_policy_over_the_air_update(stack: Stack, tmp_path: Path) -> None:
    oem = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "oem-private.pem").write_bytes(pem_private(oem))
    await with_policy_config(stack, oem)
    port = stack.swtpm.port
    authorized = {"owner_uid": Variant("u", 0), "policy": Variant("s", "authorized")}

    # Release 1 is built, measured on a reference unit and signed.
    release1 = policy_sign(tmp_path, tmp_path / "oem-private.pem", 1, port=port)
    code, stdout, stderr = await policy_load(stack, release1)
    assert code == 0, stderr
    assert "signed policy loaded; release counter is 1" in stdout
    public_der = await stack.client.generate("pzp", "ecc-p256", authorized)
    ed_der = await stack.client.generate("pzp-ed", "ed25519", authorized)
    await unlocked(stack)
    verify_with_cryptography(public_der, "ecdsa-sha256",
                             await stack.client.sign("pzp", data_for("ecdsa-sha256")),
                             MESSAGE)
    verify_with_cryptography(ed_der, "ed25519",
                             await stack.client.sign("pzp-ed", MESSAGE, "ed25519"), MESSAGE)

    # The update installs new software: the measured PCR changes.
    extend_pcr(port, 16)
    old = await call_error(stack.client.sign("pzp", data_for("ecdsa-sha256")))
    assert old.name == ERROR + "PolicyMismatch"
    assert "signed policy for release 1" in old.text
    old_ed = await call_error(stack.client.sign("pzp-ed", MESSAGE, "ed25519"))
    assert old_ed.name == ERROR + "PolicyMismatch"
    assert "signed policy for release 1" in old_ed.text

    # The OEM signs the new values (here from a values file) and the car loads them.
    values = tmp_path / "release-2.pcrs"
    values.write_text("sha256:\n" + "".join(
        f"  {i} : 0x{v.hex().upper()}\n" for i, v in read_pcrs(port, (7, 16)).items()))
    release2 = policy_sign(tmp_path, tmp_path / "oem-private.pem", 2, values=values)
    assert await stack.client.load_policy(release2.read_bytes()) == 2
    # policy_sign blocked this event loop and with it the simulated car, so
    # the gate locked for lack of frames; wait until the car confirms again.
    await unlocked(stack)

    # The same keys sign again, without being re-created.
    assert await stack.client.get_public_key("pzp") == public_der
    verify_with_cryptography(public_der, "ecdsa-sha256",
                             await stack.client.sign("pzp", data_for("ecdsa-sha256")),
                             MESSAGE)
    verify_with_cryptography(ed_der, "ed25519",
                             await stack.client.sign("pzp-ed", MESSAGE, "ed25519"), MESSAGE)

    # Rollback to release 1 is rejected, and so is a policy from another signer.
    rollback = await call_error(stack.client.load_policy(release1.read_bytes()))
    assert rollback.name == ERROR + "InvalidArgument"
    assert "rollback" in rollback.text
    code, _, stderr = await policy_load(stack, release1)
    assert code == 2
    assert "rollback to an older release is rejected" in stderr
    assert "(InvalidArgument)" in stderr
    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "other.pem").write_bytes(pem_private(other))
    forged = policy_sign(tmp_path, tmp_path / "other.pem", 3, port=port)
    rejected = await call_error(stack.client.load_policy(forged.read_bytes()))
    assert rejected.name == ERROR + "InvalidArgument"
    assert "not signed by the configured OEM policy key" in rejected.text

    # After a restart the stored release 2 policy is used again.
    await can_connected(stack)
    assert stack.stop_service() == 0
    await stack.start_service()
    await unlocked(stack)
    verify_with_cryptography(public_der, "ecdsa-sha256",
                             await stack.client.sign("pzp", data_for("ecdsa-sha256")),
                             MESSAGE)
    assert transient_handles(port) == []


@pytest.mark.asyncio
async def test_load_policy_checks(stack: Stack, tmp_path: Path) -> None:
    unconfigured = await call_error(stack.client.load_policy(b"{}"))
    authorized = await call_error(stack.client.generate(
        "pzp", "ecc-p256", {"owner_uid": Variant("u", 0),
                            "policy": Variant("s", "authorized")}))
    oem = ec.generate_private_key(ec.SECP256R1())
    await with_policy_config(stack, oem)
    malformed = await call_error(stack.client.load_policy(b"{not json"))
    denied = dbus_send_as(65534, stack.dbus.address, "org.webinos.KeyStorage1.LoadPolicy",
                          "array:byte:123,125")

    assert unconfigured.name == ERROR + "InvalidArgument"
    assert "oem_public_key" in unconfigured.text
    assert authorized.name == ERROR + "InvalidArgument"
    assert "needs an OEM policy key" in authorized.text
    assert malformed.name == ERROR + "InvalidArgument"
    assert "malformed" in malformed.text
    assert denied.returncode != 0
    assert "LoadPolicy is for administrators" in denied.stderr


@pytest.mark.asyncio
async def test_damaged_policy_files_at_start(stack: Stack, tmp_path: Path) -> None:
    oem = ec.generate_private_key(ec.SECP256R1())
    await with_policy_config(stack, oem)
    await stack.client.generate("pzp", "ecc-p256", {"owner_uid": Variant("u", 0),
                                                    "policy": Variant("s", "authorized")})
    # A stored signed policy that was tampered with is logged, not fatal.
    (stack.directory / "signed-policy.json").write_text('{"format": "other"}')
    await can_connected(stack)
    assert stack.stop_service() == 0
    await stack.start_service()
    await unlocked(stack)
    error = await call_error(stack.client.sign("pzp", data_for("ecdsa-sha256")))
    assert error.name == ERROR + "PolicyMismatch"
    assert "none is loaded" in error.text
    assert stack.service is not None
    assert "cannot use the signed policy" in stack.service.log()

    # An OEM key file that is not a PEM public key stops the service at start.
    (stack.directory / "oem.pem").write_text("not a key")
    await can_connected(stack)
    assert stack.stop_service() == 0

    broken = ServiceProcess(stack.config, stack.directory / "broken.log")
    try:
        broken.proc.wait(timeout=30)
    finally:
        broken.stop()
    assert broken.proc.returncode == 2
    assert "[policy] oem_public_key" in broken.log()
    assert "not a PEM public key" in broken.log()
