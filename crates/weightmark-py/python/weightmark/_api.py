"""The functions of the ``weightmark`` package (re-exported from ``weightmark``)."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from ._arrays import from_native, to_native
from ._results import (
    Conversion,
    Detection,
    EmbedResult,
    Identification,
    Inspection,
    KeyPair,
    MarkSummary,
    ReleaseRecord,
    Verified,
)

PathLike = Union[str, "os.PathLike[str]"]
"""A path: ``str`` or any ``os.PathLike``."""

Progress = Callable[[str, int, int], Any]
"""A progress callback, called as ``progress(stage, done, total)`` in bytes."""

DEFAULT_STRENGTH: float = _native.DEFAULT_STRENGTH
"""ss1's fixed default strength (0.003). ss2, the default scheme, chooses its
strength by model size when ``strength`` is ``None`` (docs/fidelity.md)."""

MAX_STRENGTH: float = _native.MAX_STRENGTH
"""Largest strength accepted (0.1)."""

DEFAULT_THRESHOLD_P: float = _native.DEFAULT_THRESHOLD_P
"""Default decision threshold on the p-value bound (1e-9, z >= 6.44)."""


def _globs(tensors: Union[str, Sequence[str], None]) -> Optional[List[str]]:
    if tensors is None:
        return None
    if isinstance(tensors, str):
        return [tensors]
    return list(tensors)


def _max_shard(size: Union[int, str, None]) -> Optional[str]:
    if size is None:
        return None
    if isinstance(size, bool):
        raise _native.InputError("max_shard_size must be a number of bytes or a size such as '2GB'")
    if isinstance(size, int):
        return str(size)
    return size


def keygen(name: PathLike) -> KeyPair:
    """Generate an owner key pair: writes ``NAME.key`` (secret, mode 0600) and
    ``NAME.pub``, like ``weightmark keygen -o NAME``.

    Refuses to overwrite an existing key file (:class:`KeyFileError`).
    """
    secret, public, key_id = _native.keygen(name)
    return KeyPair._from(secret, public, key_id)


def embed(
    model: PathLike,
    output: PathLike,
    key: PathLike,
    *,
    label: Optional[str] = None,
    recipient: Optional[str] = None,
    strength: Optional[float] = None,
    scheme: Optional[str] = None,
    tensors: Union[str, Sequence[str], None] = None,
    cert: Optional[PathLike] = None,
    force: bool = False,
    progress: Optional[Progress] = None,
    recipient_code: Optional[str] = None,
    code_groups: Optional[int] = None,
    code_cutoff: Optional[float] = None,
    recipient_share: Optional[float] = None,
) -> EmbedResult:
    """Mark a model and write it with its signed certificate, like ``weightmark embed``.

    Args:
        model: a ``.safetensors`` file or a model directory (single file or shards).
        output: where the marked model goes; it mirrors the input's layout.
        key: the owner's secret key file (``NAME.key``).
        label: release label (default: the model's name).
        recipient: recipient (licensee), for a distinct mark per copy.
        strength: mark RMS relative to the weights' RMS, in (0, 0.1]; ``None``
            (the default): ss2 picks it by model size within a fidelity budget,
            ss1 uses DEFAULT_STRENGTH.
        scheme: mark scheme, ``"ss1"`` or ``"ss2"`` (default: the library's,
            as for ``weightmark embed`` without ``--scheme``).
        tensors: glob(s) of the tensors to mark (default: float tensors with at
            least 2 dimensions and 4096 elements).
        cert: certificate path (default ``OUT.cert.json`` beside the output,
            never inside it). A path that would replace the key, the input or
            the output is refused.
        force: replace an existing output file and certificate (never a
            non-empty output directory); without it they are refused before
            any work starts, as ``weightmark embed`` without ``--force``.
        progress: called as ``progress(stage, done, total)``; silent by default.
        recipient_code: how the recipient component is built: ``"independent"``
            (a pattern per recipient, the default) or ``"tardos1"`` (a
            collusion-secure Tardos code: ``identify`` names colluders who
            combine their copies, with an exact bound on false accusation; see
            docs/provenance.md). Every licensee of a release should get the same
            code and parameters; it needs ``scheme="ss2"`` (the default) and a
            recipient.
        code_groups: ``tardos1`` only: the number of groups G (default 16384).
        code_cutoff: ``tardos1`` only: the bias cutoff t, in (0, 0.25]
            (default 0.01).
        recipient_share: with a recipient (ss2): the share of the mark's
            energy given to the recipient component, in [0.05, 0.95], the
            rest going to the release component every copy shares; the
            total change is the same at any share. More names colluders
            blind through mixing of their copies. Default: the most, up to
            0.8, that leaves the release component a predicted blind z of
            8.5 (0.5 on models too small to spare any, and for tardos1).

    Returns:
        What was written and measured (fidelity, blind and informed z).
    """
    text = _native.embed(
        model,
        output,
        key,
        label=label,
        recipient=recipient,
        strength=strength,
        scheme=scheme,
        tensors=_globs(tensors),
        cert=cert,
        force=force,
        progress=progress,
        recipient_code=recipient_code,
        code_groups=code_groups,
        code_cutoff=code_cutoff,
        recipient_share=recipient_share,
    )
    return EmbedResult._from(json.loads(text))


def detect(
    suspect: PathLike,
    key: PathLike,
    *,
    cert: Optional[PathLike] = None,
    label: Optional[str] = None,
    recipient: Optional[str] = None,
    original: Optional[PathLike] = None,
    threshold: float = DEFAULT_THRESHOLD_P,
    progress: Optional[Progress] = None,
) -> Detection:
    """Test a model for one release's mark, like ``weightmark detect --json``.

    Blind without ``original``, informed with it (after undoing
    function-preserving edits such as permutations). Give the release's
    certificate (its signature is checked against ``key``; it fixes scheme,
    label, recipient and tensors) or, for an ``ss1`` release, its ``label``
    (and ``recipient``).

    Args:
        suspect: a ``.safetensors`` file, model directory or ``.gguf`` file.
        key: the owner's secret key file.
        cert: the release's certificate.
        label: release label, without a certificate.
        recipient: recipient, without a certificate.
        original: the unmarked original, for informed detection.
        threshold: decide "detected" when the p-value bound is at most this.
        progress: called as ``progress(stage, done, total)``.

    Returns:
        The statistics and the decision; ``to_dict()`` is the CLI's JSON.
        A mark that is not found is a result with ``detected`` false, not an
        error; a suspect in which nothing can be tested is an :class:`InputError`.
    """
    text, warnings = _native.detect(
        suspect,
        key,
        cert=cert,
        label=label,
        recipient=recipient,
        original=original,
        threshold=threshold,
        progress=progress,
    )
    return Detection._from(json.loads(text), warnings)


def identify(
    suspect: PathLike,
    key: PathLike,
    certs_dir: PathLike,
    *,
    original: Optional[PathLike] = None,
    threshold: float = DEFAULT_THRESHOLD_P,
    progress: Optional[Progress] = None,
) -> Identification:
    """Which licensee's copy is this? Like ``weightmark identify --json``.

    Tests every certificate in ``certs_dir`` signed by ``key`` (other files are
    left out and listed in ``skipped_files``) in one read pass, ranks them by z
    and names those whose Bonferroni-adjusted bound is at most ``threshold``.
    """
    text, skipped = _native.identify(
        suspect, key, certs_dir, original=original, threshold=threshold, progress=progress
    )
    return Identification._from(json.loads(text), [(path, why) for path, why in skipped])


def verify(file: PathLike, pub: PathLike, *, model: Optional[PathLike] = None) -> Verified:
    """Check a certificate's or report's signature, like ``weightmark verify --json``.

    With ``model``, also compares the model's files and tensors with the digests
    the file records. A signature that does not verify (or another key's) gives
    a result with ``valid`` false and a ``reason``; a file that is not a
    certificate or report at all is a :class:`CertificateError`.
    """
    return Verified._from(json.loads(_native.verify(file, pub, model=model)))


def inspect(model: PathLike, *, digests: bool = True) -> Inspection:
    """A model's files, tensors, dtypes, shapes and digests, like
    ``weightmark inspect --json`` (``digests=False`` skips hashing, as
    ``--no-digests`` does)."""
    text, warnings = _native.inspect(model, digests=digests)
    return Inspection._from(json.loads(text), warnings)


def convert(
    gguf: PathLike,
    output: PathLike,
    *,
    dtype: str = "f32",
    max_shard_size: Union[int, str, None] = None,
) -> Conversion:
    """Convert a GGUF model to Hugging Face-layout safetensors, like ``weightmark convert``.

    Args:
        gguf: the ``.gguf`` file.
        output: a new (or empty) directory.
        dtype: dtype of the float tensors written: ``"f32"``, ``"f16"`` or ``"bf16"``.
        max_shard_size: largest shard, in bytes or as ``"500MB"``, ``"2GB"``,
            ``"1GiB"``; ``None`` writes a single ``model.safetensors``.
    """
    text = _native.convert(gguf, output, dtype=dtype, max_shard_size=_max_shard(max_shard_size))
    return Conversion._from(json.loads(text))


def mark(
    tensors: Mapping[str, Any],
    key: PathLike,
    *,
    label: str,
    recipient: Optional[str] = None,
    strength: Optional[float] = None,
    scheme: Optional[str] = None,
    tensors_globs: Union[str, Sequence[str], None] = None,
    dtypes: Optional[Mapping[str, str]] = None,
    progress: Optional[Progress] = None,
    recipient_code: Optional[str] = None,
    code_groups: Optional[int] = None,
    code_cutoff: Optional[float] = None,
    recipient_share: Optional[float] = None,
) -> Tuple[Dict[str, np.ndarray], ReleaseRecord]:
    """Mark tensors held in memory (a state dict of numpy arrays).

    The marked arrays are byte for byte what :func:`embed` writes for the same
    tensors. Save them (with the ``safetensors`` package, say: any layout, any
    order), then sign the certificate with :func:`certify`.

    Args:
        tensors: tensor name -> array. ``float64``, ``float32``, ``float16`` and
            ``bfloat16`` (``ml_dtypes.bfloat16``) arrays can be marked; other
            dtypes (``int64``, ...) pass through unchanged.
        key: the owner's secret key file.
        label: release label.
        recipient: recipient (licensee).
        strength: mark strength, in (0, 0.1]; ``None``: as in ``embed``.
        scheme: mark scheme, ``"ss1"`` or ``"ss2"`` (default: the library's).
        tensors_globs: glob(s) of the tensors to mark (default selection otherwise).
        dtypes: per-tensor dtype overrides, e.g. ``{"w": "bf16"}`` for a
            ``uint16`` array holding bfloat16 bit patterns (same element size).
        progress: called as ``progress(stage, done, total)``.
        recipient_code: how the recipient component is built: ``"independent"``
            (a pattern per recipient, the default) or ``"tardos1"`` (a
            collusion-secure Tardos code: ``identify`` names colluders who
            combine their copies, with an exact bound on false accusation; see
            docs/provenance.md). Every licensee of a release should get the same
            code and parameters; it needs ``scheme="ss2"`` (the default) and a
            recipient.
        code_groups: ``tardos1`` only: the number of groups G (default 16384).
        code_cutoff: ``tardos1`` only: the bias cutoff t, in (0, 0.25]
            (default 0.01).
        recipient_share: with a recipient (ss2): the recipient component's
            share of the mark's energy, as for :func:`embed`.

    Returns:
        Every tensor (marked or unchanged) in the input's order and in each
        input array's dtype, and the unsigned release record (with the
        measured fidelity and z in ``record.summary``).
    """
    raw, kinds = to_native(tensors, dtypes)
    shapes = {name: shape for name, _, shape, _ in raw}
    marked, record, summary = _native.mark(
        raw,
        key,
        label=label,
        recipient=recipient,
        strength=strength,
        scheme=scheme,
        tensors_globs=_globs(tensors_globs),
        progress=progress,
        recipient_code=recipient_code,
        code_groups=code_groups,
        code_cutoff=code_cutoff,
        recipient_share=recipient_share,
    )
    del raw
    arrays = from_native(marked, shapes, kinds)
    return arrays, ReleaseRecord._from(json.loads(record), MarkSummary._from(json.loads(summary)))


def certify(
    saved_model_path: PathLike,
    record: ReleaseRecord,
    key: PathLike,
    *,
    cert: Optional[PathLike] = None,
) -> str:
    """Sign the certificate of tensors marked with :func:`mark` and saved since.

    The saved model (a ``.safetensors`` file or directory) must hold exactly
    the record's tensors, with the marked bytes; ``key`` must be the key that
    marked them. Otherwise nothing is signed (:class:`CertificateError` naming
    the first difference).

    Returns:
        The certificate's path: ``cert``, or by default ``SAVED.cert.json``
        beside the saved model, as :func:`embed` would name it.
    """
    if not isinstance(record, ReleaseRecord):
        raise _native.InputError("record must be the ReleaseRecord that mark() returned")
    return _native.certify(saved_model_path, record.to_json(), key, cert=cert)


def detect_arrays(
    tensors: Mapping[str, Any],
    key: PathLike,
    *,
    cert: Optional[PathLike] = None,
    label: Optional[str] = None,
    recipient: Optional[str] = None,
    original: Optional[Mapping[str, Any]] = None,
    threshold: float = DEFAULT_THRESHOLD_P,
    dtypes: Optional[Mapping[str, str]] = None,
    progress: Optional[Progress] = None,
) -> Detection:
    """Test tensors held in memory for one release's mark (see :func:`detect`).

    ``tensors`` and ``original`` are state dicts of numpy arrays (``dtypes``
    overrides apply to both, as in :func:`mark`). The result's ``suspect`` is
    ``"<arrays>"``.
    """
    raw, _ = to_native(tensors, dtypes)
    raw_original = None
    if original is not None:
        given = dtypes or {}
        raw_original, _ = to_native(original, {k: v for k, v in given.items() if k in original})
    text = _native.detect_arrays(
        raw,
        key,
        cert=cert,
        label=label,
        recipient=recipient,
        original=raw_original,
        threshold=threshold,
        progress=progress,
    )
    return Detection._from(json.loads(text), [])
