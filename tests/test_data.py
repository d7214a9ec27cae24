"""The token pipeline: packed files, the fingerprinted cache, atomic builds."""

import hashlib
import os
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from conftest import REPO

from latentlm.config import ConfigError
from latentlm.data import pipeline, tokenizer
from latentlm.data.datamodule import PackedTokens
from latentlm.data.pipeline import SyntheticStories, TextFiles, TinyStories, build_cache, load_cache

DOCS = [f"Story {i}: Ben had {i} red apples and gave one to Mia." for i in range(60)]


@pytest.fixture
def text_cfg(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("<|endoftext|>".join([*DOCS[:30], "   ", *DOCS[30:]]))  # one empty document, skipped
    return TextFiles(files=[str(path)], separator="<|endoftext|>", val_fraction=0.1)


BPE = tokenizer.BPE(vocab_size=300, train_documents=100)


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
    monkeypatch.setattr(TextFiles, "documents", lambda *a, **k: pytest.fail("rebuilt a cached config"))
    assert build_cache(tmp_path / "cache", text_cfg, BPE).path == first.path
    monkeypatch.undo()
    other = build_cache(tmp_path / "cache", text_cfg, replace(BPE, vocab_size=290))
    assert other.path != first.path


def test_interrupted_build_leaves_nothing_that_loads(tmp_path, text_cfg, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_write_tokens", crash)
    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "cache", text_cfg, BPE)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".build.lock"]  # the temporary folder is gone
    assert load_cache(tmp_path / "cache", text_cfg, BPE) is None


