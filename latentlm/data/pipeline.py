"""Documents -> `datasets.Dataset` -> batched tokenisation -> packed token files, cached by fingerprint.

The cache folder for a (data, tokenizer) config holds train.bin and val.bin (uint16/uint32 tokens, each
document followed by <|endoftext|>), the tokenizer's rank file when one is trained, and meta.json. It is
built in a temporary folder and renamed into place in one step, and meta.json records the fingerprint and
the file sizes, so an interrupted build never leaves a folder that later loads as valid; the next build deletes
the temporary folders that killed builds left behind.

Sources of documents: `SyntheticStories` (the seeded story generator), `TextFiles` (the user's .txt/.jsonl files),
`TinyStories` (roneneldan/TinyStories through `datasets.load_dataset`, from the Hub, the HF cache or a local copy).
Story generation and tokenisation are `Dataset.map(batched=True)` calls, in `num_proc` processes for large splits.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import tiktoken

from latentlm.config import ConfigError
from latentlm.data.tokenizer import EOT, Tokenizer, load_encoding

if TYPE_CHECKING:  # imported where documents are read: reusing a cache needs no `datasets` (about 1 s to import)
    import datasets

log = logging.getLogger(__name__)
CACHE_FORMAT = 1
VAL_INDEX_OFFSET = 1_000_000_000  # synthetic validation stories come from a disjoint index range
PARALLEL_MIN_DOCS = 20_000  # smaller splits are generated and tokenised in-process: workers cost more than they save


@dataclass(frozen=True)
class TokenCache:
    """A built cache folder and its meta.json."""

    path: Path
    meta: dict[str, Any]

    def split_path(self, split: str) -> Path:
        return self.path / f"{split}.bin"

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    def encoding(self) -> tiktoken.Encoding:
        return load_encoding(self.meta["tokenizer"]["kind"], self.path / "tokenizer.tiktoken")

    def export_tokenizer(self, run_dir: Path) -> None:
        """Copy the tokenizer into a run dir, so its checkpoints decode without the data cache. Each file is
        written under a name of this process's and renamed into place: the ranks of a run on several devices all
        export the same files, and none reads a file half-written by another."""
        files = {"tokenizer.json": json.dumps({"kind": self.meta["tokenizer"]["kind"],
                                               "vocab_size": self.meta["vocab_size"]})}
        if (self.path / "tokenizer.tiktoken").exists():
            files["tokenizer.tiktoken"] = (self.path / "tokenizer.tiktoken").read_text()
        for name, text in files.items():
            tmp = run_dir / f".{name}.{os.getpid()}"
            tmp.write_text(text)
            os.replace(tmp, run_dir / name)


def fingerprint(source: Source, tokenizer: Tokenizer) -> str:
    """Hash of everything that changes the cached tokens (not batch size, workers or paths of the cache)."""
    blob = json.dumps({"format": CACHE_FORMAT, "data": source.identity(), "tokenizer": tokenizer.config()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _file_stats(paths: Iterable[str]) -> list[tuple[str, int, float]]:
    """The files' identity: path, size and modification time."""
    return [(str(p), os.path.getsize(p), os.path.getmtime(p)) for p in paths]


class Source:
    """Where documents come from: a data config's own keys (latentlm.data.datamodule names the class). Each checks
    its values when made, so bad input stops before any work, and gives its splits in `_documents`."""

    name: ClassVar[str]  # the cache folder's prefix
    unhashed: ClassVar[tuple[str, ...]] = ()  # fields that do not change the documents

    def identity(self) -> dict[str, Any]:
        """What the documents are, for the cache's fingerprint."""
        return {"source": self.name, **{k: v for k, v in asdict(self).items() if k not in self.unhashed}}

    def documents(
        self, num_proc: int | None = None, report: dict[str, Any] | None = None, scratch: Path | None = None
    ) -> dict[str, datasets.Dataset]:
        """Train and val documents as Datasets with a `text` column (synthetic ones also carry `logp`).

        `report`, when given, receives "empty_documents_skipped": documents (of text files or TinyStories) that were
        empty or only whitespace and were left out. Generated stories are kept in Arrow files under `scratch`, if
        given, else in memory.
        """
        report = {} if report is None else report
        report["empty_documents_skipped"] = 0
        return self._documents(num_proc, report, scratch)


