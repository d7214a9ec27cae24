"""Documents -> `datasets.Dataset` -> batched tokenisation -> packed token files, cached by fingerprint.

The cache folder for a (data, tokenizer) config holds train.bin and val.bin (uint16/uint32 tokens, each
document followed by <|endoftext|>), the tokenizer's rank file when one is trained, and meta.json. It is
built in a temporary folder and renamed into place in one step, and meta.json records the fingerprint and
the file sizes, so an interrupted build never leaves a folder that later loads as valid.
"""

import glob
import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import tiktoken

from latentlm.data.tokenizer import load_encoding, train_bpe

log = logging.getLogger(__name__)
CACHE_FORMAT = 1
SOURCES = ("synthetic", "text")
VAL_INDEX_OFFSET = 1_000_000_000  # synthetic validation stories come from a disjoint index range


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
        """Copy the tokenizer into a run dir, so its checkpoints decode without the data cache."""
        if (self.path / "tokenizer.tiktoken").exists():
            shutil.copyfile(self.path / "tokenizer.tiktoken", run_dir / "tokenizer.tiktoken")
        info = {"kind": self.meta["tokenizer"]["kind"], "vocab_size": self.meta["vocab_size"]}
        (run_dir / "tokenizer.json").write_text(json.dumps(info))


def fingerprint(data_cfg: dict[str, Any], tokenizer_cfg: dict[str, Any]) -> str:
    """Hash of everything that changes the cached tokens (not batch size, workers or paths of the cache)."""
    relevant = {k: v for k, v in data_cfg.items() if k in _SOURCE_KEYS[data_cfg["source"]]}
    if data_cfg["source"] == "synthetic":
        from latentlm.data import stories

        relevant["generator_version"] = stories.GENERATOR_VERSION
    if data_cfg["source"] == "text":  # the files' identity: path, size and modification time
        relevant["file_stats"] = [(p, os.path.getsize(p), os.path.getmtime(p)) for p in text_files(data_cfg)]
    blob = json.dumps({"format": CACHE_FORMAT, "data": relevant, "tokenizer": tokenizer_cfg}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_SOURCE_KEYS = {
    "synthetic": {"source", "num_stories", "val_stories", "seed"},
    "text": {"source", "files", "separator", "val_fraction"},
}


def text_files(data_cfg: dict[str, Any]) -> list[str]:
    """The sorted files matched by data.files (paths or globs); an error names any pattern matching nothing."""
    patterns = [data_cfg["files"]] if isinstance(data_cfg["files"], str) else list(data_cfg["files"] or [])
    if not patterns:
        raise FileNotFoundError(
            "data.files is empty; give .txt/.jsonl paths or globs, e.g. data.files='docs/*.txt'"
        )
    found = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise FileNotFoundError(f"data.files={pattern} matches no file")
        found += matches
    return found


def load_cache(cache_dir: Path, data_cfg: dict[str, Any], tokenizer_cfg: dict[str, Any]) -> TokenCache | None:
    """The cache for this config if it exists and is complete, else None."""
    path = Path(cache_dir) / f"{data_cfg['source']}-{fingerprint(data_cfg, tokenizer_cfg)}"
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
    cache_dir: Path, data_cfg: dict[str, Any], tokenizer_cfg: dict[str, Any], num_proc: int | None = None
) -> TokenCache:
    """Return the cache for this config, building it first if needed."""
    cached = load_cache(cache_dir, data_cfg, tokenizer_cfg)
    if cached is not None:
        return cached
    fp = fingerprint(data_cfg, tokenizer_cfg)
    final = Path(cache_dir) / f"{data_cfg['source']}-{fp}"
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        log.info("building token cache %s", final)
        splits = documents(data_cfg, num_proc)
        kind = tokenizer_cfg["kind"]
        if kind == "bpe":
            n_train = min(tokenizer_cfg.get("train_documents") or len(splits["train"]), len(splits["train"]))
            train_bpe(
                splits["train"].select(range(n_train))["text"],
                tokenizer_cfg["vocab_size"],
                tmp / "tokenizer.tiktoken",
            )
        enc = load_encoding(kind, tmp / "tokenizer.tiktoken")
        dtype = np.uint16 if enc.n_vocab <= 2**16 else np.uint32
        meta: dict[str, Any] = {
            "fingerprint": fp,
            "format": CACHE_FORMAT,
            "data": data_cfg,
            "tokenizer": tokenizer_cfg,
            "vocab_size": enc.n_vocab,
            "eot_id": enc.eot_token,
            "dtype": np.dtype(dtype).name,
            "splits": {},
        }
        for split, ds in splits.items():
            meta["splits"][split] = _write_tokens(ds, enc, tmp / f"{split}.bin", dtype)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if final.exists() and load_cache(cache_dir, data_cfg, tokenizer_cfg) is None:
            shutil.rmtree(final)  # a damaged cache (e.g. a truncated file): replace it
        try:
            os.rename(tmp, final)  # atomic: the folder appears complete or not at all
        except OSError:  # another process finished the same cache first
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_cache(cache_dir, data_cfg, tokenizer_cfg)


