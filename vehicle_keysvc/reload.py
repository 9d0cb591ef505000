"""Configuration reload on SIGHUP, without dropping the bus name.

The whole file is loaded and checked again with the same code as at start,
and the new vehicle profile and gate are built, before anything changes. A
file that fails any check is rejected and the running configuration stays.

What a reload changes: the vehicle profile (its DBC, facts and E2E
settings), the gate, the debounce, the gate policies, ``[access]
admin_uids``, ``[tpm] pcrs`` for new keys, the rate limit, the audit repeat
window, the log level and the tick interval. A new profile locks every key
until fresh frames confirm the state again. A changed gate policy locks
only its own keys, and unchanged gates keep their state. The TPM, the D-Bus bus, the
key folder, the CAN interface and the ``[policy]`` settings need a restart;
a changed value there is logged and ignored.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .can_source import CanStateSource
from .config import Config, load_config
from .errors import KeyServiceError
from .gate import Gate
from .keyservice import KeyService
from .keystore import KeyStore
from .monitor import VehicleMonitor
from .profile import Profile, load_profile
from .request_guard import RequestGuard

_LOGGER = logging.getLogger(__name__)

# Config fields that only take effect at start, with their option names.
RESTART_ONLY = {
    "tcti": "[tpm] tcti",
    "bus": "[dbus] bus",
    "key_dir": "[storage] key_dir",
    "can_interface": "[can] interface",
    "can_channel": "[can] channel",
    "can_options": "[can] options",
    "signed_policy": "[policy]",
}

MonitorFactory = Callable[[Config, Profile], VehicleMonitor]

def log_keys_without_gate_policy(store: KeyStore, config: Config) -> None:
    """Log an error for each key whose gate policy the config does not define."""
    for record in store.records():
        if record.gate_policy is not None and record.gate_policy not in config.gate_policies:
            _LOGGER.error(
                "key %r needs gate policy %r, which the config does not define; "
                "the key stays locked", record.key_id, record.gate_policy,
            )


def build_monitor(config: Config, profile: Profile) -> VehicleMonitor:
    """Build the vehicle monitor and its gate from the config, at start and on reload."""
    return VehicleMonitor(
        profile, Gate(profile),
        debounce_frames=config.debounce_frames, policies=config.gate_policies,
    )


@dataclass
class RunningService:
    """The parts of a running service that a reload may change."""

    config: Config
    config_path: Path
    core: KeyService
    source: CanStateSource
    guard: RequestGuard
    make_monitor: MonitorFactory = build_monitor


def profile_fingerprint(profile: Profile) -> tuple[Any, ...]:
    """Return what decides how frames decode: every Profile field and the DBC text."""
    # Fact sources compare by identity (see profile.SignalSource), so the
    # facts are compared as plain dictionaries.
    values = tuple(
        (f.name, _plain(getattr(profile, f.name)))
        for f in dataclasses.fields(profile)
        if f.name not in ("database", "notes", "path")
    )
    try:
        dbc_text = profile.database.as_dbc_string()
    except Exception:  # noqa: BLE001 - cantools raises various errors on dump
        # A database that cannot be written out never compares equal, so
        # the reload treats the profile as changed, which is the safe side.
        dbc_text = object()
    return values + (dbc_text,)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


async def reload_config(running: RunningService) -> bool:
    """Load the config file again and apply what can change while running.

    Returns False, with the running configuration unchanged, if the new
    file, its profile or its DBC file is invalid.
    """
    path = running.config_path
    try:
        new = load_config(path)
        profile = load_profile(new.profile)
        fresh = running.make_monitor(new, profile)
    except KeyServiceError as err:
        _LOGGER.error("reload rejected, keeping the running configuration: %s", err)
        return False

    old = running.config
    for name, option in RESTART_ONLY.items():
        if getattr(old, name) != getattr(new, name):
            _LOGGER.warning(
                "reload: %s changed from %r to %r; restart the service to apply it",
                option, getattr(old, name), getattr(new, name),
            )
            new = dataclasses.replace(new, **{name: getattr(old, name)})

    core = running.core
    monitor = core.monitor
    profile_changed = profile_fingerprint(profile) != profile_fingerprint(monitor.profile)
    filters_changed = profile.can_filters() != monitor.profile.can_filters()
    # The running monitor takes the new one's settings in place, because the
    # D-Bus interface, the CAN source and the key service hold it.
    monitor.replace_settings(fresh, profile_changed)
    log_keys_without_gate_policy(core.store, new)
    core.policy.admin_uids = new.admin_uids
    core.pcr_selection = new.pcr_selection
    running.guard.limiter.configure(new.rate_limit, new.rate_burst)
    running.guard.audit.repeat_window = new.audit_repeat_window
    running.source.tick_interval = new.tick_interval
    logging.getLogger("vehicle_keysvc").setLevel(new.log_level)
    running.config = new

    if filters_changed:
        # The CAN receive filters come from the profile, so the interface is
        # opened again with the new ones.
        await running.source.stop()
        await running.source.start()
    monitor.tick(monitor.current_time())
    _LOGGER.info(
        "reloaded %s: profile %r (%s), admins %s, rate limit %g/s burst %d",
        path, profile.name, "changed" if profile_changed else "unchanged",
        sorted(new.admin_uids), new.rate_limit, new.rate_burst,
    )
    return True