@dataclass(frozen=True)
class SyntheticStories(Source):
    """Seeded stories of latentlm.data.stories, each with its exact log-probability."""

    name: ClassVar[str] = "synthetic"
    num_stories: int
    val_stories: int
    seed: int = 0

    def identity(self) -> dict[str, Any]:
        from latentlm.data import stories

        return super().identity() | {"generator_version": stories.GENERATOR_VERSION}

    def _documents(
        self, num_proc: int | None, report: dict[str, Any], scratch: Path | None
    ) -> dict[str, datasets.Dataset]:
        import datasets

        ranges = {
            "train": range(self.num_stories),
            "val": range(VAL_INDEX_OFFSET, VAL_INDEX_OFFSET + self.val_stories),
        }
        return {
            split: datasets.Dataset.from_dict({"index": r}).map(
                _generate_batch,
                fn_kwargs={"seed": self.seed},
                batched=True,
                remove_columns=["index"],
                num_proc=_workers(len(r), num_proc),
                cache_file_name=_arrow_file(scratch, f"{split}-stories"),
                desc=f"generating {split} stories",
            )
            for split, r in ranges.items()
        }


TEXT_SPLITS = ("separator", "regex", "line", "blank_line", "file")


@dataclass(frozen=True)
class TextFiles(Source):
    r"""Your .txt and .jsonl files (paths or globs; a .jsonl file is one {"text": ...} a line). `split` cuts a .txt
    file into documents:

    - separator: at each occurrence of `separator`, taken literally (the default, <|endoftext|>);
    - regex: at each match of `separator`, a Python regex whose ^ and $ also match at line ends;
    - line: one document a line;
    - blank_line: at each run of empty or whitespace-only lines (paragraphs);
    - file: the whole file is one document.

    Hydra hands data.separator over as typed (`\n` stays a backslash and an n), so a separator that spans lines is
    a regex, which reads `\n` itself: `data.split=regex data.separator='^%$'` splits fortune files at each line
    holding only %. The last `val_fraction` of the documents are validation documents.
    """

    name: ClassVar[str] = "text"
    files: str | list[str]
    split: str = "separator"
    separator: str | None = EOT
    val_fraction: float = 0.05

    def __post_init__(self):
        self.paths()
        self.splitter()

    def identity(self) -> dict[str, Any]:
        return super().identity() | {"file_stats": _file_stats(self.paths())}

    def paths(self) -> list[str]:
        """The sorted files matched by data.files; an error names any pattern matching nothing."""
        patterns = [self.files] if isinstance(self.files, str) else list(self.files or [])
        if not patterns:
            raise ConfigError("data.files is empty; give .txt/.jsonl paths or globs, e.g. data.files='docs/*.txt'")
        found = []
        for pattern in patterns:
            matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
            if not matches:
                raise ConfigError(f"data.files={pattern} matches no file")
            found += matches
        return found

    def splitter(self) -> Callable[[str], list[str]]:
        """How a .txt file is cut into documents, by `split`."""
        mode, separator = self.split, self.separator
        if mode not in TEXT_SPLITS:
            raise ConfigError(f"data.split={mode} is not a text split; choose one of: {', '.join(TEXT_SPLITS)}")
        if mode in ("separator", "regex") and not separator:
            raise ConfigError(f"data.separator={separator!r} is empty; data.split={mode} cuts the text at it")
        if mode == "separator":
            return lambda text: text.split(separator)
        if mode == "line":
            return lambda text: text.split("\n")
        if mode == "file":
            return lambda text: [text]
        if mode == "blank_line":
            return re.compile(r"\n\s*\n").split
        try:
            pattern = re.compile(separator, re.MULTILINE)
        except re.error as err:
            raise ConfigError(f"data.separator={separator} is not a valid regex ({err})") from None
        if pattern.groups:  # re.split would return the groups' text as documents
            raise ConfigError(f"data.separator={separator} has a capturing group; write (?:...) instead")
        return pattern.split

    def _documents(
        self, num_proc: int | None, report: dict[str, Any], scratch: Path | None
    ) -> dict[str, datasets.Dataset]:
        import datasets

        texts, split = [], self.splitter()
        for path in self.paths():
            docs, skipped = _read_documents(path, split)
            log.info("%s: %d documents (%d empty skipped)", path, len(docs), skipped)
            texts += docs
            report["empty_documents_skipped"] += skipped
        if len(texts) < 2:
            raise ConfigError(
                f"data.files={self.files} gave {len(texts)} non-empty document(s) with data.split={self.split}; "
                "need at least 2 (training and validation): give more text, or cut it into more documents with "
                "data.split=line, blank_line or regex"
            )
        n_val = max(1, round(len(texts) * self.val_fraction))
        return {
            "train": datasets.Dataset.from_dict({"text": texts[:-n_val]}),
            "val": datasets.Dataset.from_dict({"text": texts[-n_val:]}),
        }


