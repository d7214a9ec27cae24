"""LightningDataModule over the packed token files: fixed-length windows, shuffled for training."""

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from hydra.utils import get_class
from torch.utils.data import DataLoader, Dataset, Sampler

from latentlm.config import ConfigError
from latentlm.data.pipeline import Source, SyntheticStories, TextFiles, TinyStories, TokenCache, build_cache


class PackedTokens(Dataset):
    """Non-overlapping windows of seq_len + 1 tokens from a flat token file: (inputs, next-token targets)."""

    def __init__(self, path: Path, seq_len: int, dtype: np.dtype):
        self.tokens = np.memmap(path, dtype=dtype, mode="r")
        self.seq_len = seq_len
        if len(self) == 0:
            raise ConfigError(
                f"data.seq_len={seq_len} needs {seq_len + 1} tokens a window, but the {Path(path).stem} split "
                f"holds {self.tokens.size}; give more data or a smaller data.seq_len"
            )

    def __len__(self) -> int:
        return (self.tokens.size - 1) // self.seq_len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.seq_len
        window = torch.from_numpy(self.tokens[start : start + self.seq_len + 1].astype(np.int64))
        return window[:-1], window[1:]


class StepSampler(Sampler[int]):
    """A shuffled order that is a function of (seed, epoch) alone, resumable at any step.

    Lightning calls `set_epoch` at the start of every epoch (also the epoch a run resumes in) but restarts a
    plain sampler at the epoch's first batch; `skip_batches` makes a resumed run see exactly the batches the
    uninterrupted run would have seen next.
    """

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        start, self.skip_batches = self.skip_batches * self.batch_size, 0
        return iter(order[start:].tolist())


class TokenDataModule(L.LightningDataModule):
    """Builds (or reuses) the token cache of a source of documents and a tokenizer, and serves train/val batches.

    A subclass names its source (`Source`, latentlm.data.pipeline); the keyword arguments beyond the loader's are
    that source's fields, so a data config is flat: data.files, data.num_stories, data.batch_size. `tokenizer` is
    a tokenizer config (configs/tokenizer/, its class named by `_target_`).
    """

    Source: ClassVar[type[Source]]

    def __init__(
        self,
        cache_dir: str,
        tokenizer: dict[str, Any],
        seq_len: int,
        batch_size: int,
        num_workers: int = 0,
        num_proc: int | None = None,
        shuffle_seed: int = 0,
        **source: Any,
    ):
        super().__init__()
        self.source = _from_settings(self.Source, source)
        self.tokenizer = _from_settings(get_class(tokenizer["_target_"]), tokenizer)
        self.cache_dir = Path(cache_dir)
        self.seq_len, self.batch_size, self.num_workers, self.num_proc = seq_len, batch_size, num_workers, num_proc
        self.shuffle_seed = shuffle_seed
        self.cache: TokenCache | None = None

    def prepare_data(self) -> None:
        if self.cache is None:
            self.cache = build_cache(self.cache_dir, self.source, self.tokenizer, self.num_proc)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        self.train_set = PackedTokens(self.cache.split_path("train"), self.seq_len, self.cache.dtype)
        self.val_set = PackedTokens(self.cache.split_path("val"), self.seq_len, self.cache.dtype)
        if len(self.train_set) < self.batch_size:  # training drops the last, incomplete batch: none would be left
            raise ConfigError(
                f"data.batch_size={self.batch_size} is more than the {len(self.train_set)} training windows of "
                f"data.seq_len={self.seq_len} tokens; give more data or a smaller data.batch_size"
            )

    @property
    def vocab_size(self) -> int:
        return self.cache.meta["vocab_size"]

    def export_tokenizer(self, run_dir: Path) -> None:
        self.cache.export_tokenizer(run_dir)

    @property
    def entropy_floor(self) -> float | None:
        """Nats per token no model can beat on the validation split (known for synthetic stories only)."""
        return self.cache.meta["splits"]["val"].get("entropy_floor")

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        sampler = None
        if shuffle:
            sampler = StepSampler(len(dataset), self.batch_size, self.shuffle_seed)
            if self.trainer is not None:  # resuming at global_step: go on from that batch of its epoch
                sampler.skip_batches = self.trainer.global_step % (len(dataset) // self.batch_size)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


def _from_settings(cls: type, settings: dict[str, Any]) -> Any:
    """The dataclass `cls` made from the settings it has: an experiment sizes the data and the tokenizer whichever
    option they are (experiment=smoke's data.num_stories also reaches data=text, its tokenizer.vocab_size also
    tokenizer=bytes), and each takes its own."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in settings.items() if k in names})


class SyntheticDataModule(TokenDataModule):
    """Seeded stories with an exact entropy floor: data=synthetic."""

    Source = SyntheticStories


class TextDataModule(TokenDataModule):
    """Your .txt and .jsonl files: data=text."""

    Source = TextFiles


class TinyStoriesDataModule(TokenDataModule):
    """roneneldan/TinyStories: data=tinystories."""

    Source = TinyStories


class RandomTokens(L.LightningDataModule):
    """Uniformly random tokens, for speed benchmarks: no data to build, and a known floor of ln(vocab_size)."""

    def __init__(self, vocab_size: int, seq_len: int, batch_size: int, num_batches: int = 1000, seed: int = 0,
                 num_workers: int = 0):
        super().__init__()
        self.vocab_size, self.seq_len, self.batch_size = vocab_size, seq_len, batch_size
        self.num_batches, self.seed, self.num_workers = num_batches, seed, num_workers

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        self.tokens = torch.randint(0, self.vocab_size, (self.num_batches * self.batch_size, self.seq_len + 1),
                                    generator=generator)

    @property
    def entropy_floor(self) -> float:
        return float(np.log(self.vocab_size))

    def export_tokenizer(self, run_dir: Path) -> None:
        """Random tokens decode to nothing: no tokenizer to export."""

    def _loader(self, shuffle: bool) -> DataLoader:
        pairs = torch.utils.data.TensorDataset(self.tokens[:, :-1], self.tokens[:, 1:])
        return DataLoader(pairs, batch_size=self.batch_size, shuffle=shuffle, drop_last=True,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader(shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(shuffle=False)
