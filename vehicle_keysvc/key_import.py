"""Parsing of private keys that ImportKey brings into the TPM.

The parsers never echo key bytes in an error, because the messages reach
the D-Bus caller and the log.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .algorithms import KEY_TYPES, KeyType
from .errors import InvalidArgument

MAX_IMPORT_SIZE = 16 * 1024  # bytes of PEM or DER private key


def parse_private_key(buffer: bytearray) -> Any:
    """Parse an unencrypted PEM or DER private key; never echo its content."""
    if not 1 <= len(buffer) <= MAX_IMPORT_SIZE:
        raise InvalidArgument(
            f"private key is {len(buffer)} bytes; give 1 to {MAX_IMPORT_SIZE} bytes "
            "of PEM or DER (PKCS #8, SEC 1 or PKCS #1)"
        )
    loader = (serialization.load_pem_private_key
              if bytes(buffer[:10]) == b"-----BEGIN" else serialization.load_der_private_key)
    try:
        return loader(buffer, password=None)
    except TypeError:
        raise InvalidArgument(
            "the private key is encrypted; import it unencrypted over the "
            "service's D-Bus connection, the service never writes it anywhere"
        ) from None
    except ValueError:
        # The parser's message may quote key bytes, so it is not passed on.
        raise InvalidArgument(
            "the private key is not valid PEM or DER (PKCS #8, SEC 1 or PKCS #1)"
        ) from None


def key_type_of(private_key: Any) -> KeyType:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        names = {"secp256r1": "ecc-p256", "secp384r1": "ecc-p384"}
        if private_key.curve.name in names:
            return KEY_TYPES[names[private_key.curve.name]]
        found = f"ECC {private_key.curve.name}"
    elif isinstance(private_key, rsa.RSAPrivateKey):
        if private_key.key_size in (2048, 3072):
            return KEY_TYPES[f"rsa-{private_key.key_size}"]
        found = f"RSA {private_key.key_size}"
    elif isinstance(private_key, ed25519.Ed25519PrivateKey):
        return KEY_TYPES["ed25519"]
    else:
        found = type(private_key).__name__
    raise InvalidArgument(
        f"private key type {found} is not supported; import ECC P-256 or P-384, "
        "RSA 2048 or 3072, or Ed25519"
    )
