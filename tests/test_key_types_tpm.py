"""Key types, import and signed policies on a real swtpm."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from tpm_tools import extend_pcr, read_pcrs, transient_handles, trial_policy_digest
from vehicle_keysvc.algorithms import KEY_TYPES, SIGN_ALGORITHMS
from vehicle_keysvc.errors import InvalidArgument, PolicyMismatch
from vehicle_keysvc.policy import (
    DEFAULT_COUNTER_INDEX,
    oem_key_name,
    sign_policy,
)
from vehicle_keysvc.tpm import Authorization, PcrSelection, TpmBackend

SELECTION = PcrSelection.parse("sha256:7,16")
MESSAGE = b"webinos PZP authentication"
POLICY_REF = b"webinos-headunit-A"
HASHES = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}


def verify_with_cryptography(public_der: bytes, algorithm: str, signature: bytes,
                             message: bytes) -> None:
    """Verify over the message; raise InvalidSignature if it does not match.

    RSA-PSS is checked with a salt as long as the digest, as the README states.
    """
    key = serialization.load_der_public_key(public_der)
    spec = SIGN_ALGORITHMS[algorithm]
    if spec.family == "ed25519":
        assert isinstance(key, ed25519.Ed25519PublicKey)
        key.verify(signature, message)
    elif spec.family == "ecdsa":
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(signature, message, ec.ECDSA(HASHES[spec.hash_name]))
    else:
        assert isinstance(key, rsa.RSAPublicKey)
        chosen = HASHES[spec.hash_name]
        pad = (padding.PKCS1v15() if spec.family == "rsassa" else
               padding.PSS(mgf=padding.MGF1(chosen), salt_length=spec.digest_size))
        key.verify(signature, message, pad, chosen)


def verify_with_openssl(tmp_path: Path, public_der: bytes, algorithm: str,
                        signature: bytes, message: bytes) -> subprocess.CompletedProcess[str]:
    spec = SIGN_ALGORITHMS[algorithm]
    (tmp_path / "pub.der").write_bytes(public_der)
    (tmp_path / "msg.bin").write_bytes(message)
    (tmp_path / "sig.bin").write_bytes(signature)
    command = ["openssl", "pkeyutl", "-verify", "-pubin", "-keyform", "DER",
               "-inkey", "pub.der", "-sigfile", "sig.bin"]
    if spec.family == "ed25519":
        command += ["-rawin", "-in", "msg.bin"]
    else:
        digest = hashlib.new(spec.hash_name, message).digest()
        (tmp_path / "digest.bin").write_bytes(digest)
        command += ["-in", "digest.bin", "-pkeyopt", f"digest:{spec.hash_name}"]
        if spec.family == "rsapss":
            command += ["-pkeyopt", "rsa_padding_mode:pss", "-pkeyopt", "rsa_pss_saltlen:auto"]
        elif spec.family == "rsassa":
            command += ["-pkeyopt", "rsa_padding_mode:pkcs1"]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)


async def sign_with(tpm: TpmBackend, blobs, algorithm: str, message: bytes) -> bytes:
    spec = SIGN_ALGORITHMS[algorithm]
    if spec.family == "ed25519":
        seed = await tpm.unseal(blobs)
        try:
            return ed25519.Ed25519PrivateKey.from_private_bytes(bytes(seed)).sign(message)
        finally:
            seed[:] = bytes(len(seed))
    digest = hashlib.new(spec.hash_name, message).digest()
    return await tpm.sign(blobs, digest, spec)


CASES = [(key_type, algorithm) for key_type, spec in KEY_TYPES.items()
         for algorithm in spec.algorithms]


@pytest.mark.asyncio
async def test_every_key_type_and_algorithm(swtpm, tmp_path: Path) -> None:
    tpm = TpmBackend(swtpm.tcti)
    await tpm.start()
    try:
        created = {}
        for key_type in KEY_TYPES:
            created[key_type] = await tpm.create_key(SELECTION, KEY_TYPES[key_type])
        for key_type, algorithm in CASES:
            blobs, public_der = created[key_type]
            signature = await sign_with(tpm, blobs, algorithm, MESSAGE)

            verify_with_cryptography(public_der, algorithm, signature, MESSAGE)
            result = verify_with_openssl(tmp_path, public_der, algorithm, signature, MESSAGE)
            assert result.returncode == 0, (key_type, algorithm, result.stderr)
            assert "Signature Verified Successfully" in result.stdout
            bad = verify_with_openssl(tmp_path, public_der, algorithm, signature, b"other")
            assert bad.returncode != 0, (key_type, algorithm)
    finally:
        await tpm.close()
    assert transient_handles(swtpm.port) == []


@pytest.mark.asyncio
async def test_sealed_seed_follows_pcr_policy(swtpm) -> None:
    tpm = TpmBackend(swtpm.tcti)
    await tpm.start()
    try:
        blobs, _ = await tpm.create_key(SELECTION, KEY_TYPES["ed25519"])
        assert len(await tpm.unseal(blobs)) == 32
        extend_pcr(swtpm.port, 16)
        with pytest.raises(PolicyMismatch):
            await tpm.unseal(blobs)
    finally:
        await tpm.close()


def private_keys() -> dict[str, object]:
    return {
        "ecc-p256": ec.generate_private_key(ec.SECP256R1()),
        "ecc-p384": ec.generate_private_key(ec.SECP384R1()),
        "rsa-2048": rsa.generate_private_key(65537, 2048),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }


@pytest.mark.asyncio
async def test_imported_keys_sign_for_original_public_key(swtpm) -> None:
    tpm = TpmBackend(swtpm.tcti)
    await tpm.start()
    try:
        for key_type, private_key in private_keys().items():
            original = private_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            blobs, public_der = await tpm.import_key(KEY_TYPES[key_type], private_key,
                                                     SELECTION)
            algorithm = KEY_TYPES[key_type].algorithms[0]
            signature = await sign_with(tpm, blobs, algorithm, MESSAGE)

            assert public_der == original, key_type
            verify_with_cryptography(original, algorithm, signature, MESSAGE)
        rsa_blobs, _ = await tpm.import_key(KEY_TYPES["rsa-2048"],
                                            rsa.generate_private_key(65537, 2048), SELECTION)
        extend_pcr(swtpm.port, 16)
        with pytest.raises(PolicyMismatch):
            await tpm.sign(rsa_blobs, bytes(32), SIGN_ALGORITHMS["rsa-pss-sha256"])
    finally:
        await tpm.close()
    assert transient_handles(swtpm.port) == []


def pcr_values(port: int, indices: tuple[int, ...]) -> dict[int, bytes]:
    return read_pcrs(port, indices)


@pytest.mark.asyncio
async def test_software_digests_match_tpm_trial(swtpm) -> None:
    oem = ec.generate_private_key(ec.SECP256R1())
    pem = oem.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    tpm = TpmBackend(swtpm.tcti)
    await tpm.start()
    try:
        policy = sign_policy(oem, POLICY_REF, 1, "sha256", (7, 16),
                             pcr_values(swtpm.port, (7, 16)))
        await tpm.load_policy(policy, pem)  # defines the counter
    finally:
        await tpm.close()
    trial = trial_policy_digest(swtpm.port, (7, 16), DEFAULT_COUNTER_INDEX, 1)
    assert policy.approved_policy == trial


@pytest.mark.asyncio
async def test_signed_policy_survives_pcr_change(swtpm) -> None:
    oem = ec.generate_private_key(ec.SECP256R1())
    pem = oem.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    authorization = Authorization(oem_key_name(pem), POLICY_REF)
    tpm = TpmBackend(swtpm.tcti)
    await tpm.start()
    try:
        release1 = sign_policy(oem, POLICY_REF, 1, "sha256", (7, 16),
                               pcr_values(swtpm.port, (7, 16)))
        assert await tpm.load_policy(release1, pem) == 1
        for key_type in ("ecc-p256", "ed25519"):
            blobs, public_der = await tpm.create_key(SELECTION, KEY_TYPES[key_type],
                                                     authorization)
            algorithm = KEY_TYPES[key_type].algorithms[0]
            verify_with_cryptography(public_der, algorithm,
                                     await sign_with(tpm, blobs, algorithm, MESSAGE),
                                     MESSAGE)

        extend_pcr(swtpm.port, 16)  # the update changes the measured software
        with pytest.raises(PolicyMismatch, match="release 1"):
            await sign_with(tpm, blobs, "ed25519", MESSAGE)

        release2 = sign_policy(oem, POLICY_REF, 2, "sha256", (7, 16),
                               pcr_values(swtpm.port, (7, 16)))
        assert await tpm.load_policy(release2, pem) == 2
        verify_with_cryptography(public_der, "ed25519",
                                 await sign_with(tpm, blobs, "ed25519", MESSAGE), MESSAGE)

        with pytest.raises(InvalidArgument, match="rollback"):
            await tpm.load_policy(release1, pem)
        assert await tpm.release_counter(DEFAULT_COUNTER_INDEX) == 2
    finally:
        await tpm.close()
    assert transient_handles(swtpm.port) == []


@pytest.mark.asyncio
async def test_counter_revokes_old_policy_in_tpm(swtpm) -> None:
    """A policy already loaded fails in the TPM once the counter passes its release."""
    oem = ec.generate_private_key(ec.SECP256R1())
    pem = oem.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    authorization = Authorization(oem_key_name(pem), POLICY_REF)
    values = pcr_values(swtpm.port, (7, 16))
    first = TpmBackend(swtpm.tcti)
    second = TpmBackend(swtpm.tcti)
    await first.start()
    await second.start()
    try:
        await first.load_policy(sign_policy(oem, POLICY_REF, 1, "sha256", (7, 16), values),
                                pem)
        blobs, _ = await first.create_key(SELECTION, KEY_TYPES["ecc-p256"], authorization)
        await first.sign(blobs, bytes(32))
        # Release 2 runs with the same PCR values; another process loads it.
        await second.load_policy(sign_policy(oem, POLICY_REF, 2, "sha256", (7, 16), values),
                                 pem)
        with pytest.raises(PolicyMismatch, match="revoked"):
            await first.sign(blobs, bytes(32))
        await second.sign(blobs, bytes(32))
    finally:
        await first.close()
        await second.close()


@pytest.mark.asyncio
async def test_policy_signed_by_other_key_rejected(swtpm) -> None:
    oem = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    pem = oem.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    tpm = TpmBackend(swtpm.tcti)
    await tpm.start()
    try:
        forged = sign_policy(other, POLICY_REF, 1, "sha256", (7, 16),
                             pcr_values(swtpm.port, (7, 16)))
        with pytest.raises(InvalidArgument, match="not signed by the configured OEM"):
            await tpm.load_policy(forged, pem)
        assert tpm.policy is None
    finally:
        await tpm.close()


@pytest.mark.asyncio
async def test_stale_transient_handles_flushed_at_start(swtpm) -> None:
    from tpm_tools import leave_transient_loaded

    leave_transient_loaded(swtpm.port)
    assert len(transient_handles(swtpm.port)) == 1
    tpm = TpmBackend(swtpm.tcti)
    await tpm.start()
    await tpm.close()
    assert transient_handles(swtpm.port) == []


@pytest.mark.asyncio
async def test_lockout_keeps_noda_keys_working(swtpm, caplog) -> None:
    from tpm_tools import enter_lockout

    tpm = TpmBackend(swtpm.tcti)
    await tpm.start()
    try:
        blobs, _ = await tpm.create_key(SELECTION)
    finally:
        await tpm.close()
    enter_lockout(swtpm.port)
    tpm = TpmBackend(swtpm.tcti)
    with caplog.at_level("ERROR", logger="vehicle_keysvc.tpm"):
        await tpm.start()
    try:
        assert "dictionary-attack lockout" in caplog.text
        await tpm.sign(blobs, bytes(32))
    finally:
        await tpm.close()


def test_lockout_code_translated() -> None:
    from tpm2_pytss import TSS2_Exception

    from vehicle_keysvc.errors import TpmLockout

    tpm = TpmBackend("swtpm:host=127.0.0.1,port=1")
    error = tpm._translate(TSS2_Exception(0x921))
    assert isinstance(error, TpmLockout)
    assert "dictionary-attack lockout" in str(error)
    tpm._executor.shutdown()


def key_with_short_field(field: str) -> ec.EllipticCurvePrivateKey:
    """Generate P-256 keys until ``field`` (x or d) has a leading zero byte."""
    while True:
        key = ec.generate_private_key(ec.SECP256R1())
        numbers = key.private_numbers()
        value = numbers.public_numbers.x if field == "x" else numbers.private_value
        if value < 2**248:
            return key


@pytest.mark.asyncio
async def test_leading_zero_keys_import_and_authorize(swtpm) -> None:
    short_x = key_with_short_field("x")
    short_d = key_with_short_field("d")
    pem = short_x.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    tpm = TpmBackend(swtpm.tcti)
    await tpm.start()
    try:
        for private_key in (short_x, short_d):
            blobs, public_der = await tpm.import_key(KEY_TYPES["ecc-p256"], private_key,
                                                     SELECTION)
            signature = await sign_with(tpm, blobs, "ecdsa-sha256", MESSAGE)
            verify_with_cryptography(public_der, "ecdsa-sha256", signature, MESSAGE)
        policy = sign_policy(short_x, POLICY_REF, 1, "sha256", (7, 16),
                             pcr_values(swtpm.port, (7, 16)))
        assert await tpm.load_policy(policy, pem) == 1
    finally:
        await tpm.close()


def test_oversized_policy_signature_rejected() -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    from vehicle_keysvc.tpm_encoding import ecdsa_signature

    with pytest.raises(InvalidArgument, match="not a DER ECDSA P-256 signature"):
        ecdsa_signature(encode_dss_signature(2**300, 1))
    with pytest.raises(InvalidArgument, match="not a DER ECDSA P-256 signature"):
        ecdsa_signature(b"\x30\x00junk")
