"""Command line: ``vehicle-keysvc profile check PROFILE``.

Loads a vehicle profile and its DBC file and reports every mapped signal
as usable or not, with the reason, before the profile goes into a car.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from .profile import ALARM_ACTIVE, POWER_STATE, Profile, load_profile

# Exit status when a mapped signal cannot be used.
EXIT_UNUSABLE = 1


def register(commands: Any) -> None:
    """Add the ``profile`` subcommand to the parser's subcommands."""
    profile = commands.add_parser("profile", help="check vehicle profiles")
    actions = profile.add_subparsers(dest="profile_command", required=True)
    check = actions.add_parser(
        "check",
        help="report every mapped signal as usable or not; exit 1 if one is not",
    )
    check.add_argument("profile", help="vehicle profile (TOML)")
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    check.set_defaults(func=_cmd_check)


def _gate_notes(profile: Profile) -> list[str]:
    notes = []
    if POWER_STATE not in profile.facts:
        notes.append(f"{POWER_STATE} is not usable: the gate keeps every key locked")
    if ALARM_ACTIVE not in profile.facts:
        notes.append(
            f"no {ALARM_ACTIVE}: the gate follows {POWER_STATE} alone"
        )
    if not profile.e2e_protected:
        notes.append(
            "not every message has E2E protection: those rely on freshness alone"
        )
    return notes


def _combine_rules(profile: Profile) -> dict[str, str]:
    """Return the combine rule, in words, of each fact with several sources."""
    rules = {}
    for fact, mapping in profile.facts.items():
        if len(mapping.sources) < 2:
            continue
        rule = (
            "every source must agree" if mapping.combine == "all"
            else "the first usable source wins; usable sources must agree"
        )
        if mapping.tolerance:
            rule += f" within {mapping.tolerance:g}"
        rules[fact] = f"combine = \"{mapping.combine}\": {rule}"
    return rules


def _cmd_check(args: argparse.Namespace) -> int:
    # The report lists the DBC's problems, so its warnings would repeat them.
    logging.basicConfig(level=args.log_level or "ERROR", stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    profile = load_profile(args.profile, reject_unusable=False)
    unusable = [c for c in profile.checks if not c.usable]
    notes = _gate_notes(profile)
    rules = _combine_rules(profile)
    if args.json:
        report = {
            "profile": str(profile.path),
            "name": profile.name,
            "signals": [
                {"fact": c.fact, "source": c.source, "usable": c.usable,
                 "reason": c.reason}
                for c in profile.checks
            ],
            "combine": rules,
            "undecodable_messages": profile.undecodable,
            "notes": notes,
        }
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(f"{profile.name} ({profile.path})")
        for check in profile.checks:
            status = "usable" if check.usable else "UNUSABLE"
            print(f"  {status:8s}  {check.fact} from {check.source}: {check.reason}")
        for fact, rule in rules.items():
            print(f"{fact}: {rule}")
        if profile.undecodable:
            print(f"DBC messages that cannot be decoded ({len(profile.undecodable)}):")
            for name, reason in sorted(profile.undecodable.items()):
                print(f"  {name}: {reason}")
        for note in notes:
            print(f"note: {note}")
        if unusable:
            print(f"{len(unusable)} of {len(profile.checks)} mapped signals are unusable")
    return EXIT_UNUSABLE if unusable else 0
