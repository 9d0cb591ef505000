"""The Yocto layer: oelint-adv, and that the recipe ships the files the tests use.

No bitbake build runs here; these checks read the recipe as text.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from test_system_bus import ACTIVATION, INTROSPECTION, POLICY
from test_systemd_unit import UNIT, parse_unit
from vehicle_keysvc.config import Config

LAYER = REPO / "yocto" / "meta-vehicle-keysvc"
RECIPE = LAYER / "recipes-security" / "vehicle-keysvc" / "vehicle-keysvc_0.1.0.bb"
OELINT = Path(sys.executable).parent / "oelint-adv"

# Rules switched off, each for a reason:
SUPPRESSED = [
    # It sends an HTTP request to HOMEPAGE; tests stay off the network.
    "oelint.vars.homepageping",
    # The project has no public home page or bug tracker yet.
    "oelint.var.mandatoryvar.HOMEPAGE",
    # externalsrc builds the checkout that contains the layer, so there is
    # nothing to fetch.
    "oelint.var.mandatoryvar.SRC_URI",
    # The tree has no licence file; pyproject.toml declares MIT, so the
    # checksum is that of the common MIT text.
    "oelint.var.licenseremotefile",
]


def recipe_text() -> str:
    return RECIPE.read_text()


def installs() -> list[tuple[Path, str]]:
    """Return (source in the repo, destination) for each install -m line."""
    pairs = []
    for match in re.finditer(r"install -m 0\d{3} \$\{S\}/(\S+) (\S+)", recipe_text()):
        pairs.append((REPO / match.group(1), match.group(2)))
    return pairs


@pytest.mark.skipif(not OELINT.exists(), reason="oelint-adv is not installed (make deps)")
def test_oelint_adv_passes() -> None:
    recipes = sorted(str(p) for p in LAYER.rglob("*.bb")) + sorted(
        str(p) for p in LAYER.rglob("*.bbappend"))
    result = subprocess.run(
        [str(OELINT), "--quiet", "--release", "wrynose", "--jobs", "1",
         *[f"--suppress={rule}" for rule in SUPPRESSED], *recipes],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    findings = (result.stdout + result.stderr).splitlines()
    serious = [line for line in findings if ":warning:" in line or ":error:" in line]
    assert len(recipes) >= 2
    assert serious == []
    assert "Traceback" not in result.stderr


def test_recipe_installs_existing_files() -> None:
    pairs = installs()
    assert len(pairs) >= 10
    for source, _ in pairs:
        assert source.is_file(), f"the recipe installs {source}, which is missing"


def test_recipe_ships_tested_files() -> None:
    sources = {source for source, _ in installs()}
    assert UNIT in sources
    assert POLICY in sources
    assert ACTIVATION in sources
    assert INTROSPECTION in sources
    assert REPO / "config.example.toml" in sources


def test_files_cover_install_destinations() -> None:
    text = recipe_text()
    files = re.search(r'FILES:\$\{PN\} \+= "(.*?)"', text, re.S)
    assert files is not None
    listed = files.group(1).replace("\\", " ").split()
    for source, destination in installs():
        target = destination.removeprefix("${D}")
        if target.endswith("/"):
            target += source.name
        assert any(target == entry or target.startswith(entry.rstrip("/") + "/")
                   for entry in listed), f"{target} is not in FILES"


def test_install_paths_match_service_defaults() -> None:
    destinations = {source.name: destination for source, destination in installs()}
    defaults = Config()
    exec_start = parse_unit(UNIT.read_text())["Service"]["ExecStart"][0]
    assert destinations["config.example.toml"] == "${D}${sysconfdir}/vehicle-keysvc/keysvc.toml"
    assert exec_start.endswith("--config /etc/vehicle-keysvc/keysvc.toml")
    assert destinations["reference.profile.toml"] == (
        "${D}${datadir}/vehicle-keysvc/profiles/reference.toml")
    assert defaults.profile == Path("/usr/share/vehicle-keysvc/profiles/reference.toml")
    # The profile names its DBC file relative to itself, so both share a folder.
    assert destinations["vehicle.dbc"] == "${D}${datadir}/vehicle-keysvc/profiles/"
    assert 'dbc = "vehicle.dbc"' in (REPO / "dbc" / "reference.profile.toml").read_text()


def test_recipe_user_substitutions_match_files() -> None:
    """Each sed in do_install finds its text, so the user names really change."""
    text = recipe_text()
    assert '<policy user="vehicle-keysvc">' in POLICY.read_text()
    assert '<policy user="webinos">' in POLICY.read_text()
    assert "\nUser=vehicle-keysvc\n" in UNIT.read_text()
    assert "\nGroup=vehicle-keysvc\n" in UNIT.read_text()
    assert "\nUser=vehicle-keysvc\n" in ACTIVATION.read_text()
    assert "s/<policy user=\"webinos\">/<policy user=\"${VEHICLE_KEYSVC_PZP_USER}\">/" in text
    assert "s/^User=vehicle-keysvc$/User=${VEHICLE_KEYSVC_USER}/" in text


def test_recipe_dependencies_and_features() -> None:
    text = recipe_text()
    rdepends = re.search(r'RDEPENDS:\$\{PN\} = "(.*?)"', text, re.S)
    assert rdepends is not None
    packages = set(rdepends.group(1).replace("\\", " ").split())
    expected = {"python3-can", "python3-cantools", "python3-dbus-fast",
                "python3-cryptography", "python3-tpm2-pytss"}
    assert expected <= packages
    assert 'REQUIRED_DISTRO_FEATURES = "systemd tpm2"' in text
    inherits = re.search(r"^inherit (.*)$", text, re.M)
    assert inherits is not None
    for bbclass in ("python_setuptools_build_meta", "systemd", "useradd", "features_check"):
        assert bbclass in inherits.group(1).split()
    assert 'SYSTEMD_SERVICE:${PN} = "vehicle-keysvc.service"' in text


def test_layer_conf_series() -> None:
    text = (LAYER / "conf" / "layer.conf").read_text()
    compat = re.search(r'LAYERSERIES_COMPAT_vehicle-keysvc = "(.*)"', text)
    assert compat is not None
    assert compat.group(1).split() == ["wrynose", "blacksail"]
    assert 'BBFILE_COLLECTIONS += "vehicle-keysvc"' in text


def test_kas_config_names_the_layer() -> None:
    text = (REPO / "yocto" / "kas" / "vehicle-keysvc-qemux86-64.yml").read_text()
    assert "machine: qemux86-64" in text
    assert "target: vehicle-keysvc-image" in text
    assert "      yocto/meta-vehicle-keysvc:" in text
    assert (LAYER / "recipes-core" / "images" / "vehicle-keysvc-image.bb").is_file()