# A local TinyStories copy: the builder for each file format, in order of preference when a folder holds several
# (the Hub repo's default config is its parquet files).
TINYSTORIES_FORMATS = ((".parquet", "parquet"), (".jsonl", "json"), (".json", "json"), (".txt", "text"))
_SPLIT_WORD = r"(?:^|[-._ /])(?:{})(?:[-._ /0-9]|$)"
_VAL_NAME = re.compile(_SPLIT_WORD.format("validation|valid|val|dev"), re.IGNORECASE)
_TEST_NAME = re.compile(_SPLIT_WORD.format("test|testing"), re.IGNORECASE)


@dataclass(frozen=True)
class TinyStories(Source):
    """roneneldan/TinyStories (`path`) through `datasets.load_dataset`, from the Hub or the HF cache (`hf_cache_dir`),
    or your own copy of its files (`local_path`); the first `num_stories` training and `val_stories` validation
    stories (None: all). `separator` separates the stories of .txt files."""

    name: ClassVar[str] = "tinystories"
    unhashed: ClassVar[tuple[str, ...]] = ("hf_cache_dir",)
    path: str = "roneneldan/TinyStories"
    local_path: str | None = None
    separator: str | None = EOT
    num_stories: int | None = None
    val_stories: int | None = None
    hf_cache_dir: str | None = None

    def __post_init__(self):
        if self.local_path:
            self.files()

    def identity(self) -> dict[str, Any]:
        if not self.local_path:
            return super().identity()
        stats = {split: _file_stats(paths) for split, paths in self.files()[1].items()}
        return super().identity() | {"file_stats": stats}

    def files(self) -> tuple[str, dict[str, list[str]]]:
        """The `datasets` builder and the train / validation files of data.local_path (a folder or one file).

        A folder's files of the preferred format are split by name as on the Hub: "valid", "validation", "val" or
        "dev" in the name or folder mark validation files, "test" ones are left out, the rest are training files.
        One file is all training data (validation stories are then taken from its start).
        """
        raw = self.local_path
        root = Path(os.path.expanduser(str(raw)))
        if not root.exists():
            raise ConfigError(
                f"data.local_path={raw} does not exist; give a folder or file of TinyStories in the dataset's own "
                "schema (.parquet/.json/.jsonl with a `text` column, or .txt stories separated by <|endoftext|>), "
                "or data.local_path=null to load data.path with datasets"
            )
        if root.is_file():
            files = [root]
        else:
            hidden = lambda p: any(q.startswith(".") for q in p.relative_to(root).parts)  # noqa: E731
            files = sorted(p for p in root.rglob("*") if p.is_file() and not hidden(p))
        for suffix, fmt in TINYSTORIES_FORMATS:
            chosen = [p for p in files if p.name.lower().endswith(suffix)]
            if chosen:
                builder = fmt
                break
        else:
            raise ConfigError(
                f"data.local_path={raw} holds no .parquet, .jsonl, .json or .txt file of TinyStories"
            )
        if root.is_file():
            return builder, {"train": [str(root)], "validation": []}
        splits: dict[str, list[str]] = {"train": [], "validation": []}
        for p in chosen:
            name = p.relative_to(root).with_suffix("").as_posix()
            if _VAL_NAME.search(name):
                splits["validation"].append(str(p))
            elif not _TEST_NAME.search(name):
                splits["train"].append(str(p))
        if not splits["train"]:
            raise ConfigError(f"data.local_path={raw} holds no training file, only {len(chosen)} other(s)")
        return builder, splits

    def _documents(
        self, num_proc: int | None, report: dict[str, Any], scratch: Path | None
    ) -> dict[str, datasets.Dataset]:
        import datasets

        local = self.local_path
        cache_dir = self.hf_cache_dir
        lines = False  # .txt files load a line a row (line ends kept): the stories are joined back from them
        if local:
            builder, files = self.files()
            lines = builder == "text"
            kwargs = {"keep_linebreaks": True} if lines else {}
            loaded = datasets.load_dataset(
                builder, data_files={k: v for k, v in files.items() if v}, cache_dir=cache_dir, **kwargs
            )
            where = f"data.local_path={local}"
        else:
            try:
                loaded = datasets.load_dataset(self.path, cache_dir=cache_dir)
            except Exception as err:  # offline and not cached (ConnectionError, FileNotFoundError, hub errors)
                raise ConfigError(
                    f"data=tinystories could not load data.path={self.path} from the Hugging Face Hub or its "
                    f"cache ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Either load it "
                    "once with network (it is then cached under HF_DATASETS_CACHE; on a machine without network copy "
                    "that cache over and set HF_DATASETS_OFFLINE=1), or download its files and pass "
                    "data.local_path=<folder or file of .parquet/.jsonl/.txt>"
                ) from err
            where = f"data.path={self.path}"
        for split, ds in loaded.items():
            if "text" not in ds.column_names:
                raise ConfigError(f"{where}: split {split} has columns {ds.column_names}, no `text` column")
        separator = self.separator or EOT
        val_cap, train_cap = self.val_stories, self.num_stories
        train_stream = _stories(loaded["train"], separator, lines, report)
        if "validation" in loaded:
            val = list(itertools.islice(_stories(loaded["validation"], separator, lines, report), val_cap))
        else:  # no validation files: the first val_stories stories are validation, the training stories follow them
            if not val_cap:
                raise ConfigError(f"{where} has no validation split; set data.val_stories to take them from train")
            val = list(itertools.islice(train_stream, val_cap))
        train = list(itertools.islice(train_stream, train_cap))
        if not train or not val:
            raise ConfigError(f"{where}: {len(train)} training and {len(val)} validation stories; need both")
        return {"train": datasets.Dataset.from_dict({"text": train}), "val": datasets.Dataset.from_dict({"text": val})}


