"""Typed result objects of the weightmark functions.

Each result is a frozen dataclass built from the JSON object the native module
returns. ``to_dict()`` gives that object back (a fresh copy): for ``detect``,
``detect_arrays``, ``identify``, ``verify`` and ``inspect`` it has the same keys
and values as the CLI's ``--json`` output of the same command.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

__all__ = [
    "KeyPair",
    "MarkedTensor",
    "OutputFile",
    "MarkSummary",
    "EmbedResult",
    "ReleaseRecord",
    "TensorResult",
    "Skipped",
    "Detection",
    "RankedCandidate",
    "Identification",
    "ModelCheck",
    "Verified",
    "ModelFileInfo",
    "TensorInfo",
    "Inspection",
    "Conversion",
]


class _FromDict:
    """Keeps the object a result was built from, for ``to_dict``."""

    _raw: Dict[str, Any]

    def to_dict(self) -> Dict[str, Any]:
        """The result as a plain ``dict`` (a deep copy; JSON-serialisable)."""
        return copy.deepcopy(self._raw)


@dataclass(frozen=True)
class KeyPair(_FromDict):
    """The key files written by :func:`weightmark.keygen`.

    Attributes:
        secret: path of ``NAME.key`` (mode 0600: keep it private).
        public: path of ``NAME.pub`` (share it: it checks your certificates).
        key_id: the key's id, as certificates and reports name their signer.
    """

    secret: str
    public: str
    key_id: str
    _raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def _from(cls, secret: str, public: str, key_id: str) -> "KeyPair":
        raw = {"secret": secret, "public": public, "key_id": key_id}
        return cls(secret=secret, public=public, key_id=key_id, _raw=raw)


@dataclass(frozen=True)
class MarkedTensor:
    """Fidelity and blind statistics of one marked tensor.

    Attributes:
        name: tensor name.
        elements: elements counted by the blind statistic.
        blind_z: blind z of the marked tensor alone.
        relative_rms_change: RMS of the change over RMS of the weights.
        snr_db: weights' energy over the change's, in dB (``None`` if unchanged).
        max_abs_change: largest absolute change of one element.
    """

    name: str
    elements: int
    blind_z: Optional[float]
    relative_rms_change: Optional[float]
    snr_db: Optional[float]
    max_abs_change: Optional[float]

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "MarkedTensor":
        return cls(
            name=d["name"],
            elements=d["elements"],
            blind_z=d["blind_z"],
            relative_rms_change=d["relative_rms_change"],
            snr_db=d["snr_db"],
            max_abs_change=d["max_abs_change"],
        )


@dataclass(frozen=True)
class OutputFile:
    """One file written by :func:`weightmark.embed` (a safetensors file or the index).

    Attributes:
        name: path relative to the output (the file name for a single file).
        sha256: SHA-256 of its bytes (hex).
        size: size in bytes.
    """

    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class MarkSummary(_FromDict):
    """What a marking did (file or in memory): release, fidelity, statistics.

    Attributes:
        scheme: mark scheme (``"ss1"`` or ``"ss2"``).
        label: release label.
        recipient: recipient (licensee), or ``None``.
        strength: mark strength (RMS of the mark relative to the weights').
        signer: key id of the owner's key.
        elements: elements counted by the blind statistic.
        relative_rms_change: over all marked tensors.
        snr_db: over all marked tensors, in dB.
        max_abs_change: largest absolute change of one element.
        blind_z: blind z of the output (measured right after marking).
        blind_p_value: its bound ``exp(-z^2/2)``.
        informed_z: informed z of the output against the input.
        informed_p_value: its bound.
        strength_for_blind_threshold: smallest strength at which the blind z of
            this model would reach the default threshold (p <= 1e-9).
        tensors: per marked tensor, in model order.
    """

    scheme: str
    label: str
    recipient: Optional[str]
    strength: float
    signer: str
    elements: int
    relative_rms_change: Optional[float]
    snr_db: Optional[float]
    max_abs_change: Optional[float]
    blind_z: Optional[float]
    blind_p_value: Optional[float]
    informed_z: Optional[float]
    informed_p_value: Optional[float]
    strength_for_blind_threshold: Optional[float]
    tensors: List[MarkedTensor]
    _raw: Dict[str, Any] = field(repr=False, compare=False)

    @staticmethod
    def _fields(d: Dict[str, Any]) -> Dict[str, Any]:
        return dict(
            scheme=d["scheme"],
            label=d["label"],
            recipient=d["recipient"],
            strength=d["strength"],
            signer=d["signer"],
            elements=d["elements"],
            relative_rms_change=d["relative_rms_change"],
            snr_db=d["snr_db"],
            max_abs_change=d["max_abs_change"],
            blind_z=d["blind_z"],
            blind_p_value=d["blind_p_value"],
            informed_z=d["informed_z"],
            informed_p_value=d["informed_p_value"],
            strength_for_blind_threshold=d["strength_for_blind_threshold"],
            tensors=[MarkedTensor._from(t) for t in d["tensors"]],
        )

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "MarkSummary":
        return cls(**cls._fields(d), _raw=d)


@dataclass(frozen=True)
class EmbedResult(_FromDict):
    """What :func:`weightmark.embed` wrote and measured.

    The fields of :class:`MarkSummary` (release, fidelity, blind and informed
    z), plus where everything went.

    Attributes:
        model: the input model path.
        output: where the marked model went (a file or a directory).
        certificate: path of the signed certificate.
        files: the safetensors files (and index) written, with their SHA-256.
        copied: other files copied from the input directory (config, tokenizer).
        skipped: files of the input directory deliberately not copied (weights
            in another format would carry the unmarked model).
        warnings: things the model reader wants you to know.
    """

    scheme: str
    label: str
    recipient: Optional[str]
    strength: float
    signer: str
    elements: int
    relative_rms_change: Optional[float]
    snr_db: Optional[float]
    max_abs_change: Optional[float]
    blind_z: Optional[float]
    blind_p_value: Optional[float]
    informed_z: Optional[float]
    informed_p_value: Optional[float]
    strength_for_blind_threshold: Optional[float]
    tensors: List[MarkedTensor]
    model: str
    output: str
    certificate: str
    files: List[OutputFile]
    copied: List[str]
    skipped: List[str]
    warnings: List[str]
    _raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "EmbedResult":
        return cls(
            **MarkSummary._fields(d),
            model=d["model"],
            output=d["output"],
            certificate=d["certificate"],
            files=[OutputFile(f["name"], f["sha256"], f["size"]) for f in d["files"]],
            copied=list(d["copied"]),
            skipped=list(d["skipped"]),
            warnings=list(d["warnings"]),
            _raw=d,
        )


@dataclass(frozen=True)
class ReleaseRecord(_FromDict):
    """The unsigned release record of an in-memory marking (:func:`weightmark.mark`).

    It is the predicate of the certificate that :func:`weightmark.certify` signs
    once the marked tensors are saved: the release, the marked tensors, and the
    digest of every output tensor. It holds no secret. Keep it (``to_json`` /
    ``from_json``) if the model is saved and certified later.

    Attributes:
        scheme: mark scheme (``"ss1"`` or ``"ss2"``).
        label: release label.
        recipient: recipient, or ``None``.
        strength: mark strength.
        signer: key id of the owner's key.
        marked_tensors: names of the marked tensors.
        tensor_digests: digest (hex) of every output tensor, by name.
        summary: what the marking measured (``None`` for a record read back
            with ``from_json``).
    """

    scheme: str
    label: str
    recipient: Optional[str]
    strength: float
    signer: str
    marked_tensors: List[str]
    tensor_digests: Dict[str, str]
    summary: Optional[MarkSummary] = field(compare=False)
    _raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def _from(cls, d: Dict[str, Any], summary: Optional[MarkSummary]) -> "ReleaseRecord":
        return cls(
            scheme=d["scheme"],
            label=d["label"],
            recipient=d.get("recipient"),
            strength=d["strength"],
            signer=d["signer"],
            marked_tensors=[t["name"] for t in d["tensors"]],
            tensor_digests=dict(d.get("tensor_digests", {})),
            summary=summary,
            _raw=d,
        )

    def to_json(self) -> str:
        """The record as JSON text (what :meth:`from_json` reads back)."""
        return json.dumps(self._raw)

    @classmethod
    def from_json(cls, text: str) -> "ReleaseRecord":
        """A record saved with :meth:`to_json`."""
        return cls._from(json.loads(text), None)


@dataclass(frozen=True)
class TensorResult:
    """Detection statistics of one tensor.

    Attributes:
        name: tensor name.
        z: its z.
        s: its S (sum of weighted pattern times element).
        v: its V (sum of squared weighted elements).
        elements: elements tested.
    """

    name: str
    z: float
    s: float
    v: float
    elements: int


@dataclass(frozen=True)
class Skipped:
    """A tensor that could not be tested, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class Detection(_FromDict):
    """The outcome of :func:`weightmark.detect` or :func:`weightmark.detect_arrays`.

    Attributes:
        detected: whether ``p_value <= threshold_p``.
        mode: ``"blind"`` (no original) or ``"informed"``.
        scheme: the scheme tested (``"ss1"`` or ``"ss2"``).
        z: global z of the decision (for ``ss2``, of the release component, or of
            both components together when the certificate names a recipient
            with an independent component).
        p_value: Hoeffding bound ``exp(-z^2/2)`` on the false-positive probability.
        p_value_two_sided: ``min(1, 2 exp(-z^2/2))``, the bound on a ``|z|`` this
            large either way.
        recipient_component: for an ``ss2`` release with a recipient, the z,
            bound and log10 bound of the recipient's own component (a dict),
            else ``None``.
        release_component: when the decision adds both components, the z, bound
            and log10 bound of the release component alone (a dict), else ``None``.
        log10_p_value: ``log10`` of the bound (exact where ``p_value`` underflows).
        threshold_p: decision threshold on ``p_value``.
        elements: elements tested.
        s: global S.
        v: global V.
        tensors: per tested tensor.
        skipped: tensors that could not be tested.
        suspect_digest: tensor root of the suspect (hex).
        realigned: function-preserving transforms found and undone (informed).
        label: release label tested.
        recipient: recipient tested, or ``None``.
        certificate_digest: SHA-256 of the certificate tested, or ``None``.
        certificate_signature_checked: whether its signature was checked.
        suspect: the suspect's path (``"<arrays>"`` for arrays).
        dispute: the CLI's revealed-key dispute record (always ``None`` here).
        builds_on_signature_checked: the CLI's chained-report check (always ``None`` here).
        report: path of a signed report (always ``None`` here).
        warnings: things the model reader wants you to know (not in ``to_dict``).
    """

    detected: bool
    mode: str
    scheme: Optional[str]
    z: float
    p_value: float
    p_value_two_sided: Optional[float]
    recipient_component: Optional[Dict[str, float]]
    release_component: Optional[Dict[str, float]]
    log10_p_value: float
    threshold_p: float
    elements: int
    s: float
    v: float
    tensors: List[TensorResult]
    skipped: List[Skipped]
    suspect_digest: str
    realigned: List[str]
    label: str
    recipient: Optional[str]
    certificate_digest: Optional[str]
    certificate_signature_checked: Optional[bool]
    suspect: str
    dispute: Optional[Dict[str, Any]]
    builds_on_signature_checked: Optional[bool]
    report: Optional[str]
    warnings: List[str]
    _raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def _from(cls, d: Dict[str, Any], warnings: List[str]) -> "Detection":
        return cls(
            detected=d["detected"],
            mode=d["mode"],
            scheme=d.get("scheme"),
            z=d["z"],
            p_value=d["p_value"],
            p_value_two_sided=d.get("p_value_two_sided"),
            recipient_component=copy.deepcopy(d.get("recipient_component")),
            release_component=copy.deepcopy(d.get("release_component")),
            log10_p_value=d["log10_p_value"],
            threshold_p=d["threshold_p"],
            elements=d["elements"],
            s=d["s"],
            v=d["v"],
            tensors=[TensorResult(t["name"], t["z"], t["s"], t["v"], t["elements"]) for t in d["tensors"]],
            skipped=[Skipped(s["name"], s["reason"]) for s in d["skipped"]],
            suspect_digest=d["suspect_digest"],
            realigned=list(d["realigned"]),
            label=d["label"],
            recipient=d["recipient"],
            certificate_digest=d["certificate_digest"],
            certificate_signature_checked=d["certificate_signature_checked"],
            suspect=d["suspect"],
            dispute=copy.deepcopy(d.get("dispute")),
            builds_on_signature_checked=d.get("builds_on_signature_checked"),
            report=d["report"],
            warnings=list(warnings),
            _raw=d,
        )


@dataclass(frozen=True)
class RankedCandidate:
    """One certificate's result in :func:`weightmark.identify`.

    Attributes:
        certificate: the certificate file.
        label: its release label.
        recipient: its recipient.
        z: global z.
        elements: elements tested.
        p_value: bound for this candidate alone.
        log10_p_value: its ``log10``.
        adjusted_p_value: ``min(1, m * p_value)`` for ``m`` certificates tested.
        log10_adjusted_p_value: its ``log10``.
        identified: whether the adjusted bound is at most the threshold.
        skipped: tensors of this release that could not be tested.
    """

    certificate: str
    label: str
    recipient: Optional[str]
    z: float
    elements: int
    p_value: float
    log10_p_value: float
    adjusted_p_value: float
    log10_adjusted_p_value: float
    identified: bool
    skipped: List[Skipped]


@dataclass(frozen=True)
class Identification(_FromDict):
    """The outcome of :func:`weightmark.identify`.

    Attributes:
        mode: ``"blind"`` or ``"informed"``.
        certificates: certificates tested (the Bonferroni factor).
        threshold_p: decision threshold on the adjusted bound.
        identified: number of candidates named.
        suspect_digest: tensor root of the suspect (hex).
        candidates: every candidate, highest z first.
        skipped_files: files of the certificate directory left out, with the
            reason (not in ``to_dict``; the CLI prints them as notes).
    """

    mode: str
    certificates: int
    threshold_p: float
    identified: int
    suspect_digest: str
    candidates: List[RankedCandidate]
    skipped_files: List[Tuple[str, str]]
    _raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def _from(cls, d: Dict[str, Any], skipped: List[Tuple[str, str]]) -> "Identification":
        return cls(
            mode=d["mode"],
            certificates=d["certificates"],
            threshold_p=d["threshold_p"],
            identified=d["identified"],
            suspect_digest=d["suspect_digest"],
            candidates=[
                RankedCandidate(
                    certificate=c["certificate"],
                    label=c["label"],
                    recipient=c["recipient"],
                    z=c["z"],
                    elements=c["elements"],
                    p_value=c["p_value"],
                    log10_p_value=c["log10_p_value"],
                    adjusted_p_value=c["adjusted_p_value"],
                    log10_adjusted_p_value=c["log10_adjusted_p_value"],
                    identified=c["identified"],
                    skipped=[Skipped(s["name"], s["reason"]) for s in c["skipped"]],
                )
                for c in d["candidates"]
            ],
            skipped_files=[(p, why) for p, why in skipped],
            _raw=d,
        )


@dataclass(frozen=True)
class ModelCheck:
    """How a model compares with the digests a certificate or report records.

    Attributes:
        files_match: every file is byte-identical to a recorded one, and vice versa.
        tensors_match: every tensor (name, dtype, shape, data) is as recorded.
        files_not_found: recorded files with no file of the same SHA-256.
        files_unrecorded: model files the statement does not record.
        tensors_changed: tensors whose digests differ.
        tensors_missing: recorded tensors absent from the model.
        tensors_extra: model tensors the statement does not record.
        certificate_lists_files: whether the certificate lists the release's
            files (certificates made since side files were recorded).
        side_files_compared: whether side files (config, tokenizer, code) were
            compared: only for a certificate that lists them and a model
            directory.
        side_files_match: no side file added, removed, changed or refused.
        side_files_added: side files of the model the certificate does not list.
        side_files_removed: side files the certificate lists that the model lacks.
        side_files_changed: side files whose SHA-256 differs.
        side_files_refused: entries that cannot be part of a release (a link
            out of the directory, ...), as ``name (reason)``.
        not_compared: hidden entries (``.git/``, ``.cache/``), never compared.
    """

    files_match: bool
    tensors_match: bool
    files_not_found: List[str]
    files_unrecorded: List[str]
    tensors_changed: List[str]
    tensors_missing: List[str]
    tensors_extra: List[str]
    certificate_lists_files: bool = False
    side_files_compared: bool = False
    side_files_match: bool = True
    side_files_added: List[str] = field(default_factory=list)
    side_files_removed: List[str] = field(default_factory=list)
    side_files_changed: List[str] = field(default_factory=list)
    side_files_refused: List[str] = field(default_factory=list)
    not_compared: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class Verified(_FromDict):
    """The outcome of :func:`weightmark.verify`.

    A signature that does not verify, or one made with another key, is a result
    with ``valid`` and ``signature_valid`` false and a ``reason`` (as the CLI's
    exit 1), not an exception. Truthiness is ``valid``.

    Attributes:
        valid: the signature verifies and, with a model, every tensor and
            every compared side file matches.
        signature_valid: the signature verifies with the public key.
        file: the file checked.
        kind: ``"certificate"`` or ``"report"`` (``None`` if the signature failed).
        signer: key id of the signer.
        sha256: SHA-256 of the file (hex).
        predicate: the signed statement's predicate.
        model: the model comparison, when a model was given.
        reason: why the signature failed, else ``None``.
    """

    valid: bool
    signature_valid: bool
    file: str
    kind: Optional[str]
    signer: Optional[str]
    sha256: Optional[str]
    predicate: Optional[Dict[str, Any]]
    model: Optional[ModelCheck]
    reason: Optional[str]
    _raw: Dict[str, Any] = field(repr=False, compare=False)

    def __bool__(self) -> bool:
        return self.valid

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "Verified":
        m = d.get("model")
        return cls(
            valid=d["valid"],
            signature_valid=d.get("signature_valid", False),
            file=d["file"],
            kind=d.get("kind"),
            signer=d.get("signer"),
            sha256=d.get("sha256"),
            predicate=copy.deepcopy(d.get("predicate")),
            model=None if m is None else ModelCheck(**m),
            reason=d.get("reason"),
            _raw=d,
        )


@dataclass(frozen=True)
class ModelFileInfo:
    """One file of an inspected model.

    Attributes:
        name: file name (for shards: the name the index uses).
        bytes: size in bytes.
        tensors: tensors it holds.
        gguf_version: the GGUF version, for a GGUF file.
    """

    name: str
    bytes: int
    tensors: int
    gguf_version: Optional[int] = None


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of an inspected model.

    Attributes:
        name: tensor name.
        dtype: safetensors dtype name (``"F32"``, ``"BF16"``, ...).
        shape: shape.
        elements: number of elements.
        bytes: size of its data.
        marked_by_default: whether the default selection marks it.
        digest: its digest (hex), or ``None`` with ``digests=False``.
    """

    name: str
    dtype: str
    shape: List[int]
    elements: int
    bytes: int
    marked_by_default: bool
    digest: Optional[str]


@dataclass(frozen=True)
class Inspection(_FromDict):
    """The outcome of :func:`weightmark.inspect`.

    Attributes:
        path: the model path.
        layout: ``"File"``, ``"DirectorySingle"``, ``"DirectorySharded"`` or ``"Gguf"``.
        files: its files.
        metadata: each safetensors file's ``__metadata__`` (or ``None``).
        tensors: every tensor, in file order.
        tensor_root: root over every tensor's digest (hex), or ``None``.
        warnings: things the model reader wants you to know (not in ``to_dict``).
    """

    path: str
    layout: str
    files: List[ModelFileInfo]
    metadata: List[Optional[Dict[str, str]]]
    tensors: List[TensorInfo]
    tensor_root: Optional[str]
    warnings: List[str]
    _raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def _from(cls, d: Dict[str, Any], warnings: List[str]) -> "Inspection":
        return cls(
            path=d["path"],
            layout=d["layout"],
            files=[ModelFileInfo(**f) for f in d["files"]],
            metadata=copy.deepcopy(d["metadata"]),
            tensors=[TensorInfo(**t) for t in d["tensors"]],
            tensor_root=d["tensor_root"],
            warnings=list(warnings),
            _raw=d,
        )


@dataclass(frozen=True)
class Conversion(_FromDict):
    """What :func:`weightmark.convert` wrote.

    Attributes:
        model: the input model path.
        output: the output directory.
        dtype: dtype of the float tensors written (``"F32"``, ``"F16"``, ``"BF16"``).
        files: safetensors file names (one, or shards with an index).
        tensors: tensors written.
        config: whether a ``config.json`` was written.
        tokenizer: whether ``tokenizer.json`` and ``tokenizer_config.json`` were written.
        warnings: things you should know (a tokenizer that could not be exported, ...).
    """

    model: str
    output: str
    dtype: str
    files: List[str]
    tensors: int
    config: bool
    tokenizer: bool
    warnings: List[str]
    _raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "Conversion":
        return cls(
            model=d["model"],
            output=d["output"],
            dtype=d["dtype"],
            files=list(d["files"]),
            tensors=d["tensors"],
            config=d["config"],
            tokenizer=d["tokenizer"],
            warnings=list(d["warnings"]),
            _raw=d,
        )
