"""The library's default scheme (what `embed` and `mark` use without `scheme=`),
found through its certificate, on disk and in memory."""

from __future__ import annotations

from pathlib import Path

import pytest

import weightmark as wm
from conftest import STRENGTH, certify, read_safetensors_raw, save_safetensors, synthetic_state


def test_default_scheme_in_memory_equals_embed_and_is_found(tmp_path, keys):
    state = synthetic_state(seed=21)
    source = save_safetensors(tmp_path / "model.safetensors", state)
    r = wm.embed(source, tmp_path / "out.safetensors", keys.secret, label="d", recipient="acme", strength=STRENGTH)
    marked, record = wm.mark(state, keys.secret, label="d", recipient="acme", strength=STRENGTH)
    assert record.scheme == r.scheme == wm.verify(r.certificate, keys.public).predicate["scheme"]
    written = read_safetensors_raw(Path(r.output))
    for name, array in marked.items():
        assert array.tobytes() == written[name][2], name
    found = wm.detect(r.output, keys.secret, cert=r.certificate)
    assert found.detected and found.scheme == r.scheme
    assert wm.detect_arrays(marked, keys.secret, cert=r.certificate).z == found.z
    assert not wm.detect(source, keys.secret, cert=r.certificate).detected
    saved = save_safetensors(tmp_path / "saved.safetensors", marked)
    cert = certify(saved, record, keys.secret)
    assert wm.verify(cert, keys.public, model=saved).valid
    assert wm.detect(saved, keys.secret, cert=cert).detected


@pytest.mark.parametrize("scheme", ["ss1", "ss2"])
def test_each_scheme_by_name(tmp_path, keys, scheme):
    state = synthetic_state(seed=22)
    marked, record = wm.mark(state, keys.secret, label="n", strength=STRENGTH, scheme=scheme)
    assert record.scheme == scheme and record.summary.scheme == scheme


def test_an_unknown_scheme_is_an_input_error(keys):
    with pytest.raises(wm.InputError, match="scheme 'ss9'"):
        wm.mark(synthetic_state(), keys.secret, label="n", scheme="ss9")
