"""Key store: one JSON file per key with its metadata and TPM blobs.

Only the public area and the private area wrapped by the SRK are stored;
neither is usable outside the TPM that created it. A file appears under its
final name only when complete (temp file, fsync, rename, fsync the folder),
so a power loss leaves either the old state or the new one.

Format versions: 1 has the PolicyPCR keys of the first release, with an
optional ``gate_policy``; 2 adds the optional ``authorization``
(PolicyAuthorize by an OEM key), ``certificate_chain`` and ``replaces``
(the key a rotation replaces). Version 1 files are read as they are and
written as version 2 when they change.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import AlreadyExists, InvalidArgument, KeyServiceError, NotFound
from .tpm import Authorization, KeyBlobs, PcrSelection

_LOGGER = logging.getLogger(__name__)

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_TEMP_PREFIX = ".tmp-"
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SUFFIX = ".key.json"


def check_key_id(key_id: str) -> str:
    """Return ``key_id`` if valid, else raise InvalidArgument naming it."""
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
        raise InvalidArgument(
            f"key id {key_id!r} is invalid: use 1 to 64 letters, digits, '.', "
            "'_' or '-', starting with a letter or digit"
        )
    return key_id


@dataclass(frozen=True)
class KeyRecord:
    """A stored key: who owns it, what it is, and its TPM blobs."""

    key_id: str
    key_type: str
    owner_uid: int
    blobs: KeyBlobs
    public_key_der: bytes
    certificate_chain: bytes = b""  # PEM, leaf first; empty until SetCertificate
    replaces: str | None = None  # key id that this key replaces once certified
    # Name of the gate policy the key needs besides the default gate, if any.
    gate_policy: str | None = None

    def to_json(self) -> str:
        data = {
            "version": FORMAT_VERSION,
            "key_id": self.key_id,
            "key_type": self.key_type,
            "owner_uid": self.owner_uid,
            "pcr_selection": str(self.blobs.pcr_selection),
            "tpm_public": base64.b64encode(self.blobs.public).decode(),
            "tpm_private": base64.b64encode(self.blobs.private).decode(),
            "public_key_der": base64.b64encode(self.public_key_der).decode(),
        }
        if self.blobs.authorization is not None:
            data["authorization"] = {
                "oem_key_name": self.blobs.authorization.oem_key_name.hex(),
                "policy_ref": self.blobs.authorization.policy_ref.hex(),
            }
        if self.certificate_chain:
            data["certificate_chain"] = self.certificate_chain.decode("ascii")
        if self.replaces is not None:
            data["replaces"] = self.replaces
        if self.gate_policy is not None:
            data["gate_policy"] = self.gate_policy
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str, source: Path) -> KeyRecord:
        try:
            data = json.loads(text)
            version = data["version"]
            if version not in READABLE_VERSIONS:
                raise ValueError(
                    f"format version {version} is not supported (this service "
                    f"reads {', '.join(map(str, READABLE_VERSIONS))})"
                )
            authorization = None
            if "authorization" in data:
                authorization = Authorization(
                    bytes.fromhex(data["authorization"]["oem_key_name"]),
                    bytes.fromhex(data["authorization"]["policy_ref"]),
                )
            blobs = KeyBlobs(
                base64.b64decode(data["tpm_public"], validate=True),
                base64.b64decode(data["tpm_private"], validate=True),
                PcrSelection.parse(data["pcr_selection"]),
                authorization,
            )
            gate_policy = data.get("gate_policy")
            if gate_policy is not None and not isinstance(gate_policy, str):
                raise ValueError(f"gate_policy {gate_policy!r} is not a string")
            chain = data.get("certificate_chain", "")
            if not isinstance(chain, str):
                raise ValueError("certificate_chain is not a PEM string")
            replaces = data.get("replaces")
            if replaces is not None:
                check_key_id(replaces)
            owner_uid = int(data["owner_uid"])
            if not 0 <= owner_uid < 2**32:
                raise ValueError(f"owner_uid {owner_uid} is not a uid")
            return cls(
                key_id=check_key_id(data["key_id"]),
                key_type=str(data["key_type"]),
                owner_uid=owner_uid,
                blobs=blobs,
                public_key_der=base64.b64decode(data["public_key_der"], validate=True),
                gate_policy=gate_policy,
                certificate_chain=chain.encode("ascii"),
                replaces=replaces,
            )
        except (ValueError, KeyError, TypeError) as err:
            raise KeyServiceError(f"key file {source} is damaged: {err}") from err


class KeyStore:
    """Directory of key files, loaded into memory at start."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._records: dict[str, KeyRecord] = {}

    def load(self) -> None:
        """Read every key file; skip and log damaged ones, never delete them.

        Raises:
            KeyServiceError: the key folder cannot be created or read.
        """
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not os.access(self.directory, os.R_OK | os.W_OK | os.X_OK):
                raise PermissionError("not readable and writable by this user")
        except OSError as err:
            raise KeyServiceError(
                f"key folder {self.directory} is unusable ({err}); fix [storage] "
                "key_dir or its permissions"
            ) from err
        self._records.clear()
        for temp in self.directory.glob(f"{_TEMP_PREFIX}*"):
            # A write that a power loss interrupted; its key was never visible.
            _LOGGER.warning("removing incomplete key file %s", temp)
            temp.unlink(missing_ok=True)
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                record = KeyRecord.from_json(path.read_text(encoding="utf-8"), path)
            except (OSError, KeyServiceError) as err:
                _LOGGER.error("skipping key file %s: %s", path, err)
                continue
            if path.name != record.key_id + _SUFFIX:
                _LOGGER.error(
                    "skipping key file %s: it holds key %r", path, record.key_id
                )
                continue
            self._records[record.key_id] = record
        _LOGGER.info("loaded %d keys from %s", len(self._records), self.directory)

    def ids(self) -> list[str]:
        return sorted(self._records)

    def records(self) -> list[KeyRecord]:
        return [self._records[k] for k in self.ids()]

    def get(self, key_id: str) -> KeyRecord:
        check_key_id(key_id)
        try:
            return self._records[key_id]
        except KeyError:
            raise NotFound(f"key {key_id!r} not found") from None

    def __contains__(self, key_id: str) -> bool:
        return key_id in self._records

    def add(self, record: KeyRecord) -> None:
        """Write a new key file atomically and make the key visible."""
        if record.key_id in self._records:
            raise AlreadyExists(f"key {record.key_id!r} already exists")
        self._write_atomically(self._path(record.key_id), record.to_json())
        self._records[record.key_id] = record

    def replace(self, record: KeyRecord) -> None:
        """Rewrite an existing key file atomically (for example to add a certificate)."""
        self.get(record.key_id)
        self._write_atomically(self._path(record.key_id), record.to_json())
        self._records[record.key_id] = record

    def remove(self, key_id: str) -> None:
        self.get(key_id)
        path = self._path(key_id)
        path.unlink()
        _fsync_directory(self.directory)
        del self._records[key_id]

    def _path(self, key_id: str) -> Path:
        return self.directory / (key_id + _SUFFIX)

    def _write_atomically(self, path: Path, text: str) -> None:
        write_file_atomically(path, text.encode("utf-8"))


def write_file_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` so that a power loss leaves the old file or the new one.

    Temp file in the same folder, fsync, rename over ``path``, fsync the
    folder. The file is readable by its owner only.
    """
    fd, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o600)
        os.rename(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
