"""The token pipeline: packed files, the fingerprinted cache, atomic builds."""

import numpy as np
import pytest

from latentlm.data import pipeline
from latentlm.data.datamodule import PackedTokens
from latentlm.data.pipeline import build_cache, load_cache

DOCS = [f"Story {i}: Ben had {i} red apples and gave one to Mia." for i in range(60)]


@pytest.fixture
def text_cfg(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("<|endoftext|>".join([*DOCS[:30], "   ", *DOCS[30:]]))  # one empty document, skipped
    return {"source": "text", "files": [str(path)], "separator": "<|endoftext|>", "val_fraction": 0.1}


BPE = {"kind": "bpe", "vocab_size": 300, "train_documents": 100}


def test_packed_files_hold_every_document_and_eot(tmp_path, text_cfg):
    cache = build_cache(tmp_path / "cache", text_cfg, BPE)
    enc = cache.encoding()
    train = np.fromfile(cache.split_path("train"), dtype=cache.dtype)
    val = np.fromfile(cache.split_path("val"), dtype=cache.dtype)
    assert cache.meta["splits"]["train"]["documents"] == 54 and cache.meta["splits"]["val"]["documents"] == 6
    docs = enc.decode(train.tolist()).split("<|endoftext|>")
    assert docs == [*DOCS[:54], ""]  # EOT after every document
    assert enc.decode(val.tolist()).split("<|endoftext|>")[:-1] == DOCS[54:]


def test_cache_is_reused_and_keyed_by_config(tmp_path, text_cfg, monkeypatch):
    first = build_cache(tmp_path / "cache", text_cfg, BPE)
    monkeypatch.setattr(pipeline, "documents", lambda *a, **k: pytest.fail("rebuilt a cached config"))
    assert build_cache(tmp_path / "cache", text_cfg, BPE).path == first.path
    monkeypatch.undo()
    other = build_cache(tmp_path / "cache", text_cfg, {**BPE, "vocab_size": 290})
    assert other.path != first.path


def test_interrupted_build_leaves_nothing_that_loads(tmp_path, text_cfg, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_write_tokens", crash)
    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "cache", text_cfg, BPE)
    assert list((tmp_path / "cache").iterdir()) == []  # the temporary folder is gone
    assert load_cache(tmp_path / "cache", text_cfg, BPE) is None


def test_truncated_cache_is_not_valid(tmp_path, text_cfg):
    cache = build_cache(tmp_path / "cache", text_cfg, BPE)
    path = cache.split_path("train")
    path.write_bytes(path.read_bytes()[:-2])
    assert load_cache(tmp_path / "cache", text_cfg, BPE) is None
    assert (
        build_cache(tmp_path / "cache", text_cfg, BPE).split_path("train").stat().st_size
        == cache.meta["splits"]["train"]["bytes"]
    )  # rebuilt whole


def test_changed_text_file_changes_the_fingerprint(tmp_path, text_cfg):
    first = build_cache(tmp_path / "cache", text_cfg, BPE)
    with open(text_cfg["files"][0], "a") as f:
        f.write("<|endoftext|>A new story about a dog.")
    assert build_cache(tmp_path / "cache", text_cfg, BPE).path != first.path


def test_packed_windows_shift_by_one(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(100, dtype=np.uint16).tofile(path)
    ds = PackedTokens(path, seq_len=10, dtype=np.uint16)
    assert len(ds) == 9  # 99 // 10: each window needs one extra target token
    x, y = ds[3]
    assert x.tolist() == list(range(30, 40)) and y.tolist() == list(range(31, 41))


def test_too_small_split_is_a_clear_error(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(5, dtype=np.uint16).tofile(path)
    with pytest.raises(ValueError, match="fewer than data.seq_len"):
        PackedTokens(path, seq_len=10, dtype=np.uint16)
