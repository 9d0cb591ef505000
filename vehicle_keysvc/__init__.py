"""TPM 2.0 key service for an infotainment head unit.

Keys live in the TPM under a PCR policy, are served over D-Bus to their
owner, and are unlocked only while the vehicle state read from CAN allows it.
"""

__version__ = "0.1.0"
