"""A real model: all-MiniLM-L6-v2 (fetched by scripts/fetch-models), marked on
disk and in memory, saved with the `safetensors` package, and found again."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import weightmark as wm
from conftest import certify, missing, read_safetensors_raw


def minilm_dir() -> Path:
    root = os.environ.get("WEIGHTMARK_MODELS")
    if root:
        base = Path(root)
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = Path(cache) / "weightmark" / "models"
    return base / "minilm"


@pytest.fixture(scope="module")
def minilm() -> Path:
    path = minilm_dir() / "model.safetensors"
    if not path.exists():
        missing(f"MiniLM is not at {path}")
    return path


def test_minilm_marked_on_disk_is_found_blind_and_informed(tmp_path, minilm, keys):
    r = wm.embed(minilm.parent, tmp_path / "minilm-marked", keys.secret, label="minilm-v1", recipient="acme")
    assert Path(r.certificate) == tmp_path / "minilm-marked.cert.json"
    assert "config.json" in r.copied and r.relative_rms_change < 0.004
    found = wm.detect(r.output, keys.secret, cert=r.certificate)
    assert found.detected and found.z > 6.44, found.z
    informed = wm.detect(r.output, keys.secret, cert=r.certificate, original=minilm.parent)
    assert informed.detected and informed.z > 10 * found.z
    assert not wm.detect(minilm, keys.secret, cert=r.certificate).detected
    assert wm.verify(r.certificate, keys.public, model=r.output).valid


def test_minilm_in_memory_equals_embed_and_certifies(tmp_path, minilm, keys):
    st = pytest.importorskip("safetensors.numpy")
    state = st.load_file(str(minilm))
    marked, record = wm.mark(state, keys.secret, label="minilm-mem")
    r = wm.embed(minilm, tmp_path / "file.safetensors", keys.secret, label="minilm-mem")
    written = read_safetensors_raw(Path(r.output))
    changed = 0
    for name, array in marked.items():
        assert array.tobytes() == written[name][2], name
        changed += not np.array_equal(array, state[name])
    assert changed == len(record.marked_tensors) > 30
    saved = tmp_path / "saved.safetensors"
    st.save_file(marked, str(saved), metadata={"format": "pt"})
    cert = certify(saved, record, keys.secret)
    v = wm.verify(cert, keys.public, model=saved)
    assert v.valid and v.model.tensors_match
    reloaded = st.load_file(str(saved))
    found = wm.detect_arrays(reloaded, keys.secret, cert=cert)
    assert found.detected and found.z == wm.detect(saved, keys.secret, cert=cert).z
