"""D-Bus front end: the org.webinos.KeyStorage1 interface.

A thin layer over :class:`KeyService`. It identifies each caller through the
bus daemon, maps service errors to D-Bus error names, and never sends a
traceback to a caller.

dbus-fast does not pass the message to method handlers, so a message
handler on the bus records the sender's unique name in a context variable
just before dispatch. dbus-fast starts each coroutine handler as a task from
that same call, and the task copies the context, so each handler reads its own
message's sender.
"""

# No "from __future__ import annotations": dbus-fast reads the D-Bus
# signatures from the annotations and needs them as plain strings.

import contextvars
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag, RequestNameReply
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property, method, signal

from .callers import Caller, CallerCache
from .errors import (
    AccessDenied,
    InvalidArgument,
    KeyServiceError,
    Locked,
    NameTaken,
    NotFound,
    PolicyMismatch,
    TpmLockout,
    RateLimited,
    ServiceStopping,
    TpmUnavailable,
)
from .keyservice import KeyService
from .monitor import Event, LockEvent
from .request_guard import RequestGuard
from .vehicle_state import FactChange, FactView

_LOGGER = logging.getLogger(__name__)

BUS_NAME = "org.webinos.KeyStorage1"
OBJECT_PATH = "/org/webinos/KeyStorage1"
INTERFACE = "org.webinos.KeyStorage1"
ERROR_PREFIX = "org.webinos.KeyStorage1.Error."

# Checked in order, so subclasses come before their bases.
ERROR_NAMES: list[tuple[type[KeyServiceError], str]] = [
    (Locked, ERROR_PREFIX + "Locked"),
    (NotFound, ERROR_PREFIX + "NotFound"),
    (InvalidArgument, ERROR_PREFIX + "InvalidArgument"),
    (PolicyMismatch, ERROR_PREFIX + "PolicyMismatch"),
    (TpmUnavailable, ERROR_PREFIX + "TpmUnavailable"),
    (TpmLockout, ERROR_PREFIX + "TpmLockout"),
    (RateLimited, ERROR_PREFIX + "RateLimited"),
    (ServiceStopping, ERROR_PREFIX + "Stopping"),
    (AccessDenied, "org.freedesktop.DBus.Error.AccessDenied"),
    (KeyServiceError, ERROR_PREFIX + "Failed"),
]

_DBUS = "org.freedesktop.DBus"
_current_sender: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_sender", default=None
)


def to_dbus_error(err: KeyServiceError) -> DBusError:
    for error_type, name in ERROR_NAMES:
        if isinstance(err, error_type):
            return DBusError(name, str(err))
    raise AssertionError("KeyServiceError is always mapped")


