"""Grade model-written stories against the story generator, in place of the TinyStories paper's GPT-4 grading.

Two checks. Validity: does the generator's grammar derive the text, whole or as the start of some story (a
sample cut off by a length limit)? Consistency: do the entities agree with their introductions? That is
judged by plain rules over the text, so an ungrammatical sample can still be consistent or not:

- introduction: a character's name first appears as "named Lily" (family words like "Mom" need none);
- pronoun: a sentence opening with He/She/They/His/Her/Their fits the first name, outside quotes, of the last
  sentence that named someone ("Lily and Tom ..." calls for They);
- addressee: a name spoken to inside quotes ("Tom, ..." or "..., Tom!") was mentioned before and is not the
  speaker ('"..." said Tom.');
- colour: a toy keeps one colour ("a big red ball" ... "the red ball");
- count: "all three apples" and "both apples" repeat the first "three apples"; "two apples left" is fewer.

Usage: python -m latentlm.judge samples.txt [--separator '<|endoftext|>']
       python -m latentlm.judge <run>/checkpoints/best.ckpt [--samples 32] [--prompt 'Once upon a time']

On a checkpoint it first writes samples (from the start token, or after --prompt; the judged text includes the
prompt). `JudgeSamples` does the same on a few samples at the end of every validation, as val/judge_* metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentlm.data.stories import GRAMMAR, NUMBER_WORDS, parse_story

if TYPE_CHECKING:
    import tiktoken

    from latentlm.model import GPT

log = logging.getLogger(__name__)

RULES = ("introduction", "pronoun", "addressee", "colour", "count")

_GENDER = {name: gender for names in (GRAMMAR.names_f, GRAMMAR.names_m, GRAMMAR.names_n, GRAMMAR.family)
           for name, gender in zip(names.options, names.values, strict=True)}
_FAMILY = frozenset(GRAMMAR.family.options)
_PRONOUN_FITS = {"He": "M", "His": "M", "She": "F", "Her": "F", "They": "NP", "Their": "NP"}  # P: two people

_WORD = re.compile(r"\b[A-Z][a-z]+\b")
_QUOTE = re.compile(r'"([^"]*)("|$)')
_SPEAKER = re.compile(r"\s*[a-z]+ ([A-Z][a-z]+)")  # after a closing quote: ' said Lily'
_VOCATIVE = re.compile(r"(?:^|, )([A-Z][a-z]+)(?=[,.!?])")
_CUT_WORD = re.compile(r"[A-Za-z']+$")  # a sample cut off mid-word may end in "Ada" of "Adam": not judged


def _either(words: Iterable[str]) -> str:
    """A regex alternation, longest first so that "teddy bear" wins over "bear"."""
    return "|".join(sorted(map(re.escape, set(words)), key=len, reverse=True))


_COLOURED_TOY = re.compile(rf"\b({_either(GRAMMAR.descs.values)}) ({_either(GRAMMAR.toys.options)})\b")
_PLURAL = {  # counted nouns, singular or plural -> plural
    **{p: p for c in (GRAMMAR.foods, GRAMMAR.materials, GRAMMAR.gifts) for p in c.options},
    **dict(zip(GRAMMAR.foods.values, GRAMMAR.foods.options, strict=True)),
}
_NUMBER = {w: i for i, w in enumerate(NUMBER_WORDS)}
_COUNTED = re.compile(rf"\b(all )?({_either(NUMBER_WORDS[2:])}) ({_either(_PLURAL.values())})\b")
_BOTH = re.compile(rf"\bboth ({_either(_PLURAL.values())})\b")
_LEFT = re.compile(rf"\b({_either(NUMBER_WORDS[1:])}) ({_either(_PLURAL)}) left\b")


def _sentences(text: str) -> list[str]:
    """Split at . ! ? outside quotes, so '"Oh no!" cried Lily.' stays one sentence."""
    out, start, inside = [], 0, False
    for i, ch in enumerate(text):
        if ch == '"':
            inside = not inside
        elif ch in ".!?" and not inside and (i + 1 == len(text) or text[i + 1].isspace()):
            out.append(text[start:i + 1].strip())
            start = i + 1
    if text[start:].strip():
        out.append(text[start:].strip())
    return out


def _discourse_issues(text: str) -> set[str]:
    issues = set()
    anchor = None  # gender of whom a sentence-initial pronoun must mean, "P" for two people
    mentioned: set[str] = set()
    for sentence in _sentences(text):
        outside = _QUOTE.sub(" ", sentence)
        names = [m for m in _WORD.finditer(outside) if m.group() in _GENDER]
        first_word = sentence.split(maxsplit=1)[0]
        if first_word in _PRONOUN_FITS:
            if anchor is not None and anchor not in _PRONOUN_FITS[first_word]:
                issues.add("pronoun")
        elif names:
            second = re.match(r" and ([A-Z][a-z]+)\b", outside[names[0].end():])
            anchor = "P" if second and second.group(1) in _GENDER else _GENDER[names[0].group()]
        for quote in _QUOTE.finditer(sentence):
            speaker = _SPEAKER.match(sentence, quote.end())
            for name in _VOCATIVE.findall(quote.group(1)):
                if name in _GENDER and (name not in mentioned or speaker and name == speaker.group(1)):
                    issues.add("addressee")
        mentioned.update(m.group() for m in names)
    return issues


def _count_issue(text: str) -> bool:
    events = [(m.start(), "all" if m.group(1) else "intro", m.group(3), _NUMBER[m.group(2)])
              for m in _COUNTED.finditer(text)]
    events += [(m.start(), "all", m.group(1), 2) for m in _BOTH.finditer(text)]
    events += [(m.start(), "left", _PLURAL[m.group(2)], _NUMBER[m.group(1)]) for m in _LEFT.finditer(text)]
    first: dict[str, int] = {}
    for _, kind, noun, n in sorted(events):
        if kind == "intro":
            first.setdefault(noun, n)
        elif noun in first and (n != first[noun] if kind == "all" else n >= first[noun]):
            return True
    return False


def entity_issues(text: str) -> set[str]:
    """The consistency rules (see the module docstring) that `text` breaks; empty if it breaks none."""
    text = _CUT_WORD.sub("", text.strip())
    issues = _discourse_issues(text)
    introduced: set[str] = set()
    for m in _WORD.finditer(text):
        name = m.group()
        if name in _GENDER and name not in _FAMILY and name not in introduced:
            introduced.add(name)
            if not text.endswith("named ", 0, m.start()):
                issues.add("introduction")
    colours: dict[str, str] = {}
    for m in _COLOURED_TOY.finditer(text):
        if colours.setdefault(m.group(2), m.group(1)) != m.group(1):
            issues.add("colour")
    if _count_issue(text):
        issues.add("count")
    return issues


def judge_texts(texts: list[str]) -> dict:
    """Shares of `texts` the grammar derives (whole, or as a story's start) and with consistent entities."""
    n = len(texts)
    statuses = [parse_story(t.strip()).status for t in texts]
    broken = [entity_issues(t) for t in texts]

    def share(count: int) -> float:
        return count / n if n else 0.0

    return {
        "n": n,
        "valid_share": share(statuses.count("complete")),
        "valid_prefix_share": share(statuses.count("complete") + statuses.count("prefix")),
        "consistent_share": share(sum(not b for b in broken)),
        "mean_words": share(sum(len(t.split()) for t in texts)),
        "rule_failures": {rule: sum(rule in b for b in broken) for rule in RULES},
    }


def judge_file(path: str | Path, separator: str = "<|endoftext|>") -> dict:
    """`judge_texts` over the non-empty samples of a text file, separated by `separator`."""
    samples = [s.strip() for s in Path(path).read_text(encoding="utf-8").split(separator)]
    return judge_texts([s for s in samples if s])


def format_table(result: dict) -> str:
    shares = (("valid", "valid_share"), ("valid prefix", "valid_prefix_share"),
              ("consistent", "consistent_share"))
    rows = [("samples", str(result["n"])), ("mean words", f"{result['mean_words']:.1f}")]
    rows += [(label, f"{100 * result[key]:.1f}%") for label, key in shares]
    rows += [(f"  fails {rule}", str(count)) for rule, count in result["rule_failures"].items()]
    return "\n".join(f"{label:<22}{value:>8}" for label, value in rows)


def sample_stories(model: GPT, enc: tiktoken.Encoding, n: int, prompt: str = "", max_new_tokens: int = 300,
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   seed: int | None = 0) -> list[str]:
    """n samples of `model`, each the prompt and its continuation up to <|endoftext|> (left out) or the length cap.

    Every prompt starts with <|endoftext|>, which precedes each story in the training stream, so an empty prompt
    asks for a whole story. max_new_tokens is cut to what the context holds; generate rejects a prompt it cannot hold.
    """
    from latentlm.generate import generate

    ids = [enc.eot_token, *enc.encode_ordinary(prompt)]
    max_new_tokens = min(max_new_tokens, model.block_size - len(ids))
    outs = generate(model, [ids] * n, max_new_tokens, temperature, top_k, top_p, eot=enc.eot_token, seed=seed)
    return [prompt + enc.decode([t for t in out if t != enc.eot_token]) for out in outs]


def _judge_samples_class() -> type:
    """JudgeSamples, defined on first use: importing Lightning costs seconds the text-file CLI does not need."""
    from lightning.pytorch.callbacks import Callback

    class JudgeSamples(Callback):
        """At the end of each validation (not the sanity check), judge a few samples of the model being trained.

        Logs val/judge_valid_prefix and val/judge_consistent (shares of the samples, see `judge_texts`). Sampling has
        its own seeded generator, so it neither draws from nor disturbs the training RNG. Skipped when the datamodule
        has no tokenizer (e.g. RandomTokens).
        """

        def __init__(self, num_samples: int = 4, max_new_tokens: int = 150, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None, prompt: str = "", seed: int = 0):
            self.num_samples, self.max_new_tokens, self.prompt, self.seed = num_samples, max_new_tokens, prompt, seed
            self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
            self.last_samples: list[str] = []
            self._encoding: tiktoken.Encoding | None = None

        def _tokenizer(self, trainer) -> tiktoken.Encoding | None:
            if self._encoding is None:
                cache = getattr(trainer.datamodule, "cache", None)
                if cache is None:
                    return None
                self._encoding = cache.encoding()
            return self._encoding

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            enc = self._tokenizer(trainer)
            if enc is None:
                return
            was_training = pl_module.net.training
            pl_module.net.eval()
            try:
                self.last_samples = sample_stories(pl_module.net, enc, self.num_samples, self.prompt,
                                                   self.max_new_tokens, self.temperature, self.top_k, self.top_p,
                                                   self.seed)
            finally:
                pl_module.net.train(was_training)
            result = judge_texts(self.last_samples)
            pl_module.log("val/judge_valid_prefix", result["valid_prefix_share"])
            pl_module.log("val/judge_consistent", result["consistent_share"])

    JudgeSamples.__qualname__ = "JudgeSamples"
    JudgeSamples.__module__ = __name__
    return JudgeSamples


def __getattr__(name: str) -> Any:
    """`latentlm.judge.JudgeSamples`: the Lightning callback (see `_judge_samples_class`), built when first asked."""
    if name == "JudgeSamples":
        cls = _judge_samples_class()
        globals()["JudgeSamples"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m latentlm.judge", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="text file of samples, or a .ckpt written by latentlm.train to sample from")
    parser.add_argument("--separator", default="<|endoftext|>", help="what separates samples in the file")
    sampling = parser.add_argument_group("sampling from a checkpoint")
    sampling.add_argument("--samples", type=int, default=32, help="how many samples to write and judge")
    sampling.add_argument("--prompt", default="", help="text every sample starts with (default: none, a whole "
                          "story from the start token); e.g. 'Once upon a time'")
    sampling.add_argument("--max-new-tokens", type=int, default=300, help="cut to what the context holds")
    sampling.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    sampling.add_argument("--top-k", type=int, default=None)
    sampling.add_argument("--top-p", type=float, default=None)
    sampling.add_argument("--seed", type=int, default=0)
    sampling.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    sampling.add_argument("--save", default=None, help="also write the samples to this file, separated by "
                          "--separator, so they can be judged again or read")
    args = parser.parse_args(argv)
    if args.file.endswith(".ckpt"):
        from latentlm.config import ConfigError, fail
        from latentlm.generate import load_checkpoint

        try:
            model, enc = load_checkpoint(args.file, args.device)
            samples = sample_stories(model, enc, args.samples, args.prompt, args.max_new_tokens, args.temperature,
                                     args.top_k, args.top_p, args.seed)
        except (ConfigError, ValueError) as err:
            fail(err)
        if args.save:
            Path(args.save).write_text("".join(s + args.separator + "\n" for s in samples), encoding="utf-8")
        result = judge_texts(samples)
    else:
        result = judge_file(args.file, args.separator)
    print(format_table(result))
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
