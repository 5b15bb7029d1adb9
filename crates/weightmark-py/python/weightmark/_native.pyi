"""Type stubs of ``weightmark._native``, the package's compiled half.

Use the ``weightmark`` package instead: it wraps these functions into typed
results and numpy arrays. Results cross as JSON text; tensors as
``(name, safetensors dtype, shape, bytes)`` tuples going in and
``(name, bytearray)`` pairs coming out.
"""

import os
from typing import Any, Callable, List, Optional, Tuple, Union

_Path = Union[str, os.PathLike[str]]
_Progress = Optional[Callable[[str, int, int], Any]]
_Tensor = Tuple[str, str, List[int], bytes]

__version__: str
DEFAULT_STRENGTH: float
MAX_STRENGTH: float
DEFAULT_THRESHOLD_P: float

class WeightmarkError(Exception):
    """Base class of every error weightmark raises."""

    path: Optional[str]

class FormatError(WeightmarkError):
    """A model file, shard index or GGUF file is malformed or not a model."""

class KeyFileError(WeightmarkError):
    """A key file is malformed, or would be overwritten."""

class CertificateError(WeightmarkError):
    """A certificate or report is malformed, does not verify, belongs to another
    key, or uses a scheme this version does not know."""

class InputError(WeightmarkError):
    """An invalid argument, a missing file or other I/O failure, or a tensor
    selection problem."""

def keygen(name: _Path) -> Tuple[str, str, str]:
    """Writes NAME.key and NAME.pub; returns (secret path, public path, key id)."""

def embed(
    model: _Path,
    output: _Path,
    key: _Path,
    *,
    label: Optional[str] = None,
    recipient: Optional[str] = None,
    strength: Optional[float] = ...,
    scheme: Optional[str] = None,
    tensors: Optional[List[str]] = None,
    cert: Optional[_Path] = None,
    force: bool = False,
    progress: _Progress = None,
    recipient_code: Optional[str] = None,
    code_groups: Optional[int] = None,
    code_cutoff: Optional[float] = None,
    recipient_share: Optional[float] = None,
) -> str:
    """Marks a model file and writes its certificate; returns the summary (JSON)."""

def detect(
    suspect: _Path,
    key: _Path,
    *,
    cert: Optional[_Path] = None,
    label: Optional[str] = None,
    recipient: Optional[str] = None,
    original: Optional[_Path] = None,
    threshold: float = ...,
    progress: _Progress = None,
) -> Tuple[str, List[str]]:
    """Tests a model file; returns the CLI's detect JSON and the reader's warnings."""

def detect_arrays(
    tensors: List[_Tensor],
    key: _Path,
    *,
    cert: Optional[_Path] = None,
    label: Optional[str] = None,
    recipient: Optional[str] = None,
    original: Optional[List[_Tensor]] = None,
    threshold: float = ...,
    progress: _Progress = None,
) -> str:
    """Tests tensors held in memory; returns the CLI's detect JSON."""

def identify(
    suspect: _Path,
    key: _Path,
    certs: _Path,
    *,
    original: Optional[_Path] = None,
    threshold: float = ...,
    progress: _Progress = None,
) -> Tuple[str, List[Tuple[str, str]]]:
    """Ranks every certificate of a directory; returns the CLI's identify JSON and
    the files left out with the reason."""

def verify(file: _Path, public: _Path, *, model: Optional[_Path] = None) -> str:
    """Checks a certificate or report; returns the CLI's verify JSON."""

def inspect(model: _Path, *, digests: bool = True) -> Tuple[str, List[str]]:
    """Returns the CLI's inspect JSON and the reader's warnings."""

def convert(
    model: _Path,
    output: _Path,
    *,
    dtype: str = "f32",
    max_shard_size: Optional[str] = None,
) -> str:
    """Converts a GGUF model to safetensors; returns a summary (JSON)."""

def mark(
    tensors: List[_Tensor],
    key: _Path,
    *,
    label: str,
    recipient: Optional[str] = None,
    strength: Optional[float] = ...,
    scheme: Optional[str] = None,
    tensors_globs: Optional[List[str]] = None,
    progress: _Progress = None,
    recipient_code: Optional[str] = None,
    code_groups: Optional[int] = None,
    code_cutoff: Optional[float] = None,
    recipient_share: Optional[float] = None,
) -> Tuple[List[Tuple[str, bytearray]], str, str]:
    """Marks tensors in memory; returns every tensor's bytes, the release record
    (JSON) and the summary (JSON)."""

def certify(
    saved: _Path,
    record: str,
    key: _Path,
    *,
    cert: Optional[_Path] = None,
) -> str:
    """Signs the certificate of a saved in-memory marking; returns its path."""
