"""LightningDataModule over the packed token files: fixed-length windows, shuffled for training."""

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from hydra.utils import get_class
from torch.utils.data import DataLoader, Dataset, DistributedSampler

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


class StepSampler(DistributedSampler):
    """A shuffled order that is a function of (seed, epoch) alone, resumable at any step, split over ranks.

    One step takes the next `batch_size x num_replicas` windows of the order (the global batch), and rank r takes
    every num_replicas-th of them from the r-th: `order[r::num_replicas]`, as torch's DistributedSampler splits.
    So W ranks with a per-device batch b see at each step exactly the windows one process with batch W x b sees,
    in the same order. The order is cut to whole global batches, so every rank has the same number of batches
    (the last, incomplete one is dropped, as drop_last does for one process) and no rank waits on the others.

    It is a DistributedSampler for Lightning's sake: Lightning leaves one in place, where it would wrap any other
    sampler in its DistributedSamplerWrapper, which shuffles our order again with a seed of its own (the ranks
    together would then no longer see the one-process batches, and `skip_batches` would skip other windows).

    Lightning calls `set_epoch` at the start of every epoch (also the epoch a run resumes in) but restarts a
    sampler at the epoch's first batch; `skip_batches` (global batches) makes a resumed run see exactly the batches
    the uninterrupted run would have seen next, also with another number of ranks of the same global batch.
    """

    def __init__(self, size: int, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, seed=seed, drop_last=True)
        self.size, self.batch_size = size, batch_size
        self.global_batch = batch_size * num_replicas
        self.skip_batches = 0

    def __len__(self) -> int:
        return self.size // self.global_batch * self.batch_size

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        start, self.skip_batches = self.skip_batches * self.global_batch, 0
        end = self.size // self.global_batch * self.global_batch
        return iter(order[start:end][self.rank :: self.num_replicas].tolist())


class SplitSampler(DistributedSampler):
    """Every validation window once over all ranks, in order and without padding: rank r takes windows r, r + W,
    r + 2W, ... torch's DistributedSampler, which Lightning would put here, pads the ranks to equal lengths by
    repeating windows, which val/loss would count twice. A rank may get one batch fewer than another, which
    validation allows: its sums are reduced over the ranks once, at the end. One rank: every window in order."""

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=False)

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))


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
        ranks = self.trainer.world_size if self.trainer else 1  # data.batch_size is per device
        if len(self.train_set) < self.batch_size * ranks:  # training drops the last, incomplete batch: none left
            on_ranks = f" on each of {ranks} devices" if ranks > 1 else ""
            raise ConfigError(
                f"data.batch_size={self.batch_size}{on_ranks} is more than the {len(self.train_set)} training "
                f"windows of data.seq_len={self.seq_len} tokens; give more data or a smaller data.batch_size"
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
        ranks, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        if shuffle:
            sampler = StepSampler(len(dataset), self.batch_size, self.shuffle_seed, num_replicas=ranks, rank=rank)
            if self.trainer is not None:  # resuming at global_step: go on from that batch of its epoch
                sampler.skip_batches = self.trainer.global_step % (len(dataset) // sampler.global_batch)
        else:
            sampler = SplitSampler(len(dataset), num_replicas=ranks, rank=rank)
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
