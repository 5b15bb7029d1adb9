"""Shared fixtures: keys, small synthetic models built with numpy, and a
minimal safetensors and GGUF writer (independent of the library under test)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Dict, Mapping, Tuple

import numpy as np
import pytest

import weightmark as wm

# Strength 0.01 on 1M marked elements gives an ss1 blind z of about 10. The
# tests that compare z values or detect by label use ss1 explicitly; the
# library's default scheme has its own tests (test_default_scheme.py).
STRENGTH = 0.01
SCHEME = "ss1"
ROWS = COLS = 512


def require_fixtures() -> bool:
    """Whether a missing fixture fails (scripts/test) instead of skipping."""
    return os.environ.get("WEIGHTMARK_REQUIRE_FIXTURES") == "1"


def missing(what: str) -> None:
    """Skips the test, or fails it under WEIGHTMARK_REQUIRE_FIXTURES=1."""
    if require_fixtures():
        pytest.fail(f"{what} (WEIGHTMARK_REQUIRE_FIXTURES=1: required)")
    pytest.skip(f"{what}; run scripts/fetch-models, or scripts/test which requires it")


def synthetic_state(seed: int = 1) -> Dict[str, np.ndarray]:
    """A small model: four 512x512 matrices (f32, f32, f16, f64), a 1-D f32
    bias and an int64 tensor (neither marked by default)."""
    rng = np.random.default_rng(seed)

    def matrix(dtype: str) -> np.ndarray:
        return (rng.standard_normal((ROWS, COLS)) * 0.02).astype(dtype)

    return {
        "embed.weight": matrix("float32"),
        "layers.0.attn.weight": matrix("float32"),
        "layers.0.bias": (rng.standard_normal(COLS) * 0.01).astype("float32"),
        "layers.0.mlp.weight": matrix("float16"),
        "layers.1.mlp.weight": matrix("float64"),
        "position_ids": np.arange(COLS, dtype=np.int64).reshape(1, COLS),
    }


_ST_NAMES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "uint16": "U16",
    "uint8": "U8",
}


def save_safetensors(
    path: Path,
    tensors: Mapping[str, np.ndarray],
    dtypes: Mapping[str, str] = {},
    metadata: Mapping[str, str] = {"format": "pt"},
) -> Path:
    """Writes a safetensors file (header JSON padded to 8 bytes, then the
    little-endian data in the given order); `dtypes` overrides a tensor's
    dtype name (e.g. "BF16" for uint16 bit patterns)."""
    header: Dict[str, object] = {"__metadata__": dict(metadata)}
    blobs = []
    offset = 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        data = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": dtypes.get(name, _ST_NAMES[a.dtype.name]),
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    return path


def read_safetensors_raw(path: Path) -> Dict[str, Tuple[str, list, bytes]]:
    """Every tensor of a safetensors file as (dtype name, shape, bytes)."""
    blob = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header.pop("__metadata__", None)
    data = blob[8 + n :]
    return {
        name: (h["dtype"], h["shape"], data[h["data_offsets"][0] : h["data_offsets"][1]])
        for name, h in header.items()
    }


def write_gguf(path: Path, tensors: Mapping[str, np.ndarray]) -> Path:
    """A GGUF v3 file of f32 tensors with an unknown architecture (names kept)."""

    def string(s: str) -> bytes:
        b = s.encode()
        return struct.pack("<Q", len(b)) + b

    out = bytearray(b"GGUF")
    out += struct.pack("<IQQ", 3, len(tensors), 1)
    out += string("general.architecture") + struct.pack("<I", 8) + string("testarch")
    offset = 0
    datas = []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype="<f4")
        out += string(name) + struct.pack("<I", a.ndim)
        for d in reversed(a.shape):  # GGUF lists the fastest dimension first
            out += struct.pack("<Q", d)
        out += struct.pack("<IQ", 0, offset)  # type 0 = F32
        data = a.tobytes()
        data += b"\0" * (-len(data) % 32)
        datas.append(data)
        offset += len(data)
    out += b"\0" * (-len(out) % 32)
    for d in datas:
        out += d
    Path(path).write_bytes(bytes(out))
    return Path(path)


def certify(saved, record: wm.ReleaseRecord, key, **kwargs) -> str:
    """`wm.certify` (kept as one helper so every test certifies the same way)."""
    return wm.certify(saved, record, key, **kwargs)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> wm.KeyPair:
    """The owner's key pair."""
    return wm.keygen(tmp_path_factory.mktemp("keys") / "lab")


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> wm.KeyPair:
    """Somebody else's key pair."""
    return wm.keygen(tmp_path_factory.mktemp("other") / "stranger")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """The synthetic model as a safetensors file."""
    return save_safetensors(tmp_path / "model.safetensors", synthetic_state())


@pytest.fixture
def released(tmp_path: Path, model_file: Path, keys: wm.KeyPair) -> wm.EmbedResult:
    """The synthetic model marked for release 'v1' to 'acme'."""
    return wm.embed(
        model_file,
        tmp_path / "marked.safetensors",
        keys.secret,
        label="v1",
        recipient="acme",
        strength=STRENGTH, scheme=SCHEME,
    )


def cli_binary() -> "Path | None":
    """The `weightmark` binary to compare JSON with (WEIGHTMARK_CLI, else the
    workspace's debug build, in CARGO_TARGET_DIR when cargo was told to build
    there), or None."""
    given = os.environ.get("WEIGHTMARK_CLI")
    if given:
        return Path(given)
    root = Path(__file__).resolve().parents[3]
    target = Path(os.environ.get("CARGO_TARGET_DIR") or root / "target")
    if not target.is_absolute():
        target = root / target
    for candidate in (target / "debug" / "weightmark", target / "release" / "weightmark"):
        if candidate.exists():
            return candidate
    return None
