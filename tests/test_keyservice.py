"""KeyService core with a fake TPM: gate checks around a running Sign."""

from __future__ import annotations

import asyncio

import pytest

from conftest import REFERENCE_PROFILE
from sim.vehicle import ReferenceVehicle
from vehicle_keysvc.callers import AccessPolicy, Caller
from vehicle_keysvc.errors import AccessDenied, InvalidArgument, Locked
from vehicle_keysvc.gate_policy import parse_policies
from vehicle_keysvc.keyservice import KeyService
from vehicle_keysvc.keystore import KeyRecord, KeyStore
from vehicle_keysvc.monitor import VehicleMonitor
from vehicle_keysvc.profile import load_profile
from vehicle_keysvc.tpm import KeyBlobs, PcrSelection

SELECTION = PcrSelection.parse("sha256:7")
OWNER = Caller(":1.10", uid=1000, pid=42)
ADMIN = Caller(":1.11", uid=0, pid=43)
STRANGER = Caller(":1.12", uid=1001, pid=44)


class BlockingTpm:
    """Signs only when the test releases it, to put a lock in the middle."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def sign(self, blobs: KeyBlobs, digest: bytes, algorithm: object = None) -> bytes:
        self.started.set()
        await self.release.wait()
        return b"signature"


def unlocked_monitor() -> tuple[VehicleMonitor, ReferenceVehicle, float]:
    monitor = VehicleMonitor(load_profile(REFERENCE_PROFILE))
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED")
    now = 0.0
    while now < 1.0:
        for frame in vehicle.due_frames(now):
            monitor.on_frame(frame, now)
        now += 0.01
    assert monitor.locked is False
    return monitor, vehicle, now


def make_service(tmp_path, tpm) -> tuple[KeyService, VehicleMonitor, ReferenceVehicle, float]:
    monitor, vehicle, now = unlocked_monitor()
    store = KeyStore(tmp_path)
    store.load()
    store.add(KeyRecord("pzp", "ecc-p256", OWNER.uid, KeyBlobs(b"p", b"q", SELECTION), b"der"))
    service = KeyService(store, tpm, monitor, AccessPolicy(frozenset({0})), SELECTION)
    return service, monitor, vehicle, now


@pytest.mark.asyncio
async def test_lock_during_sign_discards_signature(tmp_path) -> None:
    tpm = BlockingTpm()
    service, monitor, vehicle, now = make_service(tmp_path, tpm)
    pending = asyncio.create_task(service.sign(OWNER, "pzp", bytes(32), "ecdsa-sha256"))
    await tpm.started.wait()

    vehicle.set(power_mode="OFF")
    monitor.on_frame(vehicle.encode("VCU_PowerMode", timestamp=now), now)
    tpm.release.set()

    with pytest.raises(Locked, match="locked while signing"):
        await pending


@pytest.mark.asyncio
async def test_lock_and_unlock_during_sign_still_refuses(tmp_path) -> None:
    tpm = BlockingTpm()
    service, monitor, vehicle, now = make_service(tmp_path, tpm)
    pending = asyncio.create_task(service.sign(OWNER, "pzp", bytes(32), "ecdsa-sha256"))
    await tpm.started.wait()
    monitor.tick(now + 5.0)  # every fact stale: locked
    assert monitor.locked is True
    vehicle.set(power_mode="RUN")
    t = now + 5.0
    while monitor.locked and t < now + 7.0:
        for frame in vehicle.due_frames(t):
            monitor.on_frame(frame, t)
        t += 0.01
    assert monitor.locked is False
    tpm.release.set()
    with pytest.raises(Locked):
        await pending


@pytest.mark.asyncio
async def test_sign_succeeds_when_gate_stays_open(tmp_path) -> None:
    tpm = BlockingTpm()
    tpm.release.set()
    service, *_ = make_service(tmp_path, tpm)
    assert await service.sign(OWNER, "pzp", bytes(32), "ecdsa-sha256") == b"signature"


@pytest.mark.asyncio
async def test_access_rules(tmp_path) -> None:
    tpm = BlockingTpm()
    tpm.release.set()
    service, *_ = make_service(tmp_path, tpm)
    assert service.list_keys(OWNER) == ["pzp"]
    assert service.list_keys(ADMIN) == ["pzp"]
    assert service.list_keys(STRANGER) == []
    assert await service.get_public_key(ADMIN, "pzp") == b"der"
    with pytest.raises(AccessDenied, match="uid 0 may not use key 'pzp'"):
        await service.sign(ADMIN, "pzp", bytes(32), "ecdsa-sha256")
    with pytest.raises(AccessDenied):
        await service.get_public_key(STRANGER, "pzp")
    with pytest.raises(AccessDenied, match="GenerateKey is for administrators"):
        await service.generate_key(OWNER, "new", "ecc-p256", {"owner_uid": 1000})
    with pytest.raises(AccessDenied):
        await service.delete_key(OWNER, "pzp")


@pytest.mark.asyncio
@pytest.mark.parametrize("options,message", [
    ({}, "option owner_uid is missing"),
    ({"owner_uid": -1}, "owner_uid = -1 is invalid"),
    ({"owner_uid": "1000"}, "owner_uid = '1000' is invalid"),
    ({"owner_uid": 1000, "colour": "red"}, "unknown option"),
    ({"owner_uid": 1000, **{f"x{i:03}": 1 for i in range(100)}},
     "unknown option\\(s\\) 'x000', 'x001', 'x002', 'x003', 'x004' and 95 more;"),
    ({"owner_uid": 1000, "pcrs": "sha256:99"}, "indices must be 0..23"),
])
async def test_generate_rejects_bad_options(tmp_path, options, message) -> None:
    service, *_ = make_service(tmp_path, BlockingTpm())
    with pytest.raises(InvalidArgument, match=message):
        await service.generate_key(ADMIN, "new", "ecc-p256", options)


PAYMENT = {
    "Vehicle.Speed": {"max": 0},
    "Vehicle.Powertrain.Transmission.SelectedGear": {"values": ["P"]},
}


class CreatingTpm(BlockingTpm):
    """Creates keys at once and signs when released."""

    async def create_key(
        self, selection: PcrSelection, key_type: object = None, authorization: object = None
    ) -> tuple[KeyBlobs, bytes]:
        return KeyBlobs(b"p", b"q", selection), b"der"


def policy_service(tmp_path) -> tuple[KeyService, VehicleMonitor, ReferenceVehicle, float]:
    monitor = VehicleMonitor(
        load_profile(REFERENCE_PROFILE), policies=parse_policies({"payment": PAYMENT})
    )
    vehicle = ReferenceVehicle()
    vehicle.set(power_mode="RUN", alarm="DISARMED", gear="P")
    now = 0.0
    while now < 1.0:
        for frame in vehicle.due_frames(now):
            monitor.on_frame(frame, now)
        now = round(now + 0.01, 6)
    store = KeyStore(tmp_path)
    store.load()
    tpm = CreatingTpm()
    tpm.release.set()
    service = KeyService(store, tpm, monitor, AccessPolicy(frozenset({0})), SELECTION)
    return service, monitor, vehicle, now


@pytest.mark.asyncio
async def test_generate_stores_gate_policy(tmp_path) -> None:
    service, *_ = policy_service(tmp_path)
    await service.generate_key(
        ADMIN, "pay", "ecc-p256", {"owner_uid": OWNER.uid, "gate_policy": "payment"}
    )
    reloaded = KeyStore(tmp_path)
    reloaded.load()
    assert reloaded.get("pay").gate_policy == "payment"
    assert service.store.get("pay").gate_policy == "payment"


@pytest.mark.asyncio
@pytest.mark.parametrize("name,message", [
    ("parking", "gate policy 'parking' is not defined (defined: payment)"),
    (7, "option gate_policy = 7 is invalid"),
    ("", "option gate_policy = '' is invalid: give the name of a [gate_policies.NAME]"),
])
async def test_generate_rejects_unknown_policy(tmp_path, name, message) -> None:
    service, *_ = policy_service(tmp_path)
    with pytest.raises(InvalidArgument) as caught:
        await service.generate_key(
            ADMIN, "pay", "ecc-p256", {"owner_uid": OWNER.uid, "gate_policy": name}
        )
    assert message in str(caught.value)
    assert "pay" not in service.store


@pytest.mark.asyncio
async def test_policy_key_locked_in_drive(tmp_path) -> None:
    service, monitor, vehicle, now = policy_service(tmp_path)
    await service.generate_key(
        ADMIN, "pay", "ecc-p256", {"owner_uid": OWNER.uid, "gate_policy": "payment"}
    )
    await service.generate_key(ADMIN, "pzp", "ecc-p256", {"owner_uid": OWNER.uid})
    parked = await service.sign(OWNER, "pay", bytes(32), "ecdsa-sha256")

    vehicle.set(gear="D")
    monitor.on_frame(vehicle.encode("TCU_GearSelection", timestamp=now), now)

    assert parked == b"signature"
    with pytest.raises(Locked, match="gate policy 'payment': .*SelectedGear is 127"):
        await service.sign(OWNER, "pay", bytes(32), "ecdsa-sha256")
    assert await service.sign(OWNER, "pzp", bytes(32), "ecdsa-sha256") == b"signature"


@pytest.mark.asyncio
async def test_policy_lock_during_sign_discards(tmp_path) -> None:
    service, monitor, vehicle, now = policy_service(tmp_path)
    await service.generate_key(
        ADMIN, "pay", "ecc-p256", {"owner_uid": OWNER.uid, "gate_policy": "payment"}
    )
    tpm = service.tpm
    assert isinstance(tpm, CreatingTpm)
    tpm.release.clear()
    pending = asyncio.create_task(service.sign(OWNER, "pay", bytes(32), "ecdsa-sha256"))
    await tpm.started.wait()

    vehicle.set(gear="R")
    monitor.on_frame(vehicle.encode("TCU_GearSelection", timestamp=now), now)
    tpm.release.set()

    with pytest.raises(Locked, match="locked while signing: gate policy 'payment'"):
        await pending
    assert monitor.locked is False
