"""weightmark: keyed marks in neural-network weights, found again with an exact p-value.

Mark a model before release, find the mark in a suspected derivative with the
secret key, and sign every release (ed25519 certificates). A thin layer over
the Rust library; the functions have the ``weightmark`` command's semantics
and return typed results whose ``to_dict()`` matches the CLI's ``--json``.

Files::

    import weightmark as wm
    keys = wm.keygen("lab")                                   # lab.key, lab.pub
    rel = wm.embed("model.safetensors", "marked.safetensors", keys.secret, label="v1")
    found = wm.detect("suspect.safetensors", keys.secret, cert=rel.certificate)
    assert found.detected

In memory (numpy state dicts)::

    marked, record = wm.mark(state_dict, keys.secret, label="v1")
    safetensors.numpy.save_file(marked, "marked.safetensors")
    cert = wm.certify("marked.safetensors", record, keys.secret)

Errors are :class:`WeightmarkError` subclasses: :class:`FormatError`,
:class:`KeyFileError`, :class:`CertificateError` and :class:`InputError`, each
with the library's one-line message and a ``path`` attribute (or ``None``).
Long work releases the GIL; pass ``progress=callable`` to be told
``(stage, done, total)``.
"""

from ._native import (
    CertificateError,
    FormatError,
    InputError,
    KeyFileError,
    WeightmarkError,
    __version__,
)
from ._api import (
    DEFAULT_STRENGTH,
    DEFAULT_THRESHOLD_P,
    MAX_STRENGTH,
    PathLike,
    Progress,
    certify,
    convert,
    detect,
    detect_arrays,
    embed,
    identify,
    inspect,
    keygen,
    mark,
    verify,
)
from ._results import (
    Conversion,
    Detection,
    EmbedResult,
    Identification,
    Inspection,
    KeyPair,
    MarkedTensor,
    MarkSummary,
    ModelCheck,
    ModelFileInfo,
    OutputFile,
    RankedCandidate,
    ReleaseRecord,
    Skipped,
    TensorInfo,
    TensorResult,
    Verified,
)

__all__ = [
    "__version__",
    "DEFAULT_STRENGTH",
    "DEFAULT_THRESHOLD_P",
    "MAX_STRENGTH",
    "PathLike",
    "Progress",
    # functions
    "keygen",
    "embed",
    "detect",
    "identify",
    "verify",
    "inspect",
    "convert",
    "mark",
    "certify",
    "detect_arrays",
    # errors
    "WeightmarkError",
    "FormatError",
    "KeyFileError",
    "CertificateError",
    "InputError",
    # results
    "KeyPair",
    "EmbedResult",
    "MarkSummary",
    "MarkedTensor",
    "OutputFile",
    "ReleaseRecord",
    "Detection",
    "TensorResult",
    "Skipped",
    "Identification",
    "RankedCandidate",
    "Verified",
    "ModelCheck",
    "Inspection",
    "ModelFileInfo",
    "TensorInfo",
    "Conversion",
]
