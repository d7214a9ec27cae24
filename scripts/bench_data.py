"""Data pipeline speed on the default config: story generation, BPE training, tokenisation, cached reuse.

    python scripts/bench_data.py            # 100,000 stories, BPE 4096, 2 processes -> logs/bench/data/<time>/
    make bench-data ARGS="--num-proc 1 --out docs/"     # -> docs/bench_data.json, the committed result

Builds the token cache in a fresh temporary folder (timed per stage by the pipeline itself, see meta.json's
build_seconds), then asks for it again twice: in this process, and from a new Python process (imports included),
as a second training run would. Also reports the corpus statistics and the entropy floor per token under the BPE
and the bytes tokenizer (and GPT-2's, where its files can be loaded).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from benchlib import add_out_argument

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from latentlm.config import ConfigError  # noqa: E402
from latentlm.data.pipeline import SyntheticStories, build_cache  # noqa: E402
from latentlm.data.tokenizer import BPE, KINDS, load_encoding  # noqa: E402

RELOAD = """
import json, sys, time
t = time.perf_counter()
from latentlm.data.pipeline import SyntheticStories, build_cache
from latentlm.data.tokenizer import BPE
data, tok, cache_dir = json.loads(sys.argv[1])
cache = build_cache(cache_dir, SyntheticStories(**data), BPE(**tok))
print(json.dumps({"seconds": time.perf_counter() - t, "path": str(cache.path)}))
"""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def corpus_stats(cache) -> dict:
    """Words (whitespace-split), distinct words (lower-cased [a-z']+) and tokens per story of the training split."""
    tokens = np.fromfile(cache.split_path("train"), dtype=cache.dtype)
    stories = cache.encoding().decode(tokens.tolist()).split("<|endoftext|>")[:-1]
    words = np.array([len(s.split()) for s in stories])
    distinct = set()
    for s in stories:
        distinct.update(re.findall(r"[a-z']+", s.lower()))
    return {
        "stories": len(stories),
        "words_per_story": {"min": int(words.min()), "mean": float(words.mean()), "max": int(words.max())},
        "words": int(words.sum()),
        "distinct_words": len(distinct),
        "characters_per_story": float(np.mean([len(s) for s in stories])),
    }


def per_tokenizer(cache, words: int) -> dict:
    train, val = cache.meta["splits"]["train"], cache.meta["splits"]["val"]
    stories = train["documents"]
    return {
        "vocab_size": cache.meta["vocab_size"],
        "tokens_per_story": (train["tokens"] - stories) / stories,  # without the <|endoftext|> after each
        "tokens_per_word": (train["tokens"] - stories) / words,
        "entropy_floor_train": train.get("entropy_floor"),
        "entropy_floor_val": val.get("entropy_floor"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-stories", type=int, default=100_000)
    parser.add_argument("--val-stories", type=int, default=2_000)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--train-documents", type=int, default=20_000)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--no-floors", action="store_true", help="skip the bytes/gpt2 caches and corpus stats")
    add_out_argument(parser, "data", "bench_data.json")
    args = parser.parse_args()

    data = SyntheticStories(num_stories=args.num_stories, val_stories=args.val_stories, seed=0)
    bpe = BPE(vocab_size=args.vocab_size, train_documents=args.train_documents)
    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        started = time.perf_counter()
        cache = build_cache(root, data, bpe, args.num_proc)
        total = time.perf_counter() - started
        stages = cache.meta["build_seconds"]

        started = time.perf_counter()
        again = build_cache(root, data, bpe, args.num_proc)
        cached_in_process = time.perf_counter() - started
        started = time.perf_counter()
        reload_args = json.dumps([asdict(data), asdict(bpe), str(root)])
        proc = subprocess.run([sys.executable, "-c", RELOAD, reload_args], cwd=REPO, capture_output=True, text=True,
                              check=True)
        cached_new_process = time.perf_counter() - started
        reload = json.loads(proc.stdout.strip().splitlines()[-1])
        assert again.path == cache.path and reload["path"] == str(cache.path), "the second call rebuilt the cache"
        load_after = os.getloadavg()

        tokens = sum(s["tokens"] for s in cache.meta["splits"].values())
        stories = sum(s["documents"] for s in cache.meta["splits"].values())
        result = {
            "date": datetime.date.today().isoformat(),
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_1m": [load_before[0], load_after[0]],
                        "python": platform.python_version()},
            "config": {"data": data.identity(), "tokenizer": bpe.config(), "num_proc": args.num_proc},
            "stories": stories,
            "tokens": tokens,
            "vocab_size": cache.meta["vocab_size"],
            "seconds": {
                "generate_stories": stages["documents"],
                "train_bpe": stages["tokenizer"],
                "tokenize": stages["tokenize"],
                "total_build": total,
                "cached_call": cached_in_process,
                "cached_new_process": cached_new_process,
                "cached_new_process_call": reload["seconds"],
            },
            "stories_per_s": {"generate": stories / stages["documents"], "total": stories / total},
            "tokens_per_s": {"tokenize": tokens / stages["tokenize"], "total": tokens / total},
        }
        if not args.no_floors:
            stats = corpus_stats(cache)
            result["corpus"] = stats
            result["tokenizers"] = {"bpe": per_tokenizer(cache, stats["words"])}
            for kind in ("bytes", "gpt2"):
                try:
                    load_encoding(kind)
                except ConfigError as err:
                    result["tokenizers"][kind] = {"unavailable": str(err).split(";")[0]}
                    continue
                other = build_cache(root, data, KINDS[kind](), args.num_proc)
                result["tokenizers"][kind] = per_tokenizer(other, stats["words"])
    finally:
        shutil.rmtree(root, ignore_errors=True)

    s = result["seconds"]
    rows = [
        ("generate stories", s["generate_stories"], f"{result['stories_per_s']['generate']:,.0f} stories/s"),
        ("train BPE", s["train_bpe"], f"{args.train_documents:,} documents, vocab {result['vocab_size']:,}"),
        ("tokenize", s["tokenize"], f"{result['tokens_per_s']['tokenize']:,.0f} tokens/s"),
        ("total (cold build)", s["total_build"],
         f"{result['stories_per_s']['total']:,.0f} stories/s, {result['tokens_per_s']['total']:,.0f} tokens/s"),
        ("cached, same process", s["cached_call"], "load_cache: fingerprint + meta.json + file sizes"),
        ("cached, new process", s["cached_new_process"], f"of which {s['cached_new_process_call']:.2f} s in "
                                                          "import + build_cache"),
    ]
    print(f"{stories:,} stories, {tokens:,} tokens, {args.num_proc} processes, {result['machine']['cores']} cores, "
          f"load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(f"{'stage':<24}{'seconds':>9}  rate")
    for name, secs, note in rows:
        print(f"{name:<24}{secs:>9.2f}  {note}")
    for kind, info in result.get("tokenizers", {}).items():
        if "unavailable" in info:
            print(f"{kind:<8} unavailable: {info['unavailable']}")
        else:
            print(f"{kind:<8} vocab {info['vocab_size']:>6,}  {info['tokens_per_story']:7.1f} tokens/story  "
                  f"{info['tokens_per_word']:.3f} tokens/word  floor {info['entropy_floor_val']:.4f} nats/token (val)")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_data.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
