"""In memory: mark a numpy state dict (byte for byte what embed writes),
save it, certify, verify; detect in arrays; dtypes (bf16 included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import weightmark as wm
from conftest import SCHEME, STRENGTH, read_safetensors_raw, save_safetensors, synthetic_state


def test_mark_equals_embed_byte_for_byte(tmp_path, keys):
    state = synthetic_state()
    source = save_safetensors(tmp_path / "model.safetensors", state)
    released = wm.embed(
        source, tmp_path / "marked.safetensors", keys.secret, label="v1", recipient="acme", strength=STRENGTH, scheme=SCHEME
    )
    marked, record = wm.mark(state, keys.secret, label="v1", recipient="acme", strength=STRENGTH, scheme=SCHEME)
    written = read_safetensors_raw(Path(released.output))
    assert list(marked) == list(state) == list(written)
    for name, array in marked.items():
        assert array.dtype == state[name].dtype and array.shape == state[name].shape
        assert array.tobytes() == written[name][2], name
    # The same release, measured the same way.
    s = record.summary
    assert s.blind_z == released.blind_z and s.informed_z == released.informed_z
    assert [t.name for t in s.tensors] == [t.name for t in released.tensors]
    cert = wm.verify(released.certificate, keys.public).predicate
    assert record.tensor_digests == cert["tensor_digests"]
    assert record.marked_tensors == [t["name"] for t in cert["tensors"]]
    # Unselected tensors come back unchanged, and arrays are writable.
    assert np.array_equal(marked["position_ids"], state["position_ids"])
    assert np.array_equal(marked["layers.0.bias"], state["layers.0.bias"])
    marked["layers.0.bias"][0] = 1.0


def test_mark_save_with_safetensors_certify_and_verify(tmp_path, keys):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    state = synthetic_state(seed=5)
    marked, record = wm.mark(state, keys.secret, label="mem", strength=STRENGTH, scheme=SCHEME)
    saved = tmp_path / "saved.safetensors"
    safetensors_numpy.save_file(marked, str(saved))
    cert = wm.certify(saved, record, keys.secret)
    assert cert == str(tmp_path / "saved.safetensors.cert.json")
    v = wm.verify(cert, keys.public, model=saved)
    assert v.valid and v.model.files_match and v.model.tensors_match
    found = wm.detect(saved, keys.secret, cert=cert)
    assert found.detected and found.label == "mem"
    # A record saved as JSON certifies the same model again.
    again = wm.certify(saved, wm.ReleaseRecord.from_json(record.to_json()), keys.secret, cert=tmp_path / "again.json")
    assert wm.verify(again, keys.public, model=saved).valid


def test_certify_refuses_a_changed_model_and_another_key(tmp_path, keys, other_keys):
    state = synthetic_state(seed=6)
    marked, record = wm.mark(state, keys.secret, label="mem", strength=STRENGTH, scheme=SCHEME)
    marked["embed.weight"][0, 0] += 1.0
    saved = save_safetensors(tmp_path / "changed.safetensors", marked)
    with pytest.raises(wm.CertificateError, match="embed.weight") as e:
        wm.certify(saved, record, keys.secret)
    assert e.value.path == str(saved)
    marked2, record2 = wm.mark(state, keys.secret, label="mem", strength=STRENGTH, scheme=SCHEME)
    saved2 = save_safetensors(tmp_path / "ok.safetensors", marked2)
    with pytest.raises(wm.CertificateError, match="not with this key"):
        wm.certify(saved2, record2, other_keys.secret)
    with pytest.raises(wm.InputError, match="ReleaseRecord"):
        wm.certify(saved2, {"label": "mem"}, keys.secret)  # type: ignore[arg-type]


def test_detect_arrays_blind_informed_and_negative(keys):
    state = synthetic_state(seed=7)
    marked, record = wm.mark(state, keys.secret, label="arr", recipient="r", strength=STRENGTH, scheme=SCHEME)
    blind = wm.detect_arrays(marked, keys.secret, label="arr", recipient="r")
    assert blind.detected and blind.mode == "blind" and blind.suspect == "<arrays>"
    informed = wm.detect_arrays(marked, keys.secret, label="arr", recipient="r", original=state)
    assert informed.mode == "informed" and informed.z > 10 * blind.z
    assert not wm.detect_arrays(state, keys.secret, label="arr", recipient="r").detected
    assert not wm.detect_arrays(marked, keys.secret, label="arr", recipient="other").detected
    # At least the keys DESIGN.md promises for `detect --json`, and the CLI's additions.
    assert {
        "detected", "mode", "z", "p_value", "threshold_p", "elements", "tensors", "suspect_digest",
        "label", "recipient", "certificate_digest", "certificate_signature_checked", "suspect",
    } <= set(blind.to_dict())


def test_detect_arrays_with_a_certificate(tmp_path, keys):
    state = synthetic_state(seed=8)
    source = save_safetensors(tmp_path / "m.safetensors", state)
    r = wm.embed(source, tmp_path / "out.safetensors", keys.secret, label="c", strength=STRENGTH, scheme=SCHEME)
    marked, _ = wm.mark(state, keys.secret, label="c", strength=STRENGTH, scheme=SCHEME)
    found = wm.detect_arrays(marked, keys.secret, cert=r.certificate)
    assert found.detected and found.certificate_digest and found.certificate_signature_checked
    assert found.z == wm.detect(r.output, keys.secret, cert=r.certificate).z


def _bf16_bits(a: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (round to nearest even) of a float32 array."""
    u = a.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def test_bf16_as_uint16_with_an_override_equals_embed(tmp_path, keys):
    rng = np.random.default_rng(11)
    bits = {f"w{i}": _bf16_bits(rng.standard_normal((512, 512)) * 0.02) for i in range(4)}
    overrides = {name: "bf16" for name in bits}
    source = save_safetensors(tmp_path / "bf16.safetensors", bits, dtypes={n: "BF16" for n in bits})
    r = wm.embed(source, tmp_path / "out.safetensors", keys.secret, label="b", strength=STRENGTH, scheme=SCHEME)
    marked, record = wm.mark(bits, keys.secret, label="b", strength=STRENGTH, scheme=SCHEME, dtypes=overrides)
    written = read_safetensors_raw(Path(r.output))
    for name, array in marked.items():
        assert array.dtype == np.uint16 and written[name][0] == "BF16"
        assert array.tobytes() == written[name][2]
    assert record.summary.blind_z > 6.44
    assert wm.detect_arrays(marked, keys.secret, label="b", dtypes=overrides).detected
    # Without the override these are integers: nothing to mark.
    with pytest.raises(wm.InputError, match="no tensor to mark"):
        wm.mark(bits, keys.secret, label="b")