def load_cache(cache_dir: Path, source: Source, tokenizer: Tokenizer) -> TokenCache | None:
    """The cache of these documents and tokenizer if it exists and is complete, else None."""
    path = Path(cache_dir) / f"{source.name}-{fingerprint(source, tokenizer)}"
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    cache = TokenCache(path, meta)
    complete = meta.get("fingerprint") == path.name.split("-")[-1] and all(
        cache.split_path(s).exists() and cache.split_path(s).stat().st_size == meta["splits"][s]["bytes"]
        for s in ("train", "val")
    )
    return cache if complete else None


def build_cache(
    cache_dir: Path, source: Source, tokenizer: Tokenizer, num_proc: int | None = None
) -> TokenCache:
    """Return the cache of these documents and tokenizer, building it first if needed.

    meta.json also records the empty documents skipped and the seconds each stage of the build took.
    """
    cached = load_cache(cache_dir, source, tokenizer)
    if cached is not None:
        return cached
    fp = fingerprint(source, tokenizer)
    final = Path(cache_dir) / f"{source.name}-{fp}"
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    lock = _lock_and_clean(Path(cache_dir))
    tmp.mkdir()
    try:
        log.info("building token cache %s", final)
        seconds: dict[str, float] = {}
        started = clock = time.perf_counter()
        report: dict[str, Any] = {}
        scratch = tmp / "arrow"  # Dataset.map's files, deleted before the folder is renamed into place
        splits = source.documents(num_proc, report, scratch)
        seconds["documents"], clock = time.perf_counter() - clock, time.perf_counter()
        if report.get("empty_documents_skipped"):
            log.info("skipped %d empty documents", report["empty_documents_skipped"])
        tokenizer.train(splits["train"], tmp / "tokenizer.tiktoken")
        enc = load_encoding(tokenizer.kind, tmp / "tokenizer.tiktoken")
        seconds["tokenizer"], clock = time.perf_counter() - clock, time.perf_counter()
        dtype = np.uint16 if enc.n_vocab <= 2**16 else np.uint32
        meta: dict[str, Any] = {
            "fingerprint": fp,
            "format": CACHE_FORMAT,
            "data": source.identity(),
            "tokenizer": tokenizer.config(),
            "vocab_size": enc.n_vocab,
            "eot_id": enc.eot_token,
            "dtype": np.dtype(dtype).name,
            "empty_documents_skipped": report.get("empty_documents_skipped", 0),
            "splits": {},
        }
        for split, ds in splits.items():
            meta["splits"][split] = _write_tokens(ds, enc, tmp / f"{split}.bin", dtype, num_proc, scratch)
        shutil.rmtree(scratch, ignore_errors=True)
        seconds["tokenize"] = time.perf_counter() - clock
        seconds["total"] = time.perf_counter() - started
        meta["build_seconds"] = seconds
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if final.exists() and load_cache(cache_dir, source, tokenizer) is None:
            shutil.rmtree(final)  # a damaged cache (e.g. a truncated file): replace it
        try:
            os.rename(tmp, final)  # atomic: the folder appears complete or not at all
        except OSError:  # another process finished the same cache first
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)  # releases the build's shared lock
    return load_cache(cache_dir, source, tokenizer)


