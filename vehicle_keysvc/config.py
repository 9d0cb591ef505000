"""Service configuration from a TOML file.

Every option, its unit and its default is listed in ``config.example.toml``
beside the package's README. An invalid value is rejected at start with the
option's name, the value, and what to write instead.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can.interfaces

from .errors import ConfigError, InvalidArgument
from .gate_policy import GatePolicy, parse_policies
from .policy import DEFAULT_COUNTER_INDEX, PolicySettings, check_policy_ref
from .tpm import PcrSelection

_BUSES = ("system", "session")


@dataclass(frozen=True)
class Config:
    """Validated service settings."""

    tcti: str = "device:/dev/tpmrm0"
    pcr_selection: PcrSelection = PcrSelection("sha256", (0, 2, 4, 7))
    bus: str = "system"  # "system", "session" or a D-Bus address
    admin_uids: frozenset[int] = frozenset({0})
    key_dir: Path = Path("/var/lib/vehicle-keysvc/keys")
    can_interface: str = "socketcan"
    can_channel: str = "can0"
    can_options: dict[str, Any] = field(default_factory=dict)
    profile: Path = Path("/usr/share/vehicle-keysvc/profiles/reference.toml")
    tick_interval: float = 0.02  # seconds
    debounce_frames: int = 3  # consecutive valid frames per gated fact
    log_level: str = "INFO"
    gate_policies: dict[str, GatePolicy] = field(default_factory=dict)  # by name
    signed_policy: PolicySettings | None = None  # None: no [policy] oem_public_key
    rate_limit: float = 10.0  # requests per second per uid; 0 turns it off
    rate_burst: int = 20  # requests
    audit_repeat_window: float = 60.0  # seconds


# Wording of each expected TOML type in config errors, by Python type.
_TYPE_WORDS = {
    str: "a quoted string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "an array",
    dict: "a table such as { key = value }",
}


def _get(
    table: dict[str, Any],
    section: str,
    key: str,
    kind: type | tuple[type, ...],
    default: Any,
) -> Any:
    if key not in table:
        return default
    value = table[key]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        expected = _TYPE_WORDS.get(kind, "number") if isinstance(kind, type) else "number"
        raise ConfigError(
            f"[{section}] {key} = {value!r} is invalid: give {expected}"
        )
    return value


def _check_keys(table: dict[str, Any], section: str, allowed: set[str]) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(
            f"[{section}] has unknown option(s) {', '.join(sorted(unknown))}; "
            f"known options are {', '.join(sorted(allowed))}"
        )


def parse_config(data: dict[str, Any], base: Path) -> Config:
    """Build a Config from parsed TOML; relative paths are taken from ``base``."""
    defaults = Config()
    names = (
        "tpm", "dbus", "access", "storage", "can", "vehicle", "logging", "policy",
        "gate_policies", "limits",
    )
    _check_keys(data, "top level", set(names))
    sections = {}
    for name in names:
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table")
        sections[name] = table

    tpm = sections["tpm"]
    _check_keys(tpm, "tpm", {"tcti", "pcrs"})
    tcti = _get(tpm, "tpm", "tcti", str, defaults.tcti)
    if ":" not in tcti and tcti not in ("device", "swtpm", "mssim", "tabrmd"):
        raise ConfigError(
            f"[tpm] tcti = {tcti!r} is invalid: write NAME:CONFIG, for example "
            "device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321"
        )
    pcr_text = _get(tpm, "tpm", "pcrs", str, str(defaults.pcr_selection))
    try:
        pcr_selection = PcrSelection.parse(pcr_text)
    except InvalidArgument as err:
        raise ConfigError(f"[tpm] pcrs: {err}") from None

    dbus = sections["dbus"]
    _check_keys(dbus, "dbus", {"bus"})
    bus = _get(dbus, "dbus", "bus", str, defaults.bus)
    if bus not in _BUSES and "=" not in bus:
        raise ConfigError(
            f"[dbus] bus = {bus!r} is invalid: use 'system', 'session' or a D-Bus "
            "address such as unix:path=/run/dbus/system_bus_socket"
        )

    access = sections["access"]
    _check_keys(access, "access", {"admin_uids"})
    admins = _get(access, "access", "admin_uids", list, sorted(defaults.admin_uids))
    for uid in admins:
        if not isinstance(uid, int) or isinstance(uid, bool) or not 0 <= uid < 2**32:
            raise ConfigError(
                f"[access] admin_uids contains {uid!r}: each entry must be a uid "
                "(an integer 0..4294967295)"
            )

    storage = sections["storage"]
    _check_keys(storage, "storage", {"key_dir"})
    key_dir = base / _get(storage, "storage", "key_dir", str, str(defaults.key_dir))

    can_table = sections["can"]
    _check_keys(can_table, "can", {"interface", "channel", "options"})
    interface = _get(can_table, "can", "interface", str, defaults.can_interface)
    if interface not in can.interfaces.VALID_INTERFACES:
        raise ConfigError(
            f"[can] interface = {interface!r} is not a python-can interface; use "
            "socketcan on the car, socketcand or virtual in tests, or another of "
            f"{', '.join(sorted(can.interfaces.VALID_INTERFACES))}"
        )
    channel = _get(can_table, "can", "channel", str, defaults.can_channel)
    options = _get(can_table, "can", "options", dict, {})
    if "can_filters" in options:
        raise ConfigError(
            "[can] options.can_filters is set by the service from the profile; "
            "remove it"
        )

    vehicle = sections["vehicle"]
    _check_keys(vehicle, "vehicle", {"profile", "tick_interval_ms", "debounce_frames"})
    profile = base / _get(vehicle, "vehicle", "profile", str, str(defaults.profile))
    tick_ms = _get(vehicle, "vehicle", "tick_interval_ms", (int, float), 20)
    if not 1 <= tick_ms <= 1000:
        raise ConfigError(
            f"[vehicle] tick_interval_ms = {tick_ms!r} is invalid: use 1..1000 "
            "(how often staleness is checked between frames)"
        )
    debounce = _get(vehicle, "vehicle", "debounce_frames", int, defaults.debounce_frames)
    if not 1 <= debounce <= 100:
        raise ConfigError(
            f"[vehicle] debounce_frames = {debounce!r} is invalid: use 1..100 "
            "(consecutive valid frames of each gated fact before keys unlock)"
        )

    logging_table = sections["logging"]
    _check_keys(logging_table, "logging", {"level", "audit_repeat_window_s"})
    level = _get(logging_table, "logging", "level", str, defaults.log_level).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(
            f"[logging] level = {level!r} is invalid: use DEBUG, INFO, WARNING or ERROR"
        )

    signed_policy = _parse_policy(sections["policy"], base, key_dir)
    limits = _parse_limits(sections["limits"], logging_table)

    return Config(
        tcti=tcti,
        pcr_selection=pcr_selection,
        bus=bus,
        admin_uids=frozenset(admins),
        key_dir=key_dir,
        can_interface=interface,
        can_channel=channel,
        can_options=dict(options),
        profile=profile,
        tick_interval=tick_ms / 1000.0,
        debounce_frames=debounce,
        log_level=level,
        gate_policies=parse_policies(sections["gate_policies"]),
        signed_policy=signed_policy,
        **limits,
    )


def _parse_policy(table: dict[str, Any], base: Path, key_dir: Path) -> PolicySettings | None:
    _check_keys(table, "policy", {"oem_public_key", "policy_ref", "signed_policy",
                                  "release_counter"})
    key_text = _get(table, "policy", "oem_public_key", str, "")
    if not key_text:
        if set(table) - {"oem_public_key"}:
            raise ConfigError(
                "[policy] options are set but oem_public_key is missing; give the "
                "OEM policy key's PEM file or remove the [policy] section"
            )
        return None
    oem_public_key = base / key_text
    if not oem_public_key.is_file():
        raise ConfigError(
            f"[policy] oem_public_key = {key_text!r}: file {oem_public_key} not found; "
            "give the PEM file of the OEM policy key"
        )
    if "policy_ref" not in table:
        raise ConfigError(
            "[policy] policy_ref is missing; give the product name the OEM signs "
            "policies for, for example 'webinos-headunit-A'"
        )
    try:
        policy_ref = check_policy_ref(_get(table, "policy", "policy_ref", str, ""))
    except InvalidArgument as err:
        raise ConfigError(f"[policy] {err}") from None
    signed_policy = base / _get(table, "policy", "signed_policy", str,
                                str(key_dir.parent / "signed-policy.json"))
    counter = _get(table, "policy", "release_counter", int, DEFAULT_COUNTER_INDEX)
    if not 0x01000000 <= counter <= 0x01FFFFFF:
        raise ConfigError(
            f"[policy] release_counter = {counter:#x} is invalid: give an NV index "
            "0x01000000..0x01ffffff, for example 0x01800100"
        )
    return PolicySettings(oem_public_key, policy_ref, signed_policy, counter)


def _parse_limits(limits: dict[str, Any], logging_table: dict[str, Any]) -> dict[str, Any]:
    """Parse [limits] and [logging] audit_repeat_window_s into Config fields."""
    defaults = Config()
    _check_keys(limits, "limits", {"rate_per_second", "burst"})
    rate = _get(limits, "limits", "rate_per_second", (int, float), defaults.rate_limit)
    if not 0 <= rate <= 10_000:
        raise ConfigError(
            f"[limits] rate_per_second = {rate!r} is invalid: use 0..10000 requests "
            "per second per uid (0 turns the limit off)"
        )
    burst = _get(limits, "limits", "burst", int, defaults.rate_burst)
    if not 1 <= burst <= 100_000:
        raise ConfigError(
            f"[limits] burst = {burst!r} is invalid: use 1..100000 requests"
        )
    window = _get(
        logging_table, "logging", "audit_repeat_window_s", (int, float),
        defaults.audit_repeat_window,
    )
    if not 1 <= window <= 86_400:
        raise ConfigError(
            f"[logging] audit_repeat_window_s = {window!r} is invalid: use 1..86400 "
            "seconds"
        )
    return {"rate_limit": float(rate), "rate_burst": burst, "audit_repeat_window": float(window)}


def load_config(path: str | Path) -> Config:
    """Load and validate a config file.

    Raises:
        ConfigError: the file is missing, not TOML, or has an invalid value.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
    try:
        return parse_config(data, path.parent.resolve())
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
