"""Unsealed Ed25519 seeds and the gate, with a fake TPM; authorized keys after a reset."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from test_key_types_tpm import POLICY_REF, pcr_values
from test_keyservice import ADMIN, OWNER, unlocked_monitor
from vehicle_keysvc.algorithms import KEY_TYPES
from vehicle_keysvc.callers import AccessPolicy
from vehicle_keysvc.errors import Locked, TpmUnavailable
from vehicle_keysvc.keyservice import KeyService
from vehicle_keysvc.keystore import KeyRecord, KeyStore
from vehicle_keysvc.policy import oem_key_name, sign_policy
from vehicle_keysvc.tpm import Authorization, KeyBlobs, PcrSelection, TpmBackend

SELECTION = PcrSelection.parse("sha256:7")
SEED = bytes(range(32))


class SealingTpm:
    """Unseals a fixed seed, blocking until the test releases it."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.unsealed: list[bytearray] = []
        self.checks = 0

    async def check_policy(self, blobs: KeyBlobs) -> None:
        self.checks += 1

    async def unseal(self, blobs: KeyBlobs) -> bytearray:
        self.started.set()
        await self.release.wait()
        seed = bytearray(SEED)
        self.unsealed.append(seed)
        return seed


def make_service(tmp_path, tpm):
    monitor, vehicle, now = unlocked_monitor()
    store = KeyStore(tmp_path)
    store.load()
    public_der = ed25519.Ed25519PrivateKey.from_private_bytes(SEED).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    store.add(KeyRecord("ed", "ed25519", OWNER.uid, KeyBlobs(b"p", b"q", SELECTION),
                        public_der))
    service = KeyService(store, tpm, monitor, AccessPolicy(frozenset({0})), SELECTION)
    return service, monitor, vehicle, now, public_der


@pytest.mark.asyncio
async def test_seed_cached_until_lock(tmp_path) -> None:
    tpm = SealingTpm()
    tpm.release.set()
    service, monitor, vehicle, now, public_der = make_service(tmp_path, tpm)

    first = await service.sign(OWNER, "ed", b"one", "ed25519")
    second = await service.sign(OWNER, "ed", b"two", "ed25519")
    key = serialization.load_der_public_key(public_der)
    key.verify(first, b"one")
    key.verify(second, b"two")
    assert len(tpm.unsealed) == 1  # the second Sign used the cached seed
    assert tpm.checks == 1  # after the TPM checked the policy again
    assert len(service.seeds) == 1

    vehicle.set(power_mode="OFF")
    monitor.on_frame(vehicle.encode("VCU_PowerMode", timestamp=now), now)

    assert len(service.seeds) == 0
    assert tpm.unsealed[0] == bytearray(32)  # overwritten with zeros
    with pytest.raises(Locked):
        await service.sign(OWNER, "ed", b"three", "ed25519")
    assert len(tpm.unsealed) == 1  # never unsealed while locked


@pytest.mark.asyncio
async def test_lock_during_unseal_wipes_seed(tmp_path) -> None:
    tpm = SealingTpm()
    service, monitor, vehicle, now, _ = make_service(tmp_path, tpm)
    pending = asyncio.create_task(service.sign(OWNER, "ed", b"message", "ed25519"))
    await tpm.started.wait()

    vehicle.set(power_mode="OFF")
    monitor.on_frame(vehicle.encode("VCU_PowerMode", timestamp=now), now)
    tpm.release.set()

    with pytest.raises(Locked, match="locked while signing"):
        await pending
    assert tpm.unsealed[0] == bytearray(32)
    assert len(service.seeds) == 0


@pytest.mark.asyncio
async def test_delete_wipes_seed(tmp_path) -> None:
    tpm = SealingTpm()
    tpm.release.set()
    service, *_ = make_service(tmp_path, tpm)
    await service.sign(OWNER, "ed", b"message", "ed25519")

    await service.delete_key(ADMIN, "ed")

    assert len(service.seeds) == 0
    assert tpm.unsealed[0] == bytearray(32)


@pytest.mark.asyncio
async def test_authorized_key_after_tpm_reset(swtpm) -> None:
    oem = ec.generate_private_key(ec.SECP256R1())
    pem = oem.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    tpm = TpmBackend(swtpm.tcti)
    await tpm.start()
    try:
        await tpm.load_policy(sign_policy(oem, POLICY_REF, 1, "sha256", (7, 16),
                                          pcr_values(swtpm.port, (7, 16))), pem)
        blobs, _ = await tpm.create_key(PcrSelection.parse("sha256:7,16"),
                                        KEY_TYPES["ecc-p256"],
                                        Authorization(oem_key_name(pem), POLICY_REF))
        digest = hashlib.sha256(b"before").digest()
        await tpm.sign(blobs, digest)
        swtpm.reset()  # PCR 16 is reset to zeros, as it was when the policy was signed
        with pytest.raises(TpmUnavailable):
            await tpm.sign(blobs, digest)
        for _ in range(100):
            if tpm.available:
                break
            await asyncio.sleep(0.05)
        assert tpm.available
        # The ticket from TPM2_VerifySignature survives the reset.
        await tpm.sign(blobs, hashlib.sha256(b"after").digest())
    finally:
        await tpm.close()


@pytest.mark.asyncio
async def test_gate_policy_lock_wipes_seed(tmp_path) -> None:
    """A lock of the key's own gate policy has no event; the refused Sign wipes."""
    from test_keyservice import policy_service

    service, monitor, vehicle, now = policy_service(tmp_path)
    tpm = SealingTpm()
    tpm.release.set()
    service.tpm = tpm
    public_der = ed25519.Ed25519PrivateKey.from_private_bytes(SEED).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    service.store.add(KeyRecord("pay-ed", "ed25519", OWNER.uid,
                                KeyBlobs(b"p", b"q", SELECTION), public_der,
                                gate_policy="payment"))
    await service.sign(OWNER, "pay-ed", b"parked", "ed25519")
    assert len(service.seeds) == 1

    vehicle.set(gear="D")  # the payment policy locks; the default gate stays open
    monitor.on_frame(vehicle.encode("TCU_GearSelection", timestamp=now), now)

    assert monitor.locked is False
    with pytest.raises(Locked, match="gate policy 'payment'"):
        await service.sign(OWNER, "pay-ed", b"driving", "ed25519")
    assert len(service.seeds) == 0
    assert tpm.unsealed[0] == bytearray(32)
