"""The shipped example config stays loadable and equal to the defaults."""

from __future__ import annotations

from conftest import REPO
from vehicle_keysvc.config import Config, load_config


def test_example_config_matches_defaults() -> None:
    assert load_config(REPO / "config.example.toml") == Config()