def test_bf16_with_ml_dtypes(keys):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(12)
    state = {f"w{i}": (rng.standard_normal((512, 512)) * 0.02).astype(ml_dtypes.bfloat16) for i in range(4)}
    marked, record = wm.mark(state, keys.secret, label="ml", strength=STRENGTH, scheme=SCHEME)
    as_bits = {n: a.view(np.uint16) for n, a in state.items()}
    marked_bits, _ = wm.mark(
        as_bits, keys.secret, label="ml", strength=STRENGTH, scheme=SCHEME, dtypes={n: "BF16" for n in state}
    )
    for name, array in marked.items():
        assert array.dtype == ml_dtypes.bfloat16
        assert array.tobytes() == marked_bits[name].tobytes()
    assert wm.detect_arrays(marked, keys.secret, label="ml").detected


def test_float64_float16_and_integers(keys):
    state = synthetic_state(seed=13)
    marked, record = wm.mark(state, keys.secret, label="d", strength=STRENGTH, scheme=SCHEME, tensors_globs=["layers.*.mlp.weight"])
    assert record.marked_tensors == ["layers.0.mlp.weight", "layers.1.mlp.weight"]
    assert marked["layers.1.mlp.weight"].dtype == np.float64
    assert marked["layers.0.mlp.weight"].dtype == np.float16
    assert not np.array_equal(marked["layers.1.mlp.weight"], state["layers.1.mlp.weight"])
    assert np.array_equal(marked["embed.weight"], state["embed.weight"])
    with pytest.raises(wm.InputError, match="position_ids"):
        wm.mark(state, keys.secret, label="d", tensors_globs="position_ids")


def test_big_endian_and_non_contiguous_arrays_are_read_correctly(keys):
    state = synthetic_state(seed=14)
    odd = dict(state)
    odd["embed.weight"] = state["embed.weight"].astype(">f4")
    odd["layers.0.attn.weight"] = np.asfortranarray(state["layers.0.attn.weight"])
    a, _ = wm.mark(state, keys.secret, label="e", strength=STRENGTH, scheme=SCHEME)
    b, _ = wm.mark(odd, keys.secret, label="e", strength=STRENGTH, scheme=SCHEME)
    for name in state:
        assert np.array_equal(a[name], b[name]), name


def test_array_input_errors(keys):
    with pytest.raises(wm.InputError, match="has no safetensors equivalent"):
        wm.mark({"s": np.array(["a", "b"])}, keys.secret, label="x")
    with pytest.raises(wm.InputError, match="2-byte elements"):
        wm.mark({"w": np.zeros((64, 64), np.float32)}, keys.secret, label="x", dtypes={"w": "bf16"})
    with pytest.raises(wm.InputError, match="not given"):
        wm.mark({"w": np.zeros((64, 64), np.float32)}, keys.secret, label="x", dtypes={"v": "bf16"})
    with pytest.raises(wm.InputError, match="mapping"):
        wm.mark([np.zeros(3)], keys.secret, label="x")  # type: ignore[arg-type]
