"""Exceptions raised by the key service.

Every error the service reports to a D-Bus caller derives from
:class:`KeyServiceError`. The D-Bus front end maps each class to one error
name (see ``dbus_service.ERROR_NAMES``), so a caller never sees a traceback.
"""

from __future__ import annotations


class KeyServiceError(Exception):
    """Root of all errors raised by vehicle_keysvc."""


class InvalidArgument(KeyServiceError, ValueError):
    """A request argument is malformed or out of range."""


class NotFound(KeyServiceError, LookupError):
    """The requested key does not exist."""


class AlreadyExists(InvalidArgument):
    """A key with the requested id already exists."""


class AccessDenied(KeyServiceError, PermissionError):
    """The caller is not allowed to use the key or the method."""


class Locked(KeyServiceError):
    """Keys are locked because the vehicle state does not allow their use."""


class PolicyMismatch(KeyServiceError):
    """The TPM rejected the key's PCR policy.

    The platform state (PCR values) differs from the one the key was sealed
    to, so the software that booted is not the approved one.
    """


class TpmUnavailable(KeyServiceError):
    """The TPM cannot be reached or is recovering from a reset."""


class TpmError(KeyServiceError):
    """The TPM returned an error the service does not handle specially."""


class ConfigError(KeyServiceError, ValueError):
    """A configuration or profile value is invalid."""


class NameTaken(KeyServiceError):
    """Another process already owns the service's D-Bus name."""


class TpmLockout(TpmError):
    """The TPM is in dictionary-attack lockout and rejects the authorization."""


class RateLimited(KeyServiceError):
    """The caller's uid sent more requests than ``[limits]`` allows."""


class ServiceStopping(KeyServiceError):
    """The service is shutting down and takes no new requests."""