def _lock_and_clean(cache_dir: Path) -> int:
    """Take a shared lock on cache_dir's lock file for a build, and return its descriptor (closing it unlocks).

    First, if no build holds the lock, delete every temporary build folder: a build deletes its own folder when
    it fails, but one that is killed (SIGKILL, a lost node) cannot, and its lock dies with it. While another build
    runs, its folder is in use, so the cleanup waits for a later build. (A lock rather than a PID check, which
    could not see a live build on another machine sharing the folder.)
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = os.open(cache_dir / ".build.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass
    else:
        for leftover in cache_dir.glob(".*.tmp-*"):
            log.info("removing %s, left by an interrupted build", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
    fcntl.flock(lock, fcntl.LOCK_SH)  # turns an exclusive lock into a shared one: builds run side by side
    return lock


def _read_documents(path: str, split: Callable[[str], list[str]]) -> tuple[list[str], int]:
    """Non-empty documents of a .jsonl file (one {"text": ...} a line) or a text file cut by `split`,
    and how many empty (or whitespace-only) documents were skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            if path.endswith(".jsonl"):
                docs = [_jsonl_text(line, path) for line in f if line.strip()]
            else:
                docs = split(f.read())
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"data.files: {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x}: {err.reason}); "
            "data=text reads UTF-8 .txt and .jsonl files"
        ) from None
    kept = [d.strip() for d in docs if d.strip()]
    return kept, len(docs) - len(kept)


def _jsonl_text(line: str, path: str) -> str:
    try:
        text = json.loads(line)["text"]
    except (ValueError, TypeError, KeyError):
        text = None
    if not isinstance(text, str):
        raise ConfigError(f'data.files: {path} has a line that is not {{"text": "..."}}: {line.strip()[:60]}')
    return text


