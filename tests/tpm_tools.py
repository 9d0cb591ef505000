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
