#!/usr/bin/env python3
"""A numpy peer of `weightmark detect` (blind, ss2's statistic), for timing.

    scripts/peer-detect.py KEYHEX MODEL_DIR_OR_FILE

Does the same kind of work as weightmark's blind detection, written the way a
competent numpy user would (vectorised, no Python loop over elements; tensors
in parallel threads, as numpy and hashlib release the GIL on large arrays):

- every tensor: SHA-256 of its bytes (the suspect's tensor digests);
- every markable tensor (float, at least 2 dimensions and 4096 elements, the
  default selection), as a matrix of rows x last dimension: the magnitude
  profile over finite non-zero elements (row means R_i, column means C_j,
  tensor mean T), then y = min(|x| / (R_i C_j / T), 4) - 1, keyed +-1 signs
  from numpy's Philox seeded by SHA-256(key, tensor name), S = sum(sign y),
  V = sum(y^2); z = S / sqrt(V) over all tensors (docs/ss2.md, section 5).

Not bit-compatible with weightmark (different sign stream, no canonical
coordinates or neuron matching): its z is only meaningful for a model marked
by scripts/peer-embed.py with the same key. Prints z, then a summary line.
PEER_THREADS sets the thread count (default: the number of CPUs).
"""

import concurrent.futures
import hashlib
import json
import math
import os
import sys

import numpy as np
from safetensors import safe_open

CLIP = 4.0
# Elements per block of rows in the statistic's passes (8 MB of f64).
BLOCK = 1 << 20
MIN_ELEMENTS = 4096
FLOAT_KINDS = {"float16", "bfloat16", "float32", "float64"}


def weight_files(path):
    """The safetensors files of a model: one file, a sharded directory (its
    index's shards) or a directory's *.safetensors."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        sys.exit(f"peer: {path}: no such file or directory")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(path, s) for s in shards]
    files = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if not files:
        sys.exit(f"peer: no safetensors files in {path}")
    return [os.path.join(path, n) for n in files]


def tensor_names(path):
    """The tensor names of one file; imports ml_dtypes first if the file holds
    bf16 (safetensors needs numpy to know the dtype; the import alone takes
    about a second, so f16 and f32 models do without it)."""
    with safe_open(path, framework="numpy") as f:
        names = list(f.keys())
        if any(f.get_slice(n).get_dtype() == "BF16" for n in names):
            import ml_dtypes  # noqa: F401
    return names


def markable(t):
    return t.dtype.name in FLOAT_KINDS and t.ndim >= 2 and t.size >= MIN_ELEMENTS


def sign_bits(key, name, n):
    """n keyed bits (0 or 1, uint8), one per element, from Philox seeded by
    SHA-256(key || name): 64 bits per generator call."""
    seed = int.from_bytes(hashlib.sha256(key + b"\0" + name.encode()).digest(), "little")
    bitgen = np.random.Philox(np.random.SeedSequence(seed))
    raw = bitgen.random_raw((n + 63) // 64)
    return np.unpackbits(raw.view(np.uint8), count=n, bitorder="little")


def tensor_digest(t):
    return hashlib.sha256(np.ascontiguousarray(t).view(np.uint8).reshape(-1)).digest()


def to_float(block, work):
    """block as `work` (f32 or f64). bf16 is the top half of an f32: widened
    with a shift (ml_dtypes' own cast to f64 is several times slower)."""
    if block.dtype.name == "bfloat16":
        wide = (block.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        return wide if work == np.float32 else wide.astype(work)
    return block.astype(work)


def magnitudes(block):
    """|x| as f64 with non-finite and zero elements set to 0, and the mask of
    the elements that count."""
    a = np.abs(to_float(block, np.float64))
    valid = np.isfinite(a) & (a != 0)
    np.copyto(a, 0.0, where=~valid)
    return a, valid


def statistic(key, name, t):
    """(S, V, elements with weight) of one tensor, two passes over row blocks."""
    x = t.reshape(-1, t.shape[-1])
    rows, cols = x.shape
    step = max(1, BLOCK // cols)
    row_sum = np.zeros(rows)
    row_count = np.zeros(rows)
    col_sum = np.zeros(cols)
    col_count = np.zeros(cols)
    for r in range(0, rows, step):
        a, valid = magnitudes(x[r : r + step])
        row_sum[r : r + step] = a.sum(axis=1)
        row_count[r : r + step] = valid.sum(axis=1)
        col_sum += a.sum(axis=0)
        col_count += valid.sum(axis=0)
    total = row_count.sum()
    if total == 0:
        return 0.0, 0.0, 0
    mean = row_sum.sum() / total
    with np.errstate(divide="ignore", invalid="ignore"):
        # |x| / (R_i C_j / T) = |x| * (T / R_i) * (1 / C_j); 0 where a whole
        # row or column has no weight (its elements are all masked anyway).
        inv_row = np.where(row_count > 0, mean * row_count / row_sum, 0.0)
        inv_col = np.where(col_count > 0, col_count / col_sum, 0.0)
    bits = sign_bits(key, name, rows * cols)
    s = v = 0.0
    for r in range(0, rows, step):
        a, valid = magnitudes(x[r : r + step])
        y = a * inv_row[r : r + step, None]
        y *= inv_col[None, :]
        np.minimum(y, CLIP, out=y)
        y -= 1.0
        np.copyto(y, 0.0, where=~valid)
        y = y.reshape(-1)
        sign = bits[r * cols : r * cols + y.size].astype(np.float64)
        sign *= 2.0
        sign -= 1.0
        s += float(sign @ y)
        v += float(y @ y)
    return s, v, int(total)


def one_tensor(key, path, name):
    with safe_open(path, framework="numpy") as f:
        t = f.get_tensor(name)
    digest = tensor_digest(t)
    if markable(t):
        s, v, n = statistic(key, name, t)
        return name, digest, s, v, n, True
    return name, digest, 0.0, 0.0, 0, False


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: peer-detect.py KEYHEX MODEL_DIR_OR_FILE")
    key = bytes.fromhex(sys.argv[1])
    jobs = []
    for path in weight_files(sys.argv[2]):
        jobs.extend((path, name) for name in tensor_names(path))
    threads = int(os.environ.get("PEER_THREADS", os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda j: one_tensor(key, *j), jobs))
    results.sort(key=lambda r: r[0])
    s = sum(r[2] for r in results)
    v = sum(r[3] for r in results)
    z = s / math.sqrt(v) if v > 0 else 0.0
    root = hashlib.sha256(b"".join(r[1] for r in results)).hexdigest()
    tested = sum(1 for r in results if r[5])
    elements = sum(r[4] for r in results)
    print(f"z {z:.2f}")
    print(f"{len(results)} tensors, {tested} tested ({elements} elements), tensor root {root}")


if __name__ == "__main__":
    main()
