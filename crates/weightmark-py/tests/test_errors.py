"""The exception hierarchy: each library error becomes the right class with the
library's one-line message naming the file."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

import weightmark as wm
from conftest import SCHEME, STRENGTH, save_safetensors


def test_the_hierarchy():
    for cls in (wm.FormatError, wm.KeyFileError, wm.CertificateError, wm.InputError):
        assert issubclass(cls, wm.WeightmarkError) and cls.__module__ == "weightmark"
        assert cls.__doc__
    assert issubclass(wm.WeightmarkError, Exception)
    assert not issubclass(wm.InputError, wm.FormatError)


def test_a_malformed_model_is_a_format_error_naming_the_file(tmp_path, keys):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(wm.FormatError) as e:
        wm.inspect(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    assert e.value.path == str(bad)
    with pytest.raises(wm.FormatError, match="broken.safetensors"):
        wm.embed(bad, tmp_path / "out.safetensors", keys.secret, label="x")
    truncated = tmp_path / "short.safetensors"
    truncated.write_bytes(b"\x01\x02")
    with pytest.raises(wm.FormatError, match="too short"):
        wm.detect(truncated, keys.secret, label="x")


def test_a_directory_without_a_model_and_a_bad_gguf_are_format_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(wm.FormatError, match="no .safetensors file"):
        wm.inspect(tmp_path / "empty")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    with pytest.raises(wm.FormatError, match="fake.gguf"):
        wm.convert(fake, tmp_path / "out")


def test_arrays_whose_bytes_do_not_fit_their_shape_are_format_errors(keys):
    from weightmark import _native

    with pytest.raises(wm.FormatError, match="<arrays>: tensor 'w'"):
        _native.mark([("w", "F32", [4, 4], b"\0" * 8)], keys.secret, label="x")


def test_a_wrong_key_is_a_certificate_error(tmp_path, model_file, keys, other_keys):
    r = wm.embed(model_file, tmp_path / "m.safetensors", keys.secret, label="v1", strength=STRENGTH, scheme=SCHEME)
    with pytest.raises(wm.CertificateError) as e:
        wm.detect(r.output, other_keys.secret, cert=r.certificate)
    assert "\n" not in str(e.value)
    state = {"w": np.zeros((64, 64), np.float32)}
    with pytest.raises(wm.CertificateError):
        wm.detect_arrays(state, other_keys.secret, cert=r.certificate)


def test_a_file_that_is_not_a_certificate_is_a_certificate_error(tmp_path, keys):
    junk = tmp_path / "junk.json"
    junk.write_text(json.dumps({"hello": 1}))
    with pytest.raises(wm.CertificateError, match="junk.json"):
        wm.verify(junk, keys.public)
    with pytest.raises(wm.CertificateError, match="no certificate signed by key"):
        wm.identify(junk, keys.secret, tmp_path)


def test_a_tampered_certificate_does_not_verify(tmp_path, model_file, keys):
    r = wm.embed(model_file, tmp_path / "m.safetensors", keys.secret, label="v1", strength=STRENGTH, scheme=SCHEME)
    envelope = json.loads(Path(r.certificate).read_text())
    sig = envelope["signatures"][0]["sig"]
    envelope["signatures"][0]["sig"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(envelope))
    v = wm.verify(tampered, keys.public)
    assert not v.valid and "signature" in v.reason
    with pytest.raises(wm.CertificateError):
        wm.detect(r.output, keys.secret, cert=tampered)


def test_bad_arguments_are_input_errors(tmp_path, model_file, keys):
    with pytest.raises(wm.InputError, match="strength 0.5 is out of range"):
        wm.embed(model_file, tmp_path / "o.safetensors", keys.secret, label="x", strength=0.5)
    with pytest.raises(wm.InputError, match="strength"):
        wm.mark({"w": np.zeros((64, 64), np.float32)}, keys.secret, label="x", strength=-1.0)
    with pytest.raises(wm.InputError, match="threshold"):
        wm.detect(model_file, keys.secret, label="x", threshold=2.0)
    with pytest.raises(wm.InputError, match="label"):
        wm.detect(model_file, keys.secret)
    with pytest.raises(wm.InputError, match="recipient is empty"):
        wm.detect(model_file, keys.secret, label="x", recipient="")
    with pytest.raises(wm.InputError, match="matches no tensor"):
        wm.embed(model_file, tmp_path / "o.safetensors", keys.secret, label="x", tensors=["nope*"])
    with pytest.raises(wm.InputError, match="nothing could be tested"):
        wm.detect_arrays({"w": np.zeros((4, 4), np.float32)}, keys.secret, label="x")


def test_missing_files_are_input_errors_naming_them(tmp_path, keys):
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(wm.InputError) as e:
        wm.inspect(missing)
    assert e.value.path == str(missing) and str(missing) in str(e.value)
    with pytest.raises(wm.InputError, match="nokey.key"):
        wm.detect(tmp_path, tmp_path / "nokey.key", label="x")


def test_a_malformed_key_file_is_a_key_file_error(tmp_path, model_file):
    key = tmp_path / "bad.key"
    key.write_text("this is not a key\n")
    with pytest.raises(wm.KeyFileError, match="bad.key") as e:
        wm.embed(model_file, tmp_path / "o.safetensors", key, label="x")
    assert e.value.path == str(key)


def test_errors_raised_in_threads_are_the_same(tmp_path, keys):
    caught = []

    def work():
        try:
            wm.inspect(tmp_path / "absent")
        except wm.WeightmarkError as e:
            caught.append(type(e))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert caught == [wm.InputError] * 4
