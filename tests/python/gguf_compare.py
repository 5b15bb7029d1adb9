"""Independent check of weightmark's GGUF reading, using llama.cpp's own
Python package `gguf` (reader, writer and numpy dequantizers).

    python3 gguf_compare.py WEIGHTMARK_BINARY WORKDIR [SMOLLM2.gguf]
    python3 gguf_compare.py WEIGHTMARK_BINARY WORKDIR --written FILE.gguf TYPES

1. Writes a GGUF file (unknown architecture, so names are kept) holding one
   tensor of random blocks for every type weightmark reads, converts it with
   `weightmark convert`, and compares every element with gguf's dequantizer.
2. With a third argument, converts that Llama-family GGUF and compares every
   tensor with gguf's reading of it, after mapping names to Hugging Face names
   and undoing the Q/K row permutation, both implemented here from the
   llama.cpp converter's description.
3. With --written, checks a GGUF file written by `weightmark attack gguf`: gguf
   reads it, the names and types are llama.cpp's, and every tensor reads back
   the same in gguf as in weightmark.
Prints one line per check; exits 1 on the first mismatch above 1e-6.
"""
import json
import os
import subprocess
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def read_safetensors(directory):
    """Every tensor of a safetensors model directory, as float32 arrays."""
    out = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".safetensors"):
            continue
        raw = open(os.path.join(directory, name), "rb").read()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + n])
        base = 8 + n
        for key, info in header.items():
            if key == "__metadata__":
                continue
            b, e = info["data_offsets"]
            dtype = {"F32": np.float32, "F16": np.float16}[info["dtype"]]
            out[key] = np.frombuffer(raw[base + b : base + e], dtype=dtype).astype(np.float32).reshape(info["shape"])
    return out


def random_blocks(qtype, n_blocks, rng):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    scale = np.array([0.01], dtype=np.float16).view(np.uint8)
    if qtype in (Q.Q4_0, Q.Q5_0, Q.Q8_0):
        data[:, 0:2] = scale
    elif qtype in (Q.Q4_1, Q.Q5_1):
        data[:, 0:2] = scale
        data[:, 2:4] = np.array([-0.05], dtype=np.float16).view(np.uint8)
    elif qtype in (Q.Q4_K, Q.Q5_K):
        data[:, 0:2] = scale
        data[:, 2:4] = scale
    elif qtype == Q.Q2_K:
        data[:, 80:82] = scale
        data[:, 82:84] = scale
    elif qtype == Q.Q3_K:
        data[:, 108:110] = scale
    elif qtype == Q.Q6_K:
        data[:, 208:210] = scale
    return data.reshape(-1)


def check(label, expected, got):
    if expected.shape != got.shape:
        print(f"MISMATCH {label}: shape {got.shape} vs {expected.shape}")
        sys.exit(1)
    diff = float(np.max(np.abs(expected.astype(np.float64) - got.astype(np.float64)))) if expected.size else 0.0
    if not diff <= 1e-6:
        print(f"MISMATCH {label}: max abs difference {diff}")
        sys.exit(1)
    return diff


def all_types(binary, work):
    rng = np.random.default_rng(7)
    path = os.path.join(work, "all-types.gguf")
    writer = gguf.GGUFWriter(path, "unknownarch")
    expected = {}
    rows, cols = 4, 512
    for name in TYPES:
        qtype = Q[name]
        if name in ("F32", "F16", "BF16"):
            values = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
            if name == "F32":
                raw, shown = values, values
            elif name == "F16":
                raw = values.astype(np.float16)
                shown = raw.astype(np.float32)
            else:
                bits = (values.view(np.uint32) >> 16).astype(np.uint16)
                raw = bits
                shown = (bits.astype(np.uint32) << 16).view(np.float32)
            writer.add_tensor(f"t.{name}", raw, raw_shape=(rows, cols), raw_dtype=qtype)
            expected[f"t.{name}"] = shown.reshape(rows, cols)
        else:
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            data = random_blocks(qtype, rows * cols // block, rng)
            byte_shape = (rows, cols // block * size)
            writer.add_tensor(f"t.{name}", data.reshape(byte_shape), raw_shape=byte_shape, raw_dtype=qtype)
            expected[f"t.{name}"] = gguf.quants.dequantize(data, qtype).reshape(rows, cols).astype(np.float32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = os.path.join(work, "all-types")
    subprocess.run([binary, "convert", path, "-o", out], check=True, stdout=subprocess.DEVNULL)
    got = read_safetensors(out)
    for name in TYPES:
        d = check(name, expected[f"t.{name}"], got[f"t.{name}"])
        print(f"ok {name}: {rows * cols} elements, max abs difference {d:.3g}")


HF = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(name):
    fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    if name in fixed:
        return fixed[name]
    _, layer, part, suffix = name.split(".")
    return f"model.layers.{layer}.{HF[part]}.{suffix}"


def unpermute(w, n_head):
    # The converter did w.reshape(n_head, 2, d/2, cols).swapaxes(1, 2); undo it.
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def written(binary, work, path, expected_types):
    """A GGUF file written by `weightmark attack gguf`: names, shapes and types as
    llama.cpp would write them, and values that read back the same in gguf."""
    reader = gguf.GGUFReader(path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    assert arch == "llama", arch
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    for name, ty in types.items():
        if name.endswith("norm.weight"):
            assert ty == "F32", (name, ty)
        else:
            assert ty in expected_types, (name, ty)
    assert "token_embd.weight" in types and "blk.0.attn_q.weight" in types
    print(f"ok {os.path.basename(path)}: {len(types)} tensors, types {sorted(set(types.values()))}")
    smollm2(binary, work, path, out_name=os.path.basename(path) + ".converted")


def smollm2(binary, work, path, out_name="smollm2-f32"):
    reader = gguf.GGUFReader(path)
    field = lambda k: int(reader.fields[k].parts[-1][0])
    heads, kv_heads = field("llama.attention.head_count"), field("llama.attention.head_count_kv")
    out = os.path.join(work, out_name)
    subprocess.run([binary, "convert", path, "-o", out], check=True, stdout=subprocess.DEVNULL)
    got = read_safetensors(out)
    worst = 0.0
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        values = np.asarray(values, dtype=np.float32).reshape([int(d) for d in reversed(t.shape.tolist())])
        if ".attn_q." in t.name:
            values = unpermute(values, heads)
        elif ".attn_k." in t.name:
            values = unpermute(values, kv_heads)
        worst = max(worst, check(t.name, values, got[hf_name(t.name)]))
    if len(got) != len(reader.tensors):
        print(f"MISMATCH: {len(got)} tensors converted, {len(reader.tensors)} in the GGUF file")
        sys.exit(1)
    print(f"ok {os.path.basename(path)}: {len(reader.tensors)} tensors agree with gguf's reading, max abs difference {worst:.3g}")


if __name__ == "__main__":
    binary, work = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3 and sys.argv[3] == "--written":
        # --written FILE.gguf TYPE[,TYPE...]: check a file from `attack gguf`.
        written(binary, work, sys.argv[4], sys.argv[5].split(","))
        sys.exit(0)
    all_types(binary, work)
    if len(sys.argv) > 3:
        smollm2(binary, work, sys.argv[3])
