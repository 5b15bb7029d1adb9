"""The file commands: keygen, embed, detect, identify, verify, inspect, convert,
their results, and their JSON against the CLI's."""

from __future__ import annotations

import inspect
import json
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import weightmark as wm
from conftest import (
    SCHEME,
    STRENGTH,
    cli_binary,
    missing,
    read_safetensors_raw,
    save_safetensors,
    synthetic_state,
    write_gguf,
)

THRESHOLD_Z = 6.44


def test_keygen_writes_a_private_secret_and_a_public_key_and_refuses_to_overwrite(tmp_path):
    pair = wm.keygen(tmp_path / "lab")
    assert pair.secret == str(tmp_path / "lab.key") and pair.public == str(tmp_path / "lab.pub")
    assert stat.S_IMODE(os.stat(pair.secret).st_mode) == 0o600
    assert pair.key_id in Path(pair.public).read_text()
    assert pair.to_dict() == {"secret": pair.secret, "public": pair.public, "key_id": pair.key_id}
    with pytest.raises(wm.KeyFileError, match="refusing to overwrite"):
        wm.keygen(tmp_path / "lab")


def test_embed_writes_the_marked_model_and_its_certificate_beside_it(tmp_path, released, keys):
    out = tmp_path / "marked.safetensors"
    assert released.output == str(out) and out.exists()
    assert released.certificate == str(tmp_path / "marked.safetensors.cert.json")
    assert Path(released.certificate).exists()
    assert released.label == "v1" and released.recipient == "acme"
    assert released.strength == STRENGTH and released.signer == keys.key_id
    # The four matrices are marked; the bias and the int64 tensor are not.
    assert [t.name for t in released.tensors] == [
        "embed.weight",
        "layers.0.attn.weight",
        "layers.0.mlp.weight",
        "layers.1.mlp.weight",
    ]
    assert released.elements == 4 * 512 * 512
    assert released.blind_z > THRESHOLD_Z
    assert released.informed_z > 10 * released.blind_z
    assert 0.005 < released.relative_rms_change < 0.02
    assert [f.name for f in released.files] == ["marked.safetensors"]
    d = released.to_dict()
    assert d["certificate"] == released.certificate and len(d["tensors"]) == 4
    json.dumps(d)  # plain JSON types only


def test_embed_copies_unselected_tensors_byte_for_byte(tmp_path, model_file, released):
    before = read_safetensors_raw(model_file)
    after = read_safetensors_raw(Path(released.output))
    assert list(before) == list(after)
    for name in ("layers.0.bias", "position_ids"):
        assert before[name] == after[name]
    assert before["embed.weight"][2] != after["embed.weight"][2]


def test_embed_with_a_glob_and_a_directory_output(tmp_path, model_file, keys):
    r = wm.embed(
        model_file, tmp_path / "out", keys.secret, label="g", tensors="layers.*.weight", strength=0.02, scheme=SCHEME
    )
    assert {t.name for t in r.tensors} == {
        "layers.0.attn.weight",
        "layers.0.mlp.weight",
        "layers.1.mlp.weight",
    }
    assert Path(r.certificate) == tmp_path / "out.cert.json"


def test_embed_refuses_a_certificate_that_would_replace_the_input(tmp_path, model_file, keys):
    with pytest.raises(wm.InputError, match="certificate would replace"):
        wm.embed(model_file, tmp_path / "m.safetensors", keys.secret, label="x", cert=model_file)


def test_detect_finds_the_release_with_its_certificate(released, keys):
    found = wm.detect(released.output, keys.secret, cert=released.certificate)
    assert found.detected and found.mode == "blind"
    assert found.z > THRESHOLD_Z and found.p_value <= 1e-9
    assert found.label == "v1" and found.recipient == "acme"
    assert found.certificate_signature_checked is True
    assert [t.name for t in found.tensors] == [t.name for t in released.tensors]
    assert sum(t.elements for t in found.tensors) == found.elements
    assert len(found.suspect_digest) == 64 and found.report is None


