"""The shipped systemd unit: parsed, and verified by systemd-analyze where present."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from vehicle_keysvc.config import Config

UNIT = REPO / "packaging" / "systemd" / "vehicle-keysvc.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Parse a unit file into section -> key -> values (repeated keys kept in order)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line}"
        key, separator, value = line.partition("=")
        assert separator, f"not KEY=VALUE: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key)
    assert values is not None, f"{key}= is missing"
    assert len(values) == 1, f"{key}= is set {len(values)} times"
    return values[0]


def test_unit_type_notify_and_reload(service: dict[str, list[str]]) -> None:
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert one(service, "BusName") == "org.webinos.KeyStorage1"
    assert one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(service, "ExecStart").startswith("/usr/bin/vehicle-keysvc run --config ")
    assert int(one(service, "WatchdogSec")) > 0
    # Longer than the 10 s the service waits for requests in flight.
    assert int(one(service, "TimeoutStopSec")) > 10


def test_unit_user_and_tpm_device(service: dict[str, list[str]]) -> None:
    assert one(service, "User") == "vehicle-keysvc"
    assert one(service, "SupplementaryGroups") == "tss"
    assert one(service, "DevicePolicy") == "closed"
    assert service["DeviceAllow"] == ["/dev/tpmrm0 rw"]
    assert "PrivateDevices" not in service  # it would hide /dev/tpmrm0
    assert one(service, "StateDirectory") == "vehicle-keysvc"
    assert one(service, "StateDirectoryMode") == "0700"


def test_unit_hardening(service: dict[str, list[str]]) -> None:
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictAddressFamilies": "AF_UNIX AF_CAN",
        "IPAddressDeny": "any",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert one(service, key) == value, key
    assert service["SystemCallFilter"][0] == "@system-service"
    assert service["SystemCallFilter"][1].startswith("~@privileged")


def test_unit_matches_service_paths(service: dict[str, list[str]]) -> None:
    """The unit's config path and state folder are the service's defaults."""
    config_path = one(service, "ExecStart").split("--config ", 1)[1]
    assert config_path == "/etc/vehicle-keysvc/keysvc.toml"
    state = Path("/var/lib") / one(service, "StateDirectory")
    assert Config().key_dir.parent == state


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart= exists, and the service is not installed
    # here, so the unit is checked with ExecStart= pointing at a stand-in.
    stand_in = tmp_path / "vehicle-keysvc"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    unit = tmp_path / "vehicle-keysvc.service"
    text = UNIT.read_text()
    assert text.count("ExecStart=/usr/bin/vehicle-keysvc ") == 1
    unit.write_text(text.replace("ExecStart=/usr/bin/vehicle-keysvc ",
                                 f"ExecStart={stand_in} "))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "vehicle-keysvc.service:" not in result.stderr, result.stderr
