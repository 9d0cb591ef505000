"""Every shipped vehicle profile and its DBC go into the Yocto image."""

from __future__ import annotations

import re
import tomllib

from conftest import REPO

RECIPE = (REPO / "yocto" / "meta-vehicle-keysvc" / "recipes-security"
          / "vehicle-keysvc" / "vehicle-keysvc_0.1.0.bb")
PROFILES_DIR = "${D}${datadir}/vehicle-keysvc/profiles/"


def installed_dbc_files() -> dict[str, str]:
    """Return each file installed from dbc/ and its destination in the recipe."""
    pattern = re.compile(r"install -m 0644 \$\{S\}/dbc/(\S+) (\S+)")
    return dict(pattern.findall(RECIPE.read_text()))


def test_every_profile_and_dbc_installed() -> None:
    installed = installed_dbc_files()
    for profile in sorted((REPO / "dbc").glob("*.profile.toml")):
        name = profile.name.removesuffix(".profile.toml")
        assert installed.get(profile.name) == f"{PROFILES_DIR}{name}.toml", profile.name
        dbc = tomllib.loads(profile.read_text())["dbc"]
        # The profile names its DBC relative to itself: both share a folder.
        assert installed.get(dbc) == PROFILES_DIR, dbc
