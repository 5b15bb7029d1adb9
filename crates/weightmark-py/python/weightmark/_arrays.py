"""numpy arrays to and from the native module's ``(name, dtype, shape, bytes)``.

Arrays cross as little-endian, C-contiguous bytes with the safetensors dtype
name. The dtype is taken from the array (``float32`` -> ``F32``, ...; an
``ml_dtypes.bfloat16`` array -> ``BF16``) unless an override names it: a
``uint16`` array holding bfloat16 bit patterns with ``dtypes={"name": "bf16"}``.
Results come back in each input array's own numpy dtype.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from . import _native

__all__ = ["to_native", "from_native", "safetensors_dtype"]

# numpy (and ml_dtypes) dtype names -> safetensors dtype names.
_FROM_NUMPY = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e8m0fnu": "F8_E8M0",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
    "complex64": "C64",
}

# Element sizes of the safetensors dtypes.
_SIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1,
    "BOOL": 1, "C64": 8,
}

# Short and numpy-style spellings accepted in a dtype override.
_ALIASES = {"bf16": "BF16", "f16": "F16", "f32": "F32", "f64": "F64"}

Tensor = Tuple[str, str, List[int], bytes]


def safetensors_dtype(name: str) -> Optional[str]:
    """The safetensors dtype name for ``name`` (``"bf16"``, ``"bfloat16"``,
    ``"BF16"``, ``"float32"``, ...), or ``None`` if it is not one."""
    if name in _ALIASES:
        return _ALIASES[name]
    if name in _FROM_NUMPY:
        return _FROM_NUMPY[name]
    upper = name.upper()
    return upper if upper in _SIZE else None


def _little_endian(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous little-endian array."""
    a = np.ascontiguousarray(a)
    order = a.dtype.byteorder
    if order == ">" or (order == "=" and sys.byteorder == "big"):
        a = a.astype(a.dtype.newbyteorder("<"))
    return a


def _input_error(message: str) -> Exception:
    return _native.InputError(message)


def to_native(
    tensors: Mapping[str, Any],
    dtypes: Optional[Mapping[str, str]] = None,
) -> Tuple[List[Tensor], Dict[str, np.dtype]]:
    """The tensors as ``(name, dtype, shape, bytes)`` tuples, and each array's
    numpy dtype (to rebuild results in it)."""
    if not isinstance(tensors, Mapping):
        raise _input_error("tensors must be a mapping of names to arrays (a state dict)")
    overrides = dict(dtypes or {})
    unknown = sorted(set(overrides) - set(tensors))
    if unknown:
        raise _input_error(f"dtypes names tensor(s) not given: {', '.join(map(repr, unknown))}")
    out: List[Tensor] = []
    kinds: Dict[str, np.dtype] = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise _input_error(f"tensor names must be strings, not {type(name).__name__}")
        a = _little_endian(np.asarray(value))
        if name in overrides:
            st = safetensors_dtype(overrides[name])
            if st is None:
                raise _input_error(f"tensor '{name}': unknown dtype override '{overrides[name]}'")
            if _SIZE[st] != a.dtype.itemsize:
                raise _input_error(
                    f"tensor '{name}': dtype override '{overrides[name]}' has "
                    f"{_SIZE[st]}-byte elements, the array's {a.dtype.name} has {a.dtype.itemsize}"
                )
        else:
            st = _FROM_NUMPY.get(a.dtype.name)
            if st is None:
                raise _input_error(
                    f"tensor '{name}': numpy dtype {a.dtype.name} has no safetensors equivalent"
                )
        out.append((name, st, [int(d) for d in a.shape], a.tobytes()))
        kinds[name] = a.dtype
    return out, kinds


def from_native(
    tensors: List[Tuple[str, bytearray]],
    shapes: Mapping[str, List[int]],
    kinds: Mapping[str, np.dtype],
) -> Dict[str, np.ndarray]:
    """Writable arrays from the native module's ``(name, bytearray)`` pairs."""
    return {
        name: np.frombuffer(data, dtype=kinds[name]).reshape(shapes[name])
        for name, data in tensors
    }