def _stories(ds: datasets.Dataset, separator: str, lines: bool, report: dict[str, Any]) -> Iterator[str]:
    """The non-empty stories of a split, stripped, in order (counting the empty ones in `report`).

    With `lines`, the rows are a text file's lines: they are joined and split at `separator` as they stream by, so
    no story, nor the whole file, has to be one row.
    """
    pending: list[str] = []

    def found(doc: str) -> Iterator[str]:
        if doc.strip():
            yield doc.strip()
        else:
            report["empty_documents_skipped"] += 1

    for batch in ds.iter(batch_size=10_000):
        for text in batch["text"]:
            if not lines:
                yield from found(text or "")
                continue
            pending.append(text)
            if separator in text:
                *docs, rest = "".join(pending).split(separator)
                pending = [rest]
                for doc in docs:
                    yield from found(doc)
    if lines and pending:  # the text after the last separator
        yield from found("".join(pending))


def _arrow_file(scratch: Path | None, name: str) -> str | None:
    """Where a map writes its output: a memory-mapped file, so that worker processes hand back a file name rather
    than the data (which `datasets` sends through a queue, at about twice the cost); None keeps it in memory."""
    if scratch is None:
        return None
    scratch.mkdir(exist_ok=True)
    return str(scratch / f"{name}.arrow")


def _workers(n: int, num_proc: int | None) -> int | None:
    """`num_proc` for a map over n documents: None (in-process) unless the split is large enough to gain."""
    return num_proc if num_proc and num_proc > 1 and n >= PARALLEL_MIN_DOCS else None


def _generate_batch(batch: dict[str, list], seed: int) -> dict[str, list]:
    from latentlm.data import stories

    made = [stories.generate_story(seed, i) for i in batch["index"]]
    return {"text": [s.text for s in made], "logp": [s.logp for s in made]}


def _encode_batch(batch: dict[str, list], enc: tiktoken.Encoding, dtype: type) -> dict[str, list[np.ndarray]]:
    """A batch of documents -> one row: their tokens, each document followed by EOT."""
    texts = batch["text"]
    if any(EOT in t for t in texts):  # a document holding the literal EOT string: that text stays ordinary text
        ids = [t for doc in enc.encode_ordinary_batch(texts) for t in (*doc, enc.eot_token)]
        return {"tokens": [np.array(ids, dtype=dtype)]}
    # One call on the joined text, about twice as fast as a call a document and the same tokens: tiktoken cuts the
    # text at special tokens before its regex splits it.
    joined = EOT.join(texts) + EOT
    return {"tokens": [enc.encode_to_numpy(joined, allowed_special={EOT}, disallowed_special=()).astype(dtype)]}


def _write_tokens(
    ds: datasets.Dataset,
    enc: tiktoken.Encoding,
    path: Path,
    dtype: type,
    num_proc: int | None = None,
    scratch: Path | None = None,
) -> dict[str, Any]:
    """Tokenise the documents (in `num_proc` processes if many), append EOT to each, and write one flat array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    packed = ds.map(
        _encode_batch,
        fn_kwargs={"enc": enc, "dtype": dtype},
        batched=True,
        remove_columns=ds.column_names,
        num_proc=_workers(len(ds), num_proc),
        cache_file_name=_arrow_file(scratch, f"{path.stem}-tokens"),
        desc=f"tokenizing {path.stem}",
    )
    # Each batch's row in order, flattened without a copy (a map over no documents returns no column).
    empty = pa.chunked_array([], pa.from_numpy_dtype(dtype))
    tokens = pc.list_flatten(packed.data.column("tokens")) if len(ds) else empty
    with open(path, "wb") as f:
        for chunk in tokens.chunks:
            chunk.to_numpy().tofile(f)
    info: dict[str, Any] = {"documents": len(ds), "tokens": len(tokens), "bytes": path.stat().st_size}
    if "logp" in ds.column_names:  # exact log-likelihood known: the entropy floor in nats per token
        info["neg_logp"] = float(-np.sum(ds.data.column("logp").to_numpy()))  # not ds["logp"], which reads by row
        info["entropy_floor"] = info["neg_logp"] / len(tokens)
    return info
