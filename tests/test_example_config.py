"""The shipped example config stays loadable and equal to the defaults."""

from __future__ import annotations

import tomllib

from conftest import REPO
from vehicle_keysvc.config import Config, load_config
from vehicle_keysvc.gate_policy import parse_policies


def test_example_config_matches_defaults() -> None:
    assert load_config(REPO / "config.example.toml") == Config()


def test_example_gate_policies_parse() -> None:
    # The example shows its gate policies commented out, since there are
    # none by default. Uncommented, they must be valid.
    lines = (REPO / "config.example.toml").read_text().splitlines()
    start = lines.index("# [gate_policies.payment]")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line.removeprefix("#").removeprefix(" "))
    policies = parse_policies(tomllib.loads("\n".join(block))["gate_policies"])
    assert sorted(policies) == ["payment", "run-only"]
    assert policies["payment"].required == [
        "Vehicle.Speed", "Vehicle.Powertrain.Transmission.SelectedGear"]
    assert policies["run-only"].required == ["Vehicle.LowVoltageSystemState"]
