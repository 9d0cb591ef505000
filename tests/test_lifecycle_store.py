"""Key store versions, power-loss safety, [policy] config and the policy CLI."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import REFERENCE_PROFILE, REPO
from tpm_tools import transient_handles
from vehicle_keysvc.callers import AccessPolicy, Caller
from vehicle_keysvc.cli import main
from vehicle_keysvc.config import load_config
from vehicle_keysvc.errors import ConfigError, InvalidArgument
from vehicle_keysvc.keyservice import KeyService
from vehicle_keysvc.keystore import FORMAT_VERSION, KeyRecord, KeyStore
from vehicle_keysvc.monitor import VehicleMonitor
from vehicle_keysvc.policy import SignedPolicy
from vehicle_keysvc.profile import load_profile
from vehicle_keysvc.tpm import Authorization, KeyBlobs, PcrSelection, TpmBackend

SELECTION = PcrSelection.parse("sha256:7,16")
ADMIN = Caller(":1.11", uid=0, pid=43)


def version1_file(key_id: str) -> str:
    return json.dumps({
        "version": 1, "key_id": key_id, "key_type": "ecc-p256", "owner_uid": 1000,
        "pcr_selection": "sha256:7", "tpm_public": base64.b64encode(b"pub").decode(),
        "tpm_private": base64.b64encode(b"priv").decode(),
        "public_key_der": base64.b64encode(b"der").decode(),
    })


def test_version1_file_still_loads(tmp_path: Path) -> None:
    (tmp_path / "old.key.json").write_text(version1_file("old"))
    store = KeyStore(tmp_path)
    store.load()
    record = store.get("old")
    assert record.blobs.authorization is None
    assert record.certificate_chain == b""
    assert record.replaces is None
    store.replace(record)
    assert json.loads((tmp_path / "old.key.json").read_text())["version"] == FORMAT_VERSION


def test_version2_fields_round_trip(tmp_path: Path) -> None:
    blobs = KeyBlobs(b"p", b"q", SELECTION, Authorization(b"\x00\x0bname", b"ref"))
    record = KeyRecord("new", "ed25519", 1000, blobs, b"der",
                       certificate_chain=b"-----BEGIN CERTIFICATE-----\n", replaces="old")
    store = KeyStore(tmp_path)
    store.load()
    store.add(record)
    again = KeyStore(tmp_path)
    again.load()
    assert again.get("new") == record


def test_future_version_skipped(tmp_path: Path, caplog) -> None:
    data = json.loads(version1_file("next"))
    data["version"] = 9
    (tmp_path / "next.key.json").write_text(json.dumps(data))
    store = KeyStore(tmp_path)
    store.load()
    assert store.ids() == []
    assert "format version 9 is not supported" in caplog.text


@pytest.mark.parametrize("field,value", [
    ("certificate_chain", 5),
    ("certificate_chain", "caf\u00e9"),
    ("replaces", "../escape"),
    ("authorization", "not a table"),
    ("authorization", {"oem_key_name": "zz", "policy_ref": ""}),
])
def test_damaged_version2_fields_skipped(tmp_path: Path, caplog, field: str,
                                          value: object) -> None:
    data = json.loads(version1_file("bad"))
    data["version"] = 2
    data[field] = value
    (tmp_path / "bad.key.json").write_text(json.dumps(data))
    store = KeyStore(tmp_path)
    store.load()
    assert store.ids() == []
    assert "bad.key.json is damaged" in caplog.text


def test_interrupted_write_is_removed(tmp_path: Path) -> None:
    (tmp_path / ".tmp-abc123").write_text('{"version": 2, "key_id": "half')
    store = KeyStore(tmp_path)
    store.load()
    assert store.ids() == []
    assert not (tmp_path / ".tmp-abc123").exists()


class FailingStore(KeyStore):
    """A key store whose disk fails on the next write, as a full disk would."""

    def add(self, record: KeyRecord) -> None:
        raise OSError(28, "No space left on device")


@pytest.mark.asyncio
async def test_failed_write_leaves_no_key(swtpm, tmp_path: Path) -> None:
    store = FailingStore(tmp_path / "keys")
    store.load()
    tpm = TpmBackend(swtpm.tcti)
    await tpm.start()
    service = KeyService(store, tpm, VehicleMonitor(load_profile(REFERENCE_PROFILE)),
                         AccessPolicy(frozenset({0})), SELECTION)
    try:
        with pytest.raises(OSError, match="No space"):
            await service.generate_key(ADMIN, "pzp", "ecc-p256", {"owner_uid": 0})
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        buffer = bytearray(pem)
        with pytest.raises(OSError, match="No space"):
            await service.import_key(ADMIN, "imported", buffer, {"owner_uid": 0})
        assert buffer == bytearray(len(pem))  # wiped even though the import failed
    finally:
        await tpm.close()
    # Keys are never persistent in the TPM, so the TPM side needs no undo:
    # nothing is loaded and no file exists.
    assert transient_handles(swtpm.port) == []
    assert list((tmp_path / "keys").iterdir()) == []


@pytest.mark.asyncio
async def test_rotation_finished_after_power_loss(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    store.load()
    store.add(KeyRecord("pzp", "ecc-p256", 0, KeyBlobs(b"p", b"q", SELECTION), b"old"))
    # Power was lost after the certificate was stored, before the old key went.
    store.add(KeyRecord("pzp-2", "ecc-p256", 0, KeyBlobs(b"p", b"q", SELECTION), b"new",
                        certificate_chain=b"PEM", replaces="pzp"))
    pending = KeyRecord("pzp-3", "ecc-p256", 0, KeyBlobs(b"p", b"q", SELECTION), b"x",
                        replaces="pzp-2")
    store.add(pending)
    service = KeyService(store, None, VehicleMonitor(load_profile(REFERENCE_PROFILE)),
                         AccessPolicy(frozenset({0})), SELECTION)

    service.finish_rotations()

    assert store.ids() == ["pzp-2", "pzp-3"]
    assert store.get("pzp-2").replaces is None
    assert store.get("pzp-3").replaces == "pzp-2"  # no certificate yet: keep both


def policy_config(tmp_path: Path, extra: str) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "oem.pem").write_bytes(key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    path = tmp_path / "keysvc.toml"
    path.write_text('[storage]\nkey_dir = "keys"\n[policy]\n' + extra)
    return path


def test_policy_config_defaults(tmp_path: Path) -> None:
    config = load_config(policy_config(
        tmp_path, 'oem_public_key = "oem.pem"\npolicy_ref = "product-A"\n'))
    settings = config.signed_policy
    assert settings is not None
    assert settings.oem_public_key == tmp_path / "oem.pem"
    assert settings.policy_ref == b"product-A"
    assert settings.signed_policy == tmp_path / "signed-policy.json"
    assert settings.counter_index == 0x01800100


@pytest.mark.parametrize("extra,message", [
    ('policy_ref = "p"\n', "oem_public_key is missing"),
    ('oem_public_key = "absent.pem"\npolicy_ref = "p"\n', "absent.pem.*not found"),
    ('oem_public_key = "oem.pem"\n', "policy_ref is missing"),
    ('oem_public_key = "oem.pem"\npolicy_ref = ""\n', "1 to 32 bytes"),
    ('oem_public_key = "oem.pem"\npolicy_ref = "p"\nrelease_counter = 5\n',
     "release_counter = 0x5 is invalid"),
    ('oem_public_key = "oem.pem"\npolicy_ref = "p"\ncolour = 1\n', "unknown option"),
])
def test_policy_config_rejects(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(policy_config(tmp_path, extra))


def write_oem_key(tmp_path: Path) -> Path:
    path = tmp_path / "oem-private.pem"
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return path


def test_policy_sign_from_json_values(tmp_path: Path, capsys) -> None:
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"7": "11" * 32, "16": "22" * 32}))
    output = tmp_path / "signed.json"

    code = main(["policy", "sign", "--key", str(write_oem_key(tmp_path)),
                 "--pcrs", "sha256:7,16", "--values", str(values),
                 "--policy-ref", "product-A", "--release", "4", "-o", str(output)])

    assert code == 0
    signed = SignedPolicy.from_bytes(output.read_bytes())
    assert signed.release == 4
    assert signed.pcr_values == {7: b"\x11" * 32, 16: b"\x22" * 32}
    assert signed.policy_ref == b"product-A"
    assert "release 4" in capsys.readouterr().out


@pytest.mark.parametrize("values_text,message", [
    ('{"7": "11", "16": "22"}', "PCR 7 in .* is 1 bytes"),
    ('{"7": "zz"}', "malformed"),
    ("7 : 0x" + "11" * 32 + "\n", "no value for PCR 16"),
])
def test_policy_sign_rejects_bad_values(tmp_path: Path, capsys, values_text: str,
                                        message: str) -> None:
    values = tmp_path / "values.txt"
    values.write_text(values_text)
    code = main(["policy", "sign", "--key", str(write_oem_key(tmp_path)),
                 "--pcrs", "sha256:7,16", "--values", str(values),
                 "--policy-ref", "product-A", "--release", "1",
                 "-o", str(tmp_path / "out.json")])
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out.json").exists()


def test_signed_policy_tampering_detected(tmp_path: Path) -> None:
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"7": "11" * 32}))
    output = tmp_path / "signed.json"
    assert main(["policy", "sign", "--key", str(write_oem_key(tmp_path)),
                 "--pcrs", "sha256:7", "--values", str(values), "--policy-ref", "p",
                 "--release", "1", "-o", str(output)]) == 0
    data = json.loads(output.read_text())
    data["pcr_values"]["7"] = "33" * 32
    with pytest.raises(InvalidArgument, match="inconsistent"):
        SignedPolicy.from_bytes(json.dumps(data).encode())
    data = json.loads(output.read_text())
    data["release"] = 0
    with pytest.raises(InvalidArgument, match="release 0 must be"):
        SignedPolicy.from_bytes(json.dumps(data).encode())


def test_policy_help_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "vehicle_keysvc.cli", "policy", "sign",
                             "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0
    assert "--release" in result.stdout


@pytest.mark.parametrize("field,value,message", [
    ("pcrs", "sha256:7,99", "indices must be 0..23"),
    ("pcr_values", [], "malformed"),
    ("release_counter", "zz", "malformed"),
    ("policy_ref", 5, "malformed"),
    ("signature", "not base64!", "malformed"),
])
def test_signed_policy_rejects_bad_fields(tmp_path: Path, field: str, value: object,
                                          message: str) -> None:
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"7": "11" * 32}))
    output = tmp_path / "signed.json"
    assert main(["policy", "sign", "--key", str(write_oem_key(tmp_path)),
                 "--pcrs", "sha256:7", "--values", str(values), "--policy-ref", "p",
                 "--release", "1", "-o", str(output)]) == 0
    data = json.loads(output.read_text())
    data[field] = value
    with pytest.raises(InvalidArgument, match=message):
        SignedPolicy.from_bytes(json.dumps(data).encode())