def test_detect_by_label_informed_and_negative(tmp_path, model_file, released, keys, other_keys):
    by_label = wm.detect(released.output, keys.secret, label="v1", recipient="acme")
    assert by_label.detected and by_label.certificate_digest is None
    informed = wm.detect(released.output, keys.secret, cert=released.certificate, original=model_file)
    assert informed.mode == "informed" and informed.z > 10 * by_label.z
    other_recipient = wm.detect(released.output, keys.secret, label="v1", recipient="bolt")
    assert not other_recipient.detected and abs(other_recipient.z) < 5
    unmarked = wm.detect(model_file, keys.secret, label="v1", recipient="acme")
    assert not unmarked.detected
    stranger = wm.detect(released.output, other_keys.secret, label="v1", recipient="acme")
    assert not stranger.detected


def test_detect_to_dict_equals_the_cli_json(released, keys):
    cli = cli_binary()
    if cli is None or not cli.exists():
        missing("the weightmark binary (cargo build -p weightmark-cli) is not built")
    args = [str(cli), "detect", "-k", keys.secret, "--cert", released.certificate, released.output, "--json"]
    printed = json.loads(subprocess.run(args, capture_output=True, check=True, text=True).stdout)
    found = wm.detect(released.output, keys.secret, cert=released.certificate)
    assert found.to_dict() == printed


def test_identify_names_the_recipient(tmp_path, model_file, keys):
    certs = tmp_path / "certs"
    certs.mkdir()
    for r in ("acme", "bolt", "core"):
        wm.embed(
            model_file,
            tmp_path / f"{r}.safetensors",
            keys.secret,
            label="v1",
            recipient=r,
            strength=STRENGTH, scheme=SCHEME,
            cert=certs / f"{r}.json",
        )
    (certs / "notes.json").write_text("{}")
    found = wm.identify(tmp_path / "bolt.safetensors", keys.secret, certs)
    assert found.certificates == 3 and found.identified == 1
    top = found.candidates[0]
    assert top.recipient == "bolt" and top.identified
    assert abs(top.log10_adjusted_p_value - (top.log10_p_value + np.log10(3))) < 1e-9
    assert [Path(p).name for p, _ in found.skipped_files] == ["notes.json"]
    assert found.to_dict()["candidates"][0]["recipient"] == "bolt"
    cli = cli_binary()
    if cli is not None and cli.exists():
        args = [str(cli), "identify", "-k", keys.secret, "--certs", str(certs), str(tmp_path / "bolt.safetensors"), "--json"]
        printed = json.loads(subprocess.run(args, capture_output=True, text=True).stdout)
        assert found.to_dict() == printed


def test_recipient_codes_are_options_of_embed_and_mark(tmp_path, model_file, keys):
    certs = tmp_path / "certs"
    certs.mkdir()
    for r in ("acme", "bolt", "core"):
        wm.embed(
            model_file,
            tmp_path / f"{r}.safetensors",
            keys.secret,
            label="v1",
            recipient=r,
            strength=STRENGTH,
            scheme="ss2",
            cert=certs / f"{r}.json",
            recipient_code="tardos1",
            code_groups=1024,
            code_cutoff=0.02,
        )
    recorded = wm.verify(certs / "bolt.json", keys.public).predicate["recipient_code"]
    assert recorded == {"code": "tardos1", "groups": 1024, "cutoff": 0.02}
    found = wm.identify(tmp_path / "bolt.safetensors", keys.secret, certs, original=model_file)
    assert [c.recipient for c in found.candidates if c.identified] == ["bolt"]
    # In memory: the same code, byte for byte what embed wrote.
    state = synthetic_state()
    marked, record = wm.mark(
        state, keys.secret, label="v1", recipient="bolt", strength=STRENGTH, scheme="ss2",
        recipient_code="tardos1", code_groups=1024, code_cutoff=0.02,
    )
    written = read_safetensors_raw(tmp_path / "bolt.safetensors")
    assert all(marked[n].tobytes() == written[n][2] for n in state)
    assert json.loads(record.to_json())["recipient_code"]["groups"] == 1024
    # Without the option, an independent pattern (no recipient_code field).
    independent, plain = wm.mark(
        state, keys.secret, label="v1", recipient="bolt", strength=STRENGTH, scheme="ss2"
    )
    assert json.loads(plain.to_json()).get("recipient_code") is None
    assert independent["embed.weight"].tobytes() != marked["embed.weight"].tobytes()
    with pytest.raises(wm.InputError, match="recipient code 'tardos2'"):
        wm.embed(model_file, tmp_path / "x.safetensors", keys.secret, recipient="a", recipient_code="tardos2")
    with pytest.raises(wm.InputError, match="belong to recipient_code='tardos1'"):
        wm.embed(model_file, tmp_path / "x.safetensors", keys.secret, recipient="a", code_groups=64)
    with pytest.raises(wm.InputError, match="code groups is out of range"):
        wm.mark(state, keys.secret, label="v1", recipient="a", recipient_code="tardos1", code_groups=0)
    with pytest.raises(wm.InputError, match="needs scheme ss2 and a recipient"):
        wm.mark(state, keys.secret, label="v1", recipient_code="tardos1")