def documents(data_cfg: dict[str, Any], num_proc: int | None = None) -> dict[str, datasets.Dataset]:
    """Train and val documents as Datasets with a `text` column (synthetic ones also carry `logp`)."""
    source = data_cfg["source"]
    if source == "synthetic":
        from latentlm.data import stories

        def generate(batch: dict[str, list[int]]) -> dict[str, list]:
            made = [stories.generate_story(data_cfg["seed"], i) for i in batch["index"]]
            return {"text": [s.text for s in made], "logp": [s.logp for s in made]}

        ranges = {
            "train": range(data_cfg["num_stories"]),
            "val": range(VAL_INDEX_OFFSET, VAL_INDEX_OFFSET + data_cfg["val_stories"]),
        }
        return {
            split: datasets.Dataset.from_dict({"index": list(r)}).map(
                generate,
                batched=True,
                batch_size=1000,
                remove_columns=["index"],
                keep_in_memory=True,
                num_proc=num_proc if num_proc and len(r) >= 20_000 else None,
                desc=f"generating {split} stories",
            )
            for split, r in ranges.items()
        }
    if source == "text":
        texts = []
        for path in text_files(data_cfg):
            texts += _read_documents(path, data_cfg["separator"])
        n_val = max(1, round(len(texts) * data_cfg["val_fraction"]))
        if len(texts) < 2:
            raise ValueError(
                f"data.files holds {len(texts)} non-empty document(s); need at least 2 for train and val"
            )
        return {
            "train": datasets.Dataset.from_dict({"text": texts[:-n_val]}),
            "val": datasets.Dataset.from_dict({"text": texts[-n_val:]}),
        }
    raise ValueError(f"data.source={source!r} is unknown; choose one of: {', '.join(SOURCES)}")


def _read_documents(path: str, separator: str) -> list[str]:
    """Non-empty documents of a .jsonl file (one {"text": ...} a line) or a text file split by `separator`."""
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            docs = [json.loads(line)["text"] for line in f if line.strip()]
        else:
            docs = f.read().split(separator)
    return [d.strip() for d in docs if d.strip()]


def _write_tokens(ds: datasets.Dataset, enc: tiktoken.Encoding, path: Path, dtype: type) -> dict[str, Any]:
    """Tokenise the documents in batches, append EOT to each, and write them as one flat array."""
    eot = enc.eot_token

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        ids = enc.encode_ordinary_batch(batch["text"], num_threads=os.cpu_count() or 1)
        return {"ids": [x + [eot] for x in ids]}

    tokenized = ds.map(
        tokenize,
        batched=True,
        batch_size=2000,
        keep_in_memory=True,
        remove_columns=[c for c in ds.column_names if c != "logp"],
        desc=f"tokenizing {path.stem}",
    )
    column = tokenized.data.column("ids")
    tokens = np.concatenate([chunk.flatten().to_numpy() for chunk in column.chunks]).astype(dtype)
    tokens.tofile(path)
    info: dict[str, Any] = {"documents": len(ds), "tokens": int(tokens.size), "bytes": tokens.nbytes}
    if "logp" in tokenized.column_names:  # exact log-likelihood known: the entropy floor in nats per token
        info["neg_logp"] = float(-np.sum(tokenized["logp"]))
        info["entropy_floor"] = info["neg_logp"] / tokens.size
    return info
