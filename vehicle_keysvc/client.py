"""Async client for org.webinos.KeyStorage1, for the PZP side and tools.

Example, on the system bus::

    bus = await connect("system")
    client = KeyStorageClient(bus)
    signature = await client.sign("pzp", digest)

Every D-Bus error reply is raised as :class:`KeyStorageError` with the
D-Bus error name, so a caller can tell ``...Error.Locked`` from
``org.freedesktop.DBus.Error.AccessDenied``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from .dbus_service import BUS_NAME, INTERFACE, OBJECT_PATH, connect_bus


async def connect(bus: str = "system") -> MessageBus:
    """Connect to ``"system"``, ``"session"`` or a D-Bus address such as unix:path=..."""
    return await connect_bus(bus)


class KeyStorageError(Exception):
    """A D-Bus error reply; ``name`` is the D-Bus error name."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[-1]


class KeyStorageClient:
    """Calls the key service on an already connected bus."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    async def _call(self, member: str, signature: str = "", body: list[Any] | None = None,
                    interface: str = INTERFACE) -> list[Any]:
        reply = await self.bus.call(
            Message(
                destination=BUS_NAME,
                path=OBJECT_PATH,
                interface=interface,
                member=member,
                signature=signature,
                body=body or [],
            )
        )
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise KeyStorageError(reply.error_name or "unknown", text)
        return list(reply.body)

    async def list_keys(self) -> list[str]:
        return (await self._call("ListKeys"))[0]

    async def get_public_key(self, key_id: str) -> bytes:
        return bytes((await self._call("GetPublicKey", "s", [key_id]))[0])

    async def sign(self, key_id: str, digest: bytes, algorithm: str = "ecdsa-sha256") -> bytes:
        return bytes((await self._call("Sign", "says", [key_id, digest, algorithm]))[0])

    async def generate_key(self, key_id: str, owner_uid: int, key_type: str = "ecc-p256",
                           pcrs: str | None = None,
                           gate_policy: str | None = None) -> bytes:
        options = {"owner_uid": Variant("u", owner_uid)}
        if pcrs is not None:
            options["pcrs"] = Variant("s", pcrs)
        if gate_policy is not None:
            options["gate_policy"] = Variant("s", gate_policy)
        return bytes((await self._call("GenerateKey", "ssa{sv}", [key_id, key_type, options]))[0])

    async def delete_key(self, key_id: str) -> None:
        await self._call("DeleteKey", "s", [key_id])

    async def generate(self, key_id: str, key_type: str,
                       options: dict[str, Variant]) -> bytes:
        """Call GenerateKey with any options, e.g. ``{"policy": Variant("s", "authorized")}``."""
        return bytes((await self._call("GenerateKey", "ssa{sv}",
                                       [key_id, key_type, options]))[0])

    async def import_key(self, key_id: str, private_key: bytes, owner_uid: int,
                         pcrs: str | None = None, policy: str | None = None,
                         gate_policy: str | None = None) -> bytes:
        """Import a private key (PEM or DER) into the TPM; return its public DER."""
        options = {"owner_uid": Variant("u", owner_uid)}
        if pcrs is not None:
            options["pcrs"] = Variant("s", pcrs)
        if policy is not None:
            options["policy"] = Variant("s", policy)
        if gate_policy is not None:
            options["gate_policy"] = Variant("s", gate_policy)
        body = [key_id, bytes(private_key), options]
        return bytes((await self._call("ImportKey", "saya{sv}", body))[0])

    async def create_csr(self, key_id: str, subject: str,
                         algorithm: str | None = None) -> bytes:
        options = {} if algorithm is None else {"algorithm": Variant("s", algorithm)}
        body = [key_id, subject, options]
        return bytes((await self._call("CreateCSR", "ssa{sv}", body))[0])

    async def set_certificate(self, key_id: str, cert_chain: bytes) -> None:
        await self._call("SetCertificate", "say", [key_id, cert_chain])

    async def get_certificate(self, key_id: str) -> bytes:
        return bytes((await self._call("GetCertificate", "s", [key_id]))[0])

    async def rotate_key(self, key_id: str, new_key_id: str,
                         options: dict[str, Variant] | None = None) -> bytes:
        body = [key_id, new_key_id, options or {}]
        return bytes((await self._call("RotateKey", "ssa{sv}", body))[0])

    async def load_policy(self, signed_policy: bytes) -> int:
        """Send a signed policy file; return the release counter after loading it."""
        return int((await self._call("LoadPolicy", "ay", [signed_policy]))[0])

    async def locked(self) -> tuple[bool, str]:
        """Return the gate's decision: whether keys are locked, and why."""
        return bool(await self.get_property("Locked")), str(
            await self.get_property("LockReason"))

    async def tpm_info(self) -> dict[str, Any]:
        """Return the TPM's manufacturer, vendor, spec, firmware and availability."""
        raw = await self.get_property("TpmInfo")
        return {name: variant.value for name, variant in raw.items()}

    async def service_pid(self) -> int:
        """Return the pid of the process that owns the service's bus name."""
        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="GetConnectionUnixProcessID",
            signature="s", body=[BUS_NAME]))
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise KeyStorageError(reply.error_name or "unknown", text)
        return int(reply.body[0])

    async def get_property(self, name: str) -> Any:
        body = await self._call("Get", "ss", [INTERFACE, name],
                                interface="org.freedesktop.DBus.Properties")
        return body[0].value

    async def vehicle_state(self) -> dict[str, dict[str, Any]]:
        raw = await self.get_property("VehicleState")
        return {fact: {k: v.value for k, v in entry.value.items()} for fact, entry in raw.items()}

    async def watch(self, on_lock_changed: Callable[[bool, str], None],
                    on_state: Callable[[dict[str, dict[str, Any]]], None] | None = None) -> None:
        """Call back on LockChanged and, if given, on VehicleState changes."""

        def handler(msg: Message) -> bool:
            if msg.message_type != MessageType.SIGNAL or msg.path != OBJECT_PATH:
                return False
            if msg.member == "LockChanged" and msg.interface == INTERFACE:
                on_lock_changed(bool(msg.body[0]), str(msg.body[1]))
            elif (msg.member == "PropertiesChanged" and on_state is not None
                  and "VehicleState" in msg.body[1]):
                raw = msg.body[1]["VehicleState"].value
                on_state({f: {k: v.value for k, v in e.value.items()} for f, e in raw.items()})
            return False

        self.bus.add_message_handler(handler)
        for rule in (
            f"type='signal',interface='{INTERFACE}',member='LockChanged',path='{OBJECT_PATH}'",
            "type='signal',interface='org.freedesktop.DBus.Properties',"
            f"member='PropertiesChanged',path='{OBJECT_PATH}'",
        ):
            await self.bus.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                body=[rule]))