def test_verify_a_certificate_with_and_without_the_model(tmp_path, model_file, released, keys, other_keys):
    v = wm.verify(released.certificate, keys.public)
    assert v and v.valid and v.signature_valid and v.kind == "certificate"
    assert v.signer == keys.key_id and v.predicate["label"] == "v1" and v.model is None
    with_model = wm.verify(released.certificate, keys.public, model=released.output)
    assert with_model.valid and with_model.model.files_match and with_model.model.tensors_match
    original = wm.verify(released.certificate, keys.public, model=model_file)
    assert not original.valid and original.signature_valid
    assert set(original.model.tensors_changed) == {t.name for t in released.tensors}
    wrong = wm.verify(released.certificate, other_keys.public)
    assert not wrong and wrong.reason and wrong.to_dict() == {
        "valid": False,
        "file": released.certificate,
        "reason": wrong.reason,
    }
    cli = cli_binary()
    if cli is not None and cli.exists():
        args = [str(cli), "verify", released.certificate, "--pub", keys.public, "--model", released.output, "--json"]
        printed = json.loads(subprocess.run(args, capture_output=True, text=True).stdout)
        assert with_model.to_dict() == printed


def test_inspect_lists_tensors_and_matches_the_cli(model_file):
    info = wm.inspect(model_file)
    assert info.layout == "File" and [f.name for f in info.files] == ["model.safetensors"]
    by_name = {t.name: t for t in info.tensors}
    assert by_name["embed.weight"].dtype == "F32" and by_name["embed.weight"].shape == [512, 512]
    assert by_name["embed.weight"].marked_by_default and not by_name["layers.0.bias"].marked_by_default
    assert by_name["position_ids"].dtype == "I64"
    assert len(info.tensor_root) == 64 and info.metadata == [{"format": "pt"}]
    assert wm.inspect(model_file, digests=False).tensor_root is None
    cli = cli_binary()
    if cli is None or not cli.exists():
        missing("the weightmark binary (cargo build -p weightmark-cli) is not built")
    printed = subprocess.run([str(cli), "inspect", str(model_file), "--json"], capture_output=True, check=True, text=True)
    assert info.to_dict() == json.loads(printed.stdout)


def test_convert_a_gguf_file_to_safetensors(tmp_path):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    gguf = write_gguf(tmp_path / "tiny.gguf", {"w": w, "b": b})
    conv = wm.convert(gguf, tmp_path / "hf", dtype="f32")
    assert conv.files == ["model.safetensors"] and conv.tensors == 2 and conv.dtype == "F32"
    raw = read_safetensors_raw(tmp_path / "hf" / "model.safetensors")
    assert np.array_equal(np.frombuffer(raw["w"][2], "<f4").reshape(64, 128), w)
    half = wm.convert(gguf, tmp_path / "hf16", dtype="bf16", max_shard_size=10000)
    assert half.dtype == "BF16" and len(half.files) == 2
    with pytest.raises(wm.InputError, match="f32, f16 or bf16"):
        wm.convert(gguf, tmp_path / "bad", dtype="int8")
    with pytest.raises(wm.InputError, match="max_shard_size"):
        wm.convert(gguf, tmp_path / "bad", max_shard_size="lots")


