"""Config, profile and key store validation."""

from __future__ import annotations

import json
import logging

import pytest

from conftest import REFERENCE_PROFILE
from vehicle_keysvc.config import load_config
from vehicle_keysvc.errors import ConfigError, InvalidArgument, NotFound
from vehicle_keysvc.keystore import KeyRecord, KeyStore, check_key_id
from vehicle_keysvc.profile import load_profile
from vehicle_keysvc.tpm import KeyBlobs, PcrSelection


def write(tmp_path, text: str):
    path = tmp_path / "keysvc.toml"
    path.write_text(text)
    return path


def test_config_defaults_and_relative_paths(tmp_path) -> None:
    config = load_config(write(tmp_path, '[storage]\nkey_dir = "keys"\n'))
    assert config.tcti == "device:/dev/tpmrm0"
    assert config.bus == "system"
    assert config.key_dir == tmp_path / "keys"
    assert config.admin_uids == frozenset({0})
    assert str(config.pcr_selection) == "sha256:0,2,4,7"


@pytest.mark.parametrize("text,message", [
    ('[tpm]\ntcti = "dev/tpm0"\n', "tcti = 'dev/tpm0' is invalid"),
    ('[tpm]\npcrs = "sha256:30"\n', r"\[tpm\] pcrs"),
    ('[dbus]\nbus = "desktop"\n', "bus = 'desktop' is invalid"),
    ("[access]\nadmin_uids = [-3]\n", "admin_uids contains -3"),
    ("[access]\nadmin_uids = 0\n", "admin_uids = 0 is invalid: give an array"),
    ("[vehicle]\ntick_interval_ms = 0\n", "tick_interval_ms = 0 is invalid"),
    ('[can]\noptions = { can_filters = [] }\n', "can_filters is set by the service"),
    ("[tmp]\nx = 1\n", "unknown option"),
    ('[logging]\nlevel = "LOUD"\n', "level = 'LOUD' is invalid"),
    ("[tpm\n", "not valid TOML"),
    ('[can]\ninterface = "nosuch"\n', "interface = 'nosuch' is not a python-can interface"),
    ('[can]\noptions = "host"\n', "options = 'host' is invalid: give a table"),
    ("[tpm]\npcrs = 5\n", "pcrs = 5 is invalid: give a quoted string"),
])
def test_config_rejects_bad_values(tmp_path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_config_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def profile_variant(tmp_path, old: str, new: str):
    (tmp_path / "vehicle.dbc").write_text((REFERENCE_PROFILE.parent / "vehicle.dbc").read_text())
    text = REFERENCE_PROFILE.read_text()
    assert old in text
    path = tmp_path / "variant.toml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize("old,new,message", [
    ('signal = "PowerMode"', 'signal = "PowerMod"', "signal 'PowerMod' is not in message"),
    ('message = "VCU_PowerMode"', 'message = "VCU_Power"', "message 'VCU_Power' is not in the DBC"),
    ('RUN = "ON"', 'RUN = "RUNNING"', "'RUNNING' is not a VSS power state"),
    ('DISARMED = false', 'DISARMED = "no"', "must be a bool"),
    ('[facts."Vehicle.Speed"]', '[facts."Vehicle.Sped"]', "unknown fact"),
    ('dbc = "vehicle.dbc"', 'dbc = "absent.dbc"', "absent.dbc not found"),
    ('crc = "PowerMode_CRC"', 'crc = "PowerMode_Counter"', "must be one whole byte"),
])
def test_profile_rejects_bad_mappings(tmp_path, old, new, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_profile(profile_variant(tmp_path, old, new))


def test_profile_filters_pass_only_mapped_ids() -> None:
    profile = load_profile(REFERENCE_PROFILE)
    ids = sorted(f["can_id"] for f in profile.can_filters())
    assert ids == [0x110, 0x120, 0x130, 0x140, 0x150]
    assert profile.e2e_protected is True


def record(key_id: str = "pzp") -> KeyRecord:
    blobs = KeyBlobs(b"\x00\x01public", b"\x00\x02private", PcrSelection.parse("sha256:7"))
    return KeyRecord(key_id, "ecc-p256", 1000, blobs, b"0Y...")


def test_store_round_trip(tmp_path) -> None:
    store = KeyStore(tmp_path / "keys")
    store.load()
    store.add(record())
    again = KeyStore(tmp_path / "keys")
    again.load()
    assert again.get("pzp") == record()
    assert (tmp_path / "keys" / "pzp.key.json").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["pzp.key.json"]


def test_store_skips_damaged_and_temp_files(tmp_path, caplog) -> None:
    keys = tmp_path / "keys"
    store = KeyStore(keys)
    store.load()
    store.add(record("good"))
    (keys / "bad.key.json").write_text("{not json")
    (keys / ".tmp-abc").write_text("partial write")
    data = json.loads((keys / "good.key.json").read_text())
    data["version"] = 99
    (keys / "future.key.json").write_text(json.dumps(data))
    with caplog.at_level(logging.ERROR):
        store.load()
    assert store.ids() == ["good"]
    assert "bad.key.json" in caplog.text
    assert "format version 99 is not supported" in caplog.text
    assert (keys / "bad.key.json").exists()


def test_store_remove_and_not_found(tmp_path) -> None:
    store = KeyStore(tmp_path)
    store.load()
    store.add(record())
    store.remove("pzp")
    with pytest.raises(NotFound, match="'pzp'"):
        store.get("pzp")
    assert list(tmp_path.glob("*.json")) == []


@pytest.mark.parametrize("key_id", ["", "../x", "a/b", ".hidden", "x" * 65, "sp ace"])
def test_key_id_rejected(key_id: str) -> None:
    with pytest.raises(InvalidArgument, match="is invalid"):
        check_key_id(key_id)
