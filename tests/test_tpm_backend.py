"""TPM backend on a real swtpm: SRK, PCR-bound keys, signing, recovery."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from tpm_tools import extend_pcr, persistent_handles, transient_handles
from vehicle_keysvc.errors import PolicyMismatch, TpmUnavailable
from vehicle_keysvc.tpm import SRK_HANDLE, PcrSelection, TpmBackend

SELECTION = PcrSelection.parse("sha256:7,16")


def verify(public_der: bytes, signature: bytes, digest: bytes) -> None:
    key = serialization.load_der_public_key(public_der)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


@pytest.mark.asyncio
async def test_sign_verifies_with_cryptography(swtpm) -> None:
    tpm = TpmBackend(swtpm.tcti)
    await tpm.start()
    try:
        blobs, public_der = await tpm.create_key(SELECTION)
        digest = hashlib.sha256(b"pzp hello").digest()
        signature = await tpm.sign(blobs, digest)
        verify(public_der, signature, digest)
        with pytest.raises(InvalidSignature):
            verify(public_der, signature, hashlib.sha256(b"other").digest())
        assert await tpm.public_key(blobs) == public_der
    finally:
        await tpm.close()
    assert transient_handles(swtpm.port) == []


@pytest.mark.asyncio
async def test_sign_verifies_with_openssl(swtpm, tmp_path: Path) -> None:
    tpm = TpmBackend(swtpm.tcti)
    await tpm.start()
    try:
        blobs, public_der = await tpm.create_key(SELECTION)
        digest = hashlib.sha256(b"openssl check").digest()
        signature = await tpm.sign(blobs, digest)
    finally:
        await tpm.close()
    (tmp_path / "pub.der").write_bytes(public_der)
    (tmp_path / "digest.bin").write_bytes(digest)
    (tmp_path / "sig.der").write_bytes(signature)
    result = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-keyform", "DER",
         "-inkey", "pub.der", "-in", "digest.bin", "-sigfile", "sig.der"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "Signature Verified Successfully" in result.stdout


@pytest.mark.asyncio
async def test_srk_persistent_and_reused(swtpm) -> None:
    first = TpmBackend(swtpm.tcti)
    await first.start()
    await first.close()
    assert persistent_handles(swtpm.port) == [SRK_HANDLE]
    second = TpmBackend(swtpm.tcti)
    await second.start()
    try:
        blobs, public_der = await second.create_key(SELECTION)
        digest = bytes(32)
        verify(public_der, await second.sign(blobs, digest), digest)
    finally:
        await second.close()
    assert persistent_handles(swtpm.port) == [SRK_HANDLE]


@pytest.mark.asyncio
async def test_extended_pcr_gives_policy_mismatch(swtpm) -> None:
    tpm = TpmBackend(swtpm.tcti)
    await tpm.start()
    try:
        blobs, _ = await tpm.create_key(SELECTION)
        await tpm.sign(blobs, bytes(32))
        extend_pcr(swtpm.port, 16)
        with pytest.raises(PolicyMismatch, match="platform state differs"):
            await tpm.sign(blobs, bytes(32))
        # The backend stays usable: a key bound to the new values signs.
        new_blobs, public_der = await tpm.create_key(SELECTION)
        verify(public_der, await tpm.sign(new_blobs, bytes(32)), bytes(32))
    finally:
        await tpm.close()
    assert transient_handles(swtpm.port) == []


@pytest.mark.asyncio
async def test_reset_gives_unavailable_then_recovers(swtpm) -> None:
    tpm = TpmBackend(swtpm.tcti)
    await tpm.start()
    try:
        blobs, public_der = await tpm.create_key(SELECTION)
        swtpm.reset()
        with pytest.raises(TpmUnavailable, match="reset"):
            await tpm.sign(blobs, bytes(32))
        for _ in range(100):
            if tpm.available:
                break
            await asyncio.sleep(0.05)
        assert tpm.available
        signature = await tpm.sign(blobs, bytes(32))
        verify(public_der, signature, bytes(32))
    finally:
        await tpm.close()


@pytest.mark.asyncio
async def test_unreachable_tpm_is_unavailable() -> None:
    from sim.processes import free_port

    tpm = TpmBackend(f"swtpm:host=127.0.0.1,port={free_port()}")
    with pytest.raises(TpmUnavailable, match="cannot open TPM TCTI"):
        await tpm.start()
    await tpm.close()


def test_pcr_selection_rejects_bad_text() -> None:
    from vehicle_keysvc.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="sha256:0,2,4,7"):
        PcrSelection.parse("sha512:7")
    with pytest.raises(InvalidArgument, match="0..23"):
        PcrSelection.parse("sha256:24")
    assert str(PcrSelection.parse("sha256:7,0,7")) == "sha256:0,7"


@pytest.mark.asyncio
async def test_swtpm_restart_recovers(swtpm) -> None:
    tpm = TpmBackend(swtpm.tcti)
    await tpm.start()
    try:
        blobs, public_der = await tpm.create_key(SELECTION)
        swtpm.stop()
        with pytest.raises(TpmUnavailable):
            await tpm.sign(blobs, bytes(32))
        with pytest.raises(TpmUnavailable):
            await tpm.sign(blobs, bytes(32))
        swtpm.restart()
        for _ in range(200):
            if tpm.available:
                break
            await asyncio.sleep(0.05)
        assert tpm.available
        verify(public_der, await tpm.sign(blobs, bytes(32)), bytes(32))
    finally:
        await tpm.close()


def test_pcr_selection_rejects_huge_index() -> None:
    from vehicle_keysvc.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="is invalid"):
        PcrSelection.parse("sha256:" + "9" * 5000)
