"""Simulator of the reference vehicle's CAN bus for testing vehicle_keysvc.

It models the vehicle state and its E2E-protected frames (``sim.vehicle``), runs
timed scenarios (``sim.scenario``), replays recorded logs (``sim.replay``) and
serves frames over the socketcand protocol (``sim.socketcand``).
"""

from sim.replay import replay_log
from sim.scenario import DRIVE_CYCLE, Step, run_scenario
from sim.socketcand import SocketcandServer
from sim.transmit import PeriodicTransmitter
from sim.vehicle import DEFAULT_DBC, FAULTS, ReferenceVehicle

__all__ = [
    "DEFAULT_DBC",
    "DRIVE_CYCLE",
    "FAULTS",
    "PeriodicTransmitter",
    "ReferenceVehicle",
    "SocketcandServer",
    "Step",
    "replay_log",
    "run_scenario",
]