def test_progress_is_reported_and_a_raising_callback_is_reraised(tmp_path, model_file, keys):
    calls = []
    wm.embed(
        model_file,
        tmp_path / "p.safetensors",
        keys.secret,
        label="p",
        scheme=SCHEME,
        progress=lambda stage, done, total: calls.append((stage, done, total)),
    )
    assert calls and all(isinstance(s, str) and 0 <= d <= t for s, d, t in calls)
    assert calls[-1][1] == calls[-1][2]

    class Stop(Exception):
        pass

    def stop(stage, done, total):
        raise Stop(stage)

    with pytest.raises(Stop):
        wm.detect(tmp_path / "p.safetensors", keys.secret, label="p", progress=stop)


def test_the_gil_is_released_during_heavy_work(tmp_path, keys):
    big = {f"w{i}": np.random.default_rng(i).standard_normal((1024, 1024)).astype(np.float32) for i in range(8)}
    path = save_safetensors(tmp_path / "big.safetensors", big)
    done = threading.Event()
    ticks = 0

    def work():
        try:
            for _ in range(3):
                wm.detect(path, keys.secret, label="x")
        finally:
            done.set()

    t = threading.Thread(target=work)
    start = time.perf_counter()
    t.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.002)
    t.join()
    elapsed = time.perf_counter() - start
    # With the GIL held for the whole detection this thread could not tick.
    if elapsed > 0.1:
        assert ticks >= 10, (ticks, elapsed)


def test_results_are_typed_and_versioned():
    assert isinstance(wm.__version__, str) and wm.DEFAULT_STRENGTH == 0.003
    assert wm.DEFAULT_THRESHOLD_P == 1e-9 and wm.MAX_STRENGTH == 0.1
    public = [getattr(wm, name) for name in wm.__all__]
    documented = [o for o in public if inspect.isfunction(o) or inspect.isclass(o)]
    assert len(documented) > 30 and all(o.__doc__ for o in documented)
    state = synthetic_state()
    assert state["position_ids"].dtype == np.int64


def test_the_recipient_share_is_an_option_of_embed_and_mark(tmp_path, model_file, keys):
    wm.embed(
        model_file, tmp_path / "acme.safetensors", keys.secret, label="v1", recipient="acme",
        strength=STRENGTH, scheme="ss2", cert=tmp_path / "acme.json", recipient_share=0.8,
    )
    p = wm.verify(tmp_path / "acme.json", keys.public).predicate
    assert abs(p["recipient_strength"] / p["release_strength"] - 2.0) < 1e-12
    assert abs(p["recipient_strength"] ** 2 + p["release_strength"] ** 2 - STRENGTH**2) < 1e-15
    # In memory: byte for byte what embed wrote; the default share differs.
    state = synthetic_state()
    marked, _ = wm.mark(
        state, keys.secret, label="v1", recipient="acme", strength=STRENGTH, scheme="ss2",
        recipient_share=0.8,
    )
    written = read_safetensors_raw(tmp_path / "acme.safetensors")
    assert all(marked[n].tobytes() == written[n][2] for n in state)
    half, _ = wm.mark(state, keys.secret, label="v1", recipient="acme", strength=STRENGTH, scheme="ss2")
    assert half["embed.weight"].tobytes() != marked["embed.weight"].tobytes()
    with pytest.raises(wm.InputError, match="recipient share 1.5 is out of range"):
        wm.mark(state, keys.secret, label="v1", recipient="a", recipient_share=1.5)
    with pytest.raises(wm.InputError, match="needs scheme ss2 and a recipient"):
        wm.mark(state, keys.secret, label="v1", recipient_share=0.8)
