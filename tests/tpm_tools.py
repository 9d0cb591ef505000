"""Direct TPM access for tests: extend a PCR as a changed boot would."""

from __future__ import annotations

import os

os.environ.setdefault("TSS2_LOG", "all+NONE")

from tpm2_pytss import ESAPI, TCTILdr  # noqa: E402
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_HC  # noqa: E402
from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA, TPMU_HA  # noqa: E402


def _open(port: int) -> tuple[TCTILdr, ESAPI]:
    tcti = TCTILdr("swtpm", f"host=127.0.0.1,port={port}")
    return tcti, ESAPI(tcti)


def extend_pcr(port: int, index: int, data: bytes = b"\x5a" * 32) -> None:
    tcti, esapi = _open(port)
    try:
        digest = TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=data))
        esapi.pcr_extend(ESYS_TR.parse(f"PCR{index}"), TPML_DIGEST_VALUES([digest]))
    finally:
        esapi.close()
        tcti.close()


def handles(port: int, first: int) -> list[int]:
    tcti, esapi = _open(port)
    try:
        _, data = esapi.get_capability(TPM2_CAP.HANDLES, first, 32)
        return list(data.data.handles)
    finally:
        esapi.close()
        tcti.close()


def transient_handles(port: int) -> list[int]:
    return handles(port, TPM2_HC.TRANSIENT_FIRST)


def persistent_handles(port: int) -> list[int]:
    return handles(port, TPM2_HC.PERSISTENT_FIRST)


def read_pcrs(port: int, indices: tuple[int, ...]) -> dict[int, bytes]:
    """Return the current SHA-256 values of ``indices``."""
    from tpm2_pytss.types import TPML_PCR_SELECTION

    tcti, esapi = _open(port)
    try:
        values: dict[int, bytes] = {}
        for index in indices:
            _, _, digests = esapi.pcr_read(TPML_PCR_SELECTION.parse(f"sha256:{index}"))
            values[index] = bytes(digests[0])
        return values
    finally:
        esapi.close()
        tcti.close()


def trial_policy_digest(port: int, indices: tuple[int, ...], counter_index: int,
                        release: int) -> bytes:
    """Compute PolicyPCR + PolicyNV(counter <= release) in a TPM trial session."""
    from tpm2_pytss.constants import TPM2_EO, TPM2_SE
    from tpm2_pytss.types import TPM2B_OPERAND, TPML_PCR_SELECTION, TPMT_SYM_DEF

    tcti, esapi = _open(port)
    try:
        session = esapi.start_auth_session(
            ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
        try:
            selection = "sha256:" + ",".join(str(i) for i in indices)
            esapi.policy_pcr(session, None, TPML_PCR_SELECTION.parse(selection))
            counter = esapi.tr_from_tpmpublic(counter_index)
            esapi.policy_nv(counter, counter, session,
                            TPM2B_OPERAND(release.to_bytes(8, "big")),
                            TPM2_EO.UNSIGNED_LE)
            return bytes(esapi.policy_get_digest(session))
        finally:
            esapi.flush_context(session)
    finally:
        esapi.close()
        tcti.close()


def leave_transient_loaded(port: int) -> None:
    """Load a primary key and disconnect without flushing it, as a crash would."""
    from tpm2_pytss.types import TPM2B_PUBLIC

    tcti, esapi = _open(port)
    try:
        esapi.create_primary(None, TPM2B_PUBLIC.parse("ecc256"), ESYS_TR.OWNER)
    finally:
        esapi.close()
        tcti.close()


def enter_lockout(port: int) -> None:
    """Drive the TPM into dictionary-attack lockout with one wrong auth value.

    maxTries is set to 1, then a DA-protected primary key is used with a
    wrong auth value, as an attacker guessing a password would.
    """
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.constants import TPM2_CAP, TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE, TPMS_SENSITIVE_CREATE

    tcti, esapi = _open(port)
    try:
        esapi.dictionary_attack_parameters(1, 1000, 1000)
        attributes = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.FIXEDTPM
                      | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
                      | TPMA_OBJECT.USERWITHAUTH)
        sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=b"secret"))
        primary, *_ = esapi.create_primary(
            sensitive, TPM2B_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=attributes),
            ESYS_TR.OWNER)
        try:
            esapi.tr_set_auth(primary, b"wrong")
            try:
                esapi.create(primary, None, TPM2B_PUBLIC.parse("ecc256"))
            except TSS2_Exception:
                pass
            else:
                raise AssertionError("a wrong auth value was accepted")
        finally:
            esapi.flush_context(primary)
        _, data = esapi.get_capability(TPM2_CAP.TPM_PROPERTIES, 0x200, 1)
        assert int(data.data.tpmProperties[0].value) & 0x200, "TPM is not in lockout"
    finally:
        esapi.close()
        tcti.close()