def _mapped_errors(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Run a method through the interface's RequestGuard and map its errors."""

    @functools.wraps(fn)
    async def wrapper(self: "KeyStorageInterface", *args: Any) -> Any:
        try:
            return await self.guard.run(
                fn.__name__, args, self._caller, functools.partial(fn, self, *args)
            )
        except KeyServiceError as err:
            raise to_dbus_error(err) from None

    return wrapper


def _variant_for(value: Any) -> Variant:
    if isinstance(value, bool):
        return Variant("b", value)
    if isinstance(value, int):
        return Variant("i", value)
    if isinstance(value, float):
        return Variant("d", value)
    return Variant("s", str(value))


def vehicle_state_variant(views: dict[str, FactView]) -> dict[str, Variant]:
    """Build the VehicleState property: fact -> {value, age, fresh, problem}."""
    state = {}
    for fact, view in views.items():
        entry: dict[str, Variant] = {"fresh": Variant("b", view.fresh)}
        if view.value is not None:
            entry["value"] = _variant_for(view.value)
        if view.age is not None:
            entry["age"] = Variant("d", round(view.age, 3))
        if view.problem is not None:
            entry["problem"] = Variant("s", view.problem)
        state[fact] = Variant("a{sv}", entry)
    return state


class KeyStorageInterface(ServiceInterface):
    """org.webinos.KeyStorage1 on /org/webinos/KeyStorage1."""

    def __init__(
        self, core: KeyService, callers: CallerCache, guard: RequestGuard | None = None
    ) -> None:
        super().__init__(INTERFACE)
        self._core = core
        self._callers = callers
        self.guard = RequestGuard() if guard is None else guard
        # Fixed TPM properties (manufacturer, vendor, spec, firmware), read at start.
        self.tpm_info: dict[str, str] = {}
        core.monitor.add_listener(self._on_vehicle_event)

    async def _caller(self) -> Caller:
        sender = _current_sender.get()
        if sender is None:
            raise AccessDenied("the caller could not be identified")
        return await self._callers.identify(sender)

    @method()
    @_mapped_errors
    async def ListKeys(self) -> "as":  # noqa: F821 (a D-Bus signature)
        return self._core.list_keys(await self._caller())

    @method()
    @_mapped_errors
    async def GetPublicKey(self, key_id: "s") -> "ay":  # noqa: F821
        return await self._core.get_public_key(await self._caller(), key_id)

    @method()
    @_mapped_errors
    async def Sign(self, key_id: "s", digest: "ay", algorithm: "s") -> "ay":  # noqa: F821
        return await self._core.sign(await self._caller(), key_id, digest, algorithm)

    @method()
    @_mapped_errors
    async def GenerateKey(
        self, key_id: "s", key_type: "s", options: "a{sv}"  # noqa: F821
    ) -> "ay":  # noqa: F821
        plain = {name: variant.value for name, variant in options.items()}
        return await self._core.generate_key(await self._caller(), key_id, key_type, plain)

    @method()
    @_mapped_errors
    async def DeleteKey(self, key_id: "s") -> None:  # noqa: F821
        await self._core.delete_key(await self._caller(), key_id)

    @method()
    @_mapped_errors
    async def ImportKey(
        self, key_id: "s", private_key: "ay", options: "a{sv}"  # noqa: F821
    ) -> "ay":  # noqa: F821
        plain = {name: variant.value for name, variant in options.items()}
        # NOTE: dbus-fast hands over the key as immutable bytes, and its
        # receive buffer held it too; only the service's own copy is wiped.
        buffer = bytearray(private_key)
        del private_key
        return await self._core.import_key(await self._caller(), key_id, buffer, plain)

    @method()
    @_mapped_errors
    async def CreateCSR(
        self, key_id: "s", subject: "s", options: "a{sv}"  # noqa: F821
    ) -> "ay":  # noqa: F821
        plain = {name: variant.value for name, variant in options.items()}
        return await self._core.create_csr(await self._caller(), key_id, subject, plain)

    @method()
    @_mapped_errors
    async def SetCertificate(self, key_id: "s", cert_chain: "ay") -> None:  # noqa: F821
        await self._core.set_certificate(await self._caller(), key_id, cert_chain)

    @method()
    @_mapped_errors
    async def GetCertificate(self, key_id: "s") -> "ay":  # noqa: F821
        return await self._core.get_certificate(await self._caller(), key_id)

    @method()
    @_mapped_errors
    async def RotateKey(
        self, key_id: "s", new_key_id: "s", options: "a{sv}"  # noqa: F821
    ) -> "ay":  # noqa: F821
        plain = {name: variant.value for name, variant in options.items()}
        return await self._core.rotate_key(await self._caller(), key_id, new_key_id, plain)

    @method()
    @_mapped_errors
    async def LoadPolicy(self, signed_policy: "ay") -> "t":  # noqa: F821
        return await self._core.load_policy(await self._caller(), signed_policy)

    @dbus_property(access=PropertyAccess.READ)
    def Locked(self) -> "b":  # noqa: F821
        return self._core.monitor.locked

    @dbus_property(access=PropertyAccess.READ)
    def LockReason(self) -> "s":  # noqa: F821
        return self._core.monitor.decision.reason

    @dbus_property(access=PropertyAccess.READ)
    def VehicleState(self) -> "a{sv}":  # noqa: F821
        monitor = self._core.monitor
        now = monitor.current_time()
        return vehicle_state_variant(monitor.view(now))

    @dbus_property(access=PropertyAccess.READ)
    def TpmInfo(self) -> "a{sv}":  # noqa: F821
        info = {name: Variant("s", value) for name, value in self.tpm_info.items()}
        info["available"] = Variant("b", self._core.tpm.available)
        return info

    @signal()
    def LockChanged(self, locked: bool, reason: str) -> "bs":  # noqa: F821
        return [locked, reason]

    def _on_vehicle_event(self, event: Event) -> None:
        if isinstance(event, LockEvent):
            changed: dict[str, Any] = {"LockReason": event.decision.reason}
            if event.lock_changed:
                changed["Locked"] = event.decision.locked
                self.LockChanged(event.decision.locked, event.decision.reason)
            self.emit_properties_changed(changed)
        elif isinstance(event, FactChange):
            monitor = self._core.monitor
            views = monitor.view(event.timestamp)
            self.emit_properties_changed({"VehicleState": vehicle_state_variant(views)})


async def connect_bus(bus: str) -> MessageBus:
    """Connect to the system bus, the session bus or a D-Bus address."""
    if bus == "system":
        return await MessageBus(bus_type=BusType.SYSTEM).connect()
    if bus == "session":
        return await MessageBus(bus_type=BusType.SESSION).connect()
    return await MessageBus(bus_address=bus).connect()


async def _credentials(bus: MessageBus, unique_name: str) -> Caller:
    reply = await bus.call(
        Message(
            destination=_DBUS,
            path="/org/freedesktop/DBus",
            interface=_DBUS,
            member="GetConnectionCredentials",
            signature="s",
            body=[unique_name],
        )
    )
    if reply is None or reply.message_type != MessageType.METHOD_RETURN:
        detail = reply.body[0] if reply is not None and reply.body else "no reply"
        _LOGGER.warning("cannot get credentials of %s: %s", unique_name, detail)
        raise AccessDenied(f"the bus could not identify caller {unique_name}")
    credentials = reply.body[0]
    if "UnixUserID" not in credentials:
        raise AccessDenied(f"the bus reports no uid for caller {unique_name}")
    pid = credentials.get("ProcessID")
    return Caller(
        unique_name,
        int(credentials["UnixUserID"].value),
        int(pid.value) if pid is not None else None,
    )


async def serve(
    bus: MessageBus, core: KeyService, guard: RequestGuard | None = None
) -> KeyStorageInterface:
    """Export the interface and own the bus name.

    Raises:
        NameTaken: another connection owns the name. The request uses
            DO_NOT_QUEUE, so it fails at once instead of queueing.
    """
    callers = CallerCache(lambda name: _credentials(bus, name))

    def on_message(msg: Message) -> bool:
        if msg.message_type == MessageType.METHOD_CALL and msg.path == OBJECT_PATH:
            _current_sender.set(msg.sender)
        elif (
            msg.message_type == MessageType.SIGNAL
            and msg.member == "NameOwnerChanged"
            and msg.sender == _DBUS
            and msg.body[0].startswith(":")
            and not msg.body[2]
        ):
            callers.forget(msg.body[0])
        return False

    bus.add_message_handler(on_message)
    await bus.call(
        Message(
            destination=_DBUS,
            path="/org/freedesktop/DBus",
            interface=_DBUS,
            member="AddMatch",
            signature="s",
            body=[
                "type='signal',sender='org.freedesktop.DBus',"
                "interface='org.freedesktop.DBus',member='NameOwnerChanged'"
            ],
        )
    )
    interface = KeyStorageInterface(core, callers, guard)
    bus.export(OBJECT_PATH, interface)
    reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
    if reply != RequestNameReply.PRIMARY_OWNER:
        bus.unexport(OBJECT_PATH)
        raise NameTaken(
            f"the D-Bus name {BUS_NAME} is already owned by another process "
            f"({reply.name}); stop the other instance first"
        )
    _LOGGER.info("serving %s on %s", BUS_NAME, OBJECT_PATH)
    return interface