def test_next_build_deletes_what_a_killed_build_left(tmp_path, text_cfg):
    """A build killed outright (no except clause runs) leaves its temporary folder; the next build deletes it."""
    killed = (
        "import os, signal\n"
        "from latentlm.data import pipeline\n"
        "from latentlm.data.pipeline import TextFiles\n"
        "from latentlm.data.tokenizer import BPE\n"
        "pipeline._write_tokens = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"pipeline.build_cache({str(tmp_path / 'cache')!r}, {text_cfg!r}, {BPE!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", killed], cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    left = list((tmp_path / "cache").glob(".*.tmp-*"))
    assert len(left) == 1 and (left[0] / "tokenizer.tiktoken").exists()  # killed after training the tokenizer
    cache = build_cache(tmp_path / "cache", text_cfg, BPE)
    assert list((tmp_path / "cache").glob(".*.tmp-*")) == [] and load_cache(tmp_path / "cache", text_cfg, BPE) == cache


def test_a_build_in_progress_keeps_its_folder(tmp_path, text_cfg):
    cache_dir = tmp_path / "cache"
    other = pipeline._lock_and_clean(cache_dir)  # another build holds the lock while it writes its folder
    (cache_dir / ".text-0123.tmp-cafe").mkdir()
    try:
        build_cache(cache_dir, text_cfg, BPE)
        assert (cache_dir / ".text-0123.tmp-cafe").is_dir()
    finally:
        os.close(other)  # that build ends (or dies): its folder, if still there, is garbage
    build_cache(cache_dir, replace(text_cfg, val_fraction=0.2), BPE)
    assert not (cache_dir / ".text-0123.tmp-cafe").exists()


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
    with open(text_cfg.files[0], "a") as f:
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
    with pytest.raises(ConfigError, match=r"^data.seq_len=10 needs 11 tokens a window, but the t split holds 5;"):
        PackedTokens(path, seq_len=10, dtype=np.uint16)


UNICODE = 'Naïve café, emoji 🙂, CJK 漢字, "quotes" and tabs\tstay.'
BYTES = tokenizer.Bytes()


def decoded_docs(cache, split: str) -> list[str]:
    tokens = np.fromfile(cache.split_path(split), dtype=cache.dtype)
    return cache.encoding().decode(tokens.tolist()).split("<|endoftext|>")[:-1]


def test_text_keeps_unicode_and_counts_empty_documents(tmp_path, caplog):
    path = tmp_path / "docs.txt"
    path.write_text(f"{UNICODE}<|endoftext|>\n\n<|endoftext|>" + "<|endoftext|>".join(DOCS[:9]) + "<|endoftext|>",
                    encoding="utf-8")  # 2 empty documents: one of blank lines, one after the last separator
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text('{"text": "  "}\n{"text": "Über 🙂"}\n', encoding="utf-8")
    cfg = TextFiles(files=[str(path), str(jsonl)], separator="<|endoftext|>", val_fraction=0.1)
    with caplog.at_level("INFO", logger="latentlm.data.pipeline"):
        cache = build_cache(tmp_path / "cache", cfg, BPE)
    assert cache.meta["empty_documents_skipped"] == 3
    assert "skipped 3 empty documents" in caplog.text
    assert decoded_docs(cache, "train") == [UNICODE, *DOCS[:9]]
    assert decoded_docs(cache, "val") == ["Über 🙂"]


def test_literal_eot_inside_a_document_stays_text(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("\n===\n".join(["An <|endoftext|> inside.", *DOCS[:5]]), encoding="utf-8")
    cfg = TextFiles(files=[str(path)], separator="===", val_fraction=0.2)
    cache = build_cache(tmp_path / "cache", cfg, BYTES)
    tokens = np.fromfile(cache.split_path("train"), dtype=cache.dtype)
    assert (tokens == 256).sum() == cache.meta["splits"]["train"]["documents"] == 5  # one EOT per document
    assert cache.encoding().decode(tokens[: tokens.tolist().index(256)].tolist()) == "An <|endoftext|> inside."


def test_worker_processes_give_the_same_cache(tmp_path, monkeypatch):
    cfg = SyntheticStories(num_stories=120, val_stories=10, seed=3)
    serial = build_cache(tmp_path / "serial", cfg, BPE)
    monkeypatch.setattr(pipeline, "PARALLEL_MIN_DOCS", 0)  # use worker processes for these few stories
    assert pipeline._workers(120, 2) == 2
    forked = build_cache(tmp_path / "forked", cfg, BPE, num_proc=2)
    for split in ("train", "val"):
        assert forked.split_path(split).read_bytes() == serial.split_path(split).read_bytes()
        assert forked.meta["splits"][split] == serial.meta["splits"][split]  # tokens, bytes, logp, floor
    assert set(forked.meta["build_seconds"]) == {"documents", "tokenizer", "tokenize", "total"}
    assert sorted(p.name for p in forked.path.iterdir()) == ["meta.json", "tokenizer.tiktoken", "train.bin", "val.bin"]



# sha256 of train.bin and val.bin as built before tokenisation moved to Dataset.map (generator "stories-1"):
# a change of pipeline must leave every token file byte for byte as it was.
PINNED = {
    "bpe": ("0eccc02cbbfd854f6657725a7157ad22fd110743ed525ec290e81b8dafcb80f1",
            "c2bd17cce239b46bead99a8cfb51db1048f3c3994fd416d1c7f897ada51b0e49"),
    "bytes": ("f125dfa273e53513aeb38d239f652507376f7200b7240105d22bdebf645c5a26",
              "fab3614614cd6d0ee21dd8218275ed3649b14571b455ba200a5dce2e26069504"),
}


@pytest.mark.parametrize("tok", [BPE, BYTES], ids=["bpe", "bytes"])
def test_token_files_are_pinned(tmp_path, tok):
    cfg = SyntheticStories(num_stories=300, val_stories=20, seed=7)
    cache = build_cache(tmp_path / "cache", cfg, tok)
    digests = tuple(hashlib.sha256(cache.split_path(s).read_bytes()).hexdigest() for s in ("train", "val"))
    assert digests == PINNED[tok.kind]

# TinyStories in the dataset's own schema (one `text` column), as on the Hub.
STORIES = [f"Once upon a time, {name} found {i} shells. The end 🙂" for i, name in
           enumerate(["Lily", "Tom", "Ben", "Mia", "Sue"] * 6)]


def tinystories_cfg(local_path, hf_cache, **kw):
    return {"path": "roneneldan/TinyStories", "local_path": local_path and str(local_path),
            "separator": "<|endoftext|>", "num_stories": 12, "val_stories": 3, "hf_cache_dir": str(hf_cache), **kw}


def test_tinystories_from_local_parquet_in_its_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "TinyStories" / "data"
    data.mkdir(parents=True)
    train = [*STORIES[:5], "", *STORIES[5:25]]  # one empty story: skipped and counted
    pq.write_table(pa.table({"text": train}), data / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"text": STORIES[25:]}), data / "validation-00000-of-00001.parquet")
    cfg = tinystories_cfg(tmp_path / "TinyStories", tmp_path / "hf")
    cache = build_cache(tmp_path / "cache", TinyStories(**cfg), BYTES)
    assert decoded_docs(cache, "train") == STORIES[:12]  # the first num_stories, unicode kept
    assert decoded_docs(cache, "val") == STORIES[25:28]  # from the validation files
    assert cache.meta["empty_documents_skipped"] == 1
    assert cache.path.name.startswith("tinystories-")


def test_tinystories_from_txt_files_split_by_name_or_carved(tmp_path):
    folder = tmp_path / "ts"
    folder.mkdir()
    as_txt = lambda stories: "".join(f"{s}\n<|endoftext|>\n" for s in stories)  # noqa: E731 (TinyStories-*.txt)
    (folder / "TinyStories-train.txt").write_text(as_txt(STORIES[:20]), encoding="utf-8")
    (folder / "TinyStories-valid.txt").write_text(as_txt(STORIES[20:]), encoding="utf-8")
    files = {"train": [str(folder / "TinyStories-train.txt")], "validation": [str(folder / "TinyStories-valid.txt")]}
    assert TinyStories(**tinystories_cfg(folder, tmp_path / "hf")).files() == ("text", files)
    cache = build_cache(tmp_path / "cache", TinyStories(**tinystories_cfg(folder, tmp_path / "hf")), BYTES)
    assert decoded_docs(cache, "train") == STORIES[:12] and decoded_docs(cache, "val") == STORIES[20:23]
    # One file: validation stories are its first val_stories, training stories follow them.
    one = tinystories_cfg(folder / "TinyStories-train.txt", tmp_path / "hf", num_stories=None)
    cache = build_cache(tmp_path / "cache", TinyStories(**one), BYTES)
    assert decoded_docs(cache, "val") == STORIES[:3] and decoded_docs(cache, "train") == STORIES[3:20]
    assert cache.meta["empty_documents_skipped"] == 1  # the text after the last separator


def test_tinystories_missing_local_path_names_the_key(tmp_path):
    cfg = tinystories_cfg(tmp_path / "nowhere", tmp_path / "hf")
    with pytest.raises(ConfigError, match=r"^data.local_path=\S+/nowhere does not exist; give a folder"):
        TinyStories(**cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no .parquet, .jsonl, .json or .txt file"):
        TinyStories(**tinystories_cfg(tmp_path / "empty", tmp_path / "hf"))
    TinyStories(**{**cfg, "local_path": None})  # the Hub: nothing to check before loading


def test_tinystories_offline_without_cache_names_both_fixes(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    source = TinyStories(**tinystories_cfg(None, tmp_path / "empty_hf_cache"))
    with pytest.raises(ConfigError) as err:
        source.documents()
    assert "HF_DATASETS_OFFLINE=1" in str(err.value) and "data.local_path=" in str(err.value)
    assert "data.path=roneneldan/TinyStories" in str(err.value)


def test_tinystories_from_the_hub_takes_the_first_stories_of_each_split(tmp_path, monkeypatch):
    import datasets

    hub = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": STORIES[:20]}),
                                "validation": datasets.Dataset.from_dict({"text": ["", *STORIES[20:]]})})
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda path, **kw: calls.append((path, kw)) or hub)
    splits = TinyStories(**tinystories_cfg(None, tmp_path / "hf")).documents(report=(report := {}))
    assert calls == [("roneneldan/TinyStories", {"cache_dir": str(tmp_path / "hf")})]
    assert splits["train"]["text"] == STORIES[:12] and splits["val"]["text"] == STORIES[20:23]
    assert report == {"empty_documents_skipped": 1}


def test_joined_tokenisation_equals_one_call_a_document(tmp_path):
    from latentlm.data.tokenizer import load_encoding, train_bpe

    texts = [*DOCS[:20], UNICODE, "ends with spaces   ", "  starts with spaces", "two\n\nlines\n", "'s 're 12 34"]
    train_bpe(texts * 5, 300, tmp_path / "tok.tiktoken")
    for enc in (load_encoding("bpe", tmp_path / "tok.tiktoken"), load_encoding("bytes")):
        per_doc = [t for text in texts for t in [*enc.encode_ordinary(text), enc.eot_token]]
        (joined,) = pipeline._encode_batch({"text": texts}, enc, np.uint32)["tokens"]
        assert joined.tolist() == per_doc


FORTUNES = "%\nA fortune\non two lines.\n%\nAnother one.\n%\n\n%\nThe last, 100% true.\n"


@pytest.mark.parametrize(
    ("split", "separator", "text", "documents", "empty"),
    [
        ("separator", "===", "one===\ntwo\n===  ===three", ["one", "two", "three"], 1),
        ("regex", "^%$", FORTUNES, ["A fortune\non two lines.", "Another one.", "The last, 100% true."], 2),
        ("regex", r"\n%\n", "a\n%\nb\n%\nc", ["a", "b", "c"], 0),  # as the command line hands over '\n%\n'
        ("line", None, "first line\n\n  second  \nthird", ["first line", "second", "third"], 1),
        ("blank_line", None, "A paragraph\nof two lines.\n\n \n\nNext one.\n\n", ["A paragraph\nof two lines.",
                                                                                "Next one."], 1),
        ("file", None, "All\n\nof it\n%\n", ["All\n\nof it\n%"], 0),
    ],
)
def test_text_split_modes_and_documents_per_file(tmp_path, caplog, split, separator, text, documents, empty):
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(text, encoding="utf-8")
    source = TextFiles(files=str(tmp_path / "*.txt"), split=split, separator=separator, val_fraction=0.01)
    with caplog.at_level("INFO", logger="latentlm.data.pipeline"):
        splits = source.documents(report=(report := {}))
    assert [*splits["train"]["text"], *splits["val"]["text"]] == documents * 2
    assert report["empty_documents_skipped"] == 2 * empty
    for name in ("a.txt", "b.txt"):
        assert f"{tmp_path / name}: {len(documents)} documents ({empty} empty skipped)" in caplog.text


def test_fortune_separator_from_the_command_line(tmp_path):
    """`data.split=regex data.separator='^%$'` as typed on the command line reaches the splitter intact."""
    from hydra.utils import instantiate

    from latentlm.config import compose_train

    (tmp_path / "fortunes").write_text(FORTUNES, encoding="utf-8")
    cfg = compose_train(["data=text", f"data.files={tmp_path / 'fortunes'}", "data.split=regex",
                         "data.separator='^%$'", "data.val_fraction=0.3"])
    splits = instantiate(cfg.data, _convert_="all").source.documents()
    assert list(splits["train"]["text"]) == ["A fortune\non two lines.", "Another one."]
    assert list(splits["val"]["text"]) == ["The last, 100% true."]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"split": "paragraph"}, "data.split=paragraph is not a text split; choose one of: separator, regex, line,"),
        ({"split": "regex", "separator": "(%)"}, "data.separator=(%) has a capturing group; write (?:...) instead"),
        ({"split": "regex", "separator": "[%"}, "data.separator=[% is not a valid regex"),
        ({"separator": ""}, "data.separator='' is empty; data.split=separator cuts the text at it"),
    ],
)
def test_bad_split_is_refused_before_any_work(tmp_path, text_cfg, change, message):
    with pytest.raises(ConfigError) as err:
        replace(text_cfg, **change)
    assert str(err.value).startswith(message)


def test_cached_entropy_floor_equals_the_stories_own(tmp_path):
    """The floor in meta.json (what runs log as data/entropy_floor) is stories.entropy_floor of the validation
    stories, each counted with its tokens plus the <|endoftext|> after it."""
    from latentlm.data.stories import entropy_floor, generate_stories

    cfg = SyntheticStories(num_stories=40, val_stories=25, seed=5)
    cache = build_cache(tmp_path / "cache", cfg, BPE)
    enc = cache.encoding()
    val = generate_stories(5, pipeline.VAL_INDEX_OFFSET, 25)
    expected = entropy_floor(val, lambda text: len(enc.encode_ordinary(text)) + 1)
    assert cache.meta["splits"]["val"]["entropy_floor"] == pytest.approx(expected, rel=1e-12)
