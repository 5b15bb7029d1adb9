#!/usr/bin/env python3
"""A numpy peer of `weightmark embed`, for timing.

    scripts/peer-embed.py KEYHEX IN_DIR OUT_DIR

Does the same kind of work as weightmark's embed, written the way a competent
numpy user would (vectorised, no Python loop over elements; tensors in
parallel threads, as numpy and hashlib release the GIL on large arrays):

- read every tensor (one .safetensors file, or every shard of a directory
  with model.safetensors.index.json; the shards keep their names) and take
  the SHA-256 of its bytes;
- multiply every markable tensor (float, at least 2 dimensions and 4096
  elements, the default selection) by 1 + sign * STRENGTH with keyed +-1
  signs (the same stream as scripts/peer-detect.py): a change of STRENGTH *
  |x| that moves each magnitude the way its sign says, as ss2's
  multiplicative mark does; in f32 (f64 for f64 tensors), non-finite
  elements unchanged, rounded back to the input dtype: f16 and bf16 (through
  ml_dtypes) with keyed stochastic rounding (the mark is below half their
  step, so round-to-nearest would mostly erase it), f32 to nearest;
- write the shards with safetensors (the input's metadata), copy the other
  files of the directory (config, tokenizer, index), take the SHA-256 of every
  output tensor, then fsync the output files and the directory.

Not bit-compatible with weightmark: no allocation, canonical coordinates,
certificate or self-check; check the result with scripts/peer-detect.py and
the same key. PEER_THREADS sets the thread count
(default: the number of CPUs).
"""

import concurrent.futures
import hashlib
import importlib.util
import os
import shutil
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

STRENGTH = 0.0014

_spec = importlib.util.spec_from_file_location(
    "peer_detect", os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer-detect.py")
)
peer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer)


def dither(key, name):
    """The keyed uniform stream of a tensor's stochastic rounding."""
    seed = int.from_bytes(hashlib.sha256(key + b"\1" + name.encode()).digest(), "little")
    return np.random.Generator(np.random.Philox(np.random.SeedSequence(seed)))


def round_stochastic(v, dtype, rng):
    """v rounded to dtype: to the nearest value r, or to its neighbour toward
    v with probability |v - r| / |neighbour - r|, uniforms from rng. bf16 from
    f32: add 16 random bits below the kept half and truncate (the same choice,
    without the float arithmetic)."""
    if dtype.name == "bfloat16" and v.dtype == np.float32:
        noise = rng.bit_generator.random_raw((v.size + 3) // 4).view(np.uint16)[: v.size]
        wide = v.reshape(-1).view(np.uint32) + noise
        return (wide >> 16).astype(np.uint16).view(dtype).reshape(v.shape)
    u = rng.random(v.shape, dtype=np.float32)
    r = v.astype(dtype)
    rf = r.astype(v.dtype)
    diff = v - rf
    other = np.nextafter(r, np.copysign(np.inf, diff).astype(dtype))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = diff / (other.astype(v.dtype) - rf)
    return np.where(u < p, other, r)


def mark(key, name, t):
    """t with the keyed pattern applied, in t's dtype, a block of rows at a
    time. f16 and bf16 (steps of 2^-11 and 2^-8 relative, against a change of
    STRENGTH) are rounded stochastically, as weightmark does, so the mark
    survives on average; f32 and f64 to nearest."""
    x = t.reshape(-1, t.shape[-1])
    rows, cols = x.shape
    work = np.float64 if t.dtype == np.float64 else np.float32
    coarse = t.dtype.itemsize == 2
    bits = peer.sign_bits(key, name, rows * cols)
    uniforms = dither(key, name) if coarse else None
    out = np.empty_like(x)
    step = max(1, peer.BLOCK // cols)
    for r in range(0, rows, step):
        block = peer.to_float(x[r : r + step], work)
        n = block.size
        delta = bits[r * cols : r * cols + n].astype(work).reshape(block.shape)
        delta *= 2.0 * STRENGTH
        delta -= STRENGTH
        delta *= block
        np.copyto(delta, 0.0, where=~np.isfinite(delta))
        block += delta
        if coarse:
            out[r : r + step] = round_stochastic(block, t.dtype, uniforms)
        else:
            out[r : r + step] = block.astype(t.dtype)
    return out.reshape(t.shape)


def one_tensor(key, path, name):
    with safe_open(path, framework="numpy") as f:
        t = f.get_tensor(name)
    before = peer.tensor_digest(t)
    out = mark(key, name, t) if peer.markable(t) else t
    return path, name, out, before, peer.tensor_digest(out)


def fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_shard(path, tensors, metadata):
    save_file(tensors, path, metadata=metadata)
    fsync(path)


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: peer-embed.py KEYHEX IN_DIR OUT_DIR")
    key = bytes.fromhex(sys.argv[1])
    source, target = sys.argv[2], sys.argv[3]
    files = peer.weight_files(source)
    os.makedirs(target, exist_ok=True)
    jobs, metadata = [], {}
    for path in files:
        with safe_open(path, framework="numpy") as f:
            metadata[path] = f.metadata()
        jobs.extend((path, name) for name in peer.tensor_names(path))
    threads = int(os.environ.get("PEER_THREADS", os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda j: one_tensor(key, *j), jobs))
        shards = {path: {} for path in files}
        for path, name, out, _, _ in results:
            shards[path][name] = out
        written = [
            pool.submit(
                write_shard, os.path.join(target, os.path.basename(p)), t, metadata[p]
            )
            for p, t in shards.items()
        ]
        for w in written:
            w.result()
    if os.path.isdir(source):
        for entry in os.scandir(source):
            if entry.is_file() and not entry.name.endswith(".safetensors"):
                copy = os.path.join(target, entry.name)
                shutil.copy2(entry.path, copy)
                fsync(copy)
    fsync(target)
    results.sort(key=lambda r: r[1])
    root_in = hashlib.sha256(b"".join(r[3] for r in results)).hexdigest()
    root_out = hashlib.sha256(b"".join(r[4] for r in results)).hexdigest()
    marked = sum(1 for r in results if r[3] != r[4])
    print(
        f"{len(results)} tensors ({marked} changed) in {len(files)} file(s) -> {target}; "
        f"tensor root {root_in} -> {root_out}"
    )


if __name__ == "__main__":
    main()
