"""Tokenizers, all used through tiktoken: a BPE trained on the training stories, GPT-2's, and raw bytes.

The BPE is trained with HF tokenizers' byte-level BPE trainer and saved in tiktoken's rank format
(base64 token, rank), so every encode and decode in latentlm goes through one `tiktoken.Encoding`.
"""

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import tiktoken
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers
from tokenizers.pre_tokenizers import ByteLevel

from latentlm.config import ConfigError

EOT = "<|endoftext|>"
# GPT-2's pre-tokenisation regex; HF's ByteLevel(use_regex=True) splits with the same pattern.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
BPE_MIN_VOCAB = 258
# The files tiktoken's gpt2 encoding reads; its cache keeps each under the SHA-1 of its URL and checks its SHA-256.
GPT2_URLS = tuple(
    f"https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/{name}" for name in ("vocab.bpe", "encoder.json")
)


def tiktoken_cache_name(url: str) -> str:
    """The file name tiktoken gives `url` inside TIKTOKEN_CACHE_DIR."""
    return hashlib.sha1(url.encode()).hexdigest()


def unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: byte-level BPE tokens are strings of these stand-in characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]
    return dict(zip(chars, printable + extra, strict=True))


def train_bpe(texts: Iterable[str], vocab_size: int, path: Path, show_progress: bool = False) -> HFTokenizer:
    """Train a byte-level BPE of `vocab_size` tokens (including EOT, at least BPE_MIN_VOCAB: `BPE` checks it) and
    save it as a tiktoken rank file.

    Returns the HF tokenizer it trained, whose encodings the saved tiktoken file reproduces.
    """
    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1, initial_alphabet=ByteLevel.alphabet(), show_progress=show_progress
    )
    tokenizer.train_from_iterator(texts, trainer)
    # HF assigns ids in merge order after the 256-byte alphabet, which is exactly tiktoken's rank order.
    to_byte = unicode_to_byte()
    ranks = {bytes(to_byte[c] for c in token): i for token, i in tokenizer.get_vocab().items()}
    # tiktoken's rank format, one "base64(token) rank" a line (its own dump_tiktoken_bpe needs blobfile).
    lines = (
        f"{base64.b64encode(token).decode()} {rank}\n"
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])
    )
    path.write_text("".join(lines))
    return tokenizer


def run_tokenizer(run_dir: Path) -> dict[str, Any] | None:
    """The tokenizer a training run exported into its output dir (`TokenCache.export_tokenizer`), as one dict that
    a checkpoint can hold: tokenizer.json's kind and vocab_size, and "ranks", the trained BPE's rank file as text
    (None for the fixed vocabularies). None where the run exported no tokenizer (random tokens)."""
    info = Path(run_dir) / "tokenizer.json"
    if not info.is_file():
        return None
    ranks = Path(run_dir) / "tokenizer.tiktoken"
    return json.loads(info.read_text()) | {"ranks": ranks.read_text() if ranks.is_file() else None}


class Tokenizer:
    """A tokenizer config (configs/tokenizer/ names its class with `_target_`). Caches and checkpoints record it by
    `kind`, so a saved one loads whatever its config looked like: see `tokenizer_encoding`."""

    kind: ClassVar[str]

    def config(self) -> dict[str, Any]:
        """What changes the tokens: the cache's fingerprint and meta.json hold it."""
        return {"kind": self.kind, **asdict(self)}

    def train(self, documents: Any, path: Path) -> None:
        """Learn the vocabulary from the training documents (a Dataset with a `text` column) into the rank file
        `path`; a fixed vocabulary learns nothing."""

    @staticmethod
    def encoding(ranks: str | None = None) -> tiktoken.Encoding:
        raise NotImplementedError


@dataclass(frozen=True)
class BPE(Tokenizer):
    """A byte-level BPE of `vocab_size` tokens (with EOT), trained on the first `train_documents` training
    documents (None: all of them)."""

    kind: ClassVar[str] = "bpe"
    vocab_size: int = 4096
    train_documents: int | None = 20000

    def __post_init__(self):
        if not isinstance(self.vocab_size, int) or self.vocab_size < BPE_MIN_VOCAB:  # 256 bytes, one merge and EOT
            raise ConfigError(
                f"tokenizer.vocab_size={self.vocab_size} is too small for a byte-level BPE: the minimum is "
                f"{BPE_MIN_VOCAB} (256 byte tokens, one merge and <|endoftext|>); tokenizer=bytes is the 257-token "
                "byte vocabulary"
            )

    def train(self, documents: Any, path: Path) -> None:
        n = min(self.train_documents or len(documents), len(documents))
        train_bpe(documents.select(range(n))["text"], self.vocab_size, path)

    @staticmethod
    def encoding(ranks: str | None = None) -> tiktoken.Encoding:
        # The rank format train_bpe writes: one "base64(token) rank" a line.
        mergeable = {base64.b64decode(token): int(rank) for token, rank in map(str.split, ranks.splitlines())}
        return tiktoken.Encoding(
            "latentlm-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=mergeable, special_tokens={EOT: len(mergeable)}
        )


@dataclass(frozen=True)
class Bytes(Tokenizer):
    """Raw UTF-8 bytes: 256 tokens and EOT."""

    kind: ClassVar[str] = "bytes"

    @staticmethod
    def encoding(ranks: str | None = None) -> tiktoken.Encoding:
        mergeable = {bytes([b]): b for b in range(256)}
        return tiktoken.Encoding("bytes", pat_str=GPT2_PATTERN, mergeable_ranks=mergeable, special_tokens={EOT: 256})


@dataclass(frozen=True)
class GPT2(Tokenizer):
    """tiktoken's GPT-2 encoding (50257 tokens)."""

    kind: ClassVar[str] = "gpt2"

    @staticmethod
    def encoding(ranks: str | None = None) -> tiktoken.Encoding:
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as err:  # no network and no TIKTOKEN_CACHE_DIR copy
            cache = os.environ.get("TIKTOKEN_CACHE_DIR", "<unset>")
            raise ConfigError(
                f"tokenizer=gpt2 needs tiktoken's gpt2 files, which could not be loaded ({type(err).__name__}); "
                f"TIKTOKEN_CACHE_DIR={cache}. On a machine with network, run "
                "`python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\"` with TIKTOKEN_CACHE_DIR set, "
                "then copy that folder here and set TIKTOKEN_CACHE_DIR to it (or save "
                + " and ".join(f"{url} as {tiktoken_cache_name(url)}" for url in GPT2_URLS)
                + " in it)"
            ) from err


# A saved tokenizer (a cache's meta.json, a run's tokenizer.json, a checkpoint) names its class by kind.
KINDS = {cls.kind: cls for cls in (BPE, GPT2, Bytes)}


def load_encoding(kind: str, path: Path | None = None) -> tiktoken.Encoding:
    """The tiktoken Encoding for tokenizer `kind`; `path` is the rank file of a trained BPE."""
    return tokenizer_encoding({"kind": kind, "ranks": Path(path).read_text() if kind == "bpe" else None})


def tokenizer_encoding(tokenizer: dict[str, Any]) -> tiktoken.Encoding:
    """The tiktoken Encoding of a saved tokenizer dict (`run_tokenizer`): its kind, and a trained BPE's ranks."""
    kind = tokenizer["kind"]
    if kind not in KINDS:
        raise ValueError(f"tokenizer kind {kind!r} is unknown; choose one of: {', '.join(KINDS)}")
    return KINDS[kind].encoding(tokenizer.get("ranks"))
