"""Seeded TinyStories-style stories with an exact log-likelihood, so a benchmark knows its loss floor.

A story is written by one small program (plot.py) whose random decisions come from word lists (grammar.py,
words.txt). The engine (engine.py) runs the program three ways: a sampler writes a story, a parser reads the
decisions back from a text (a text has at most one derivation, so the sum of their log-probabilities is its
true log-likelihood), and an enumerator lists every story of a small grammar. This module is the API.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from latentlm.data.stories import plot
from latentlm.data.stories.engine import Choice, EndOfText, Enumerator, Mismatch, Parser, Sampler
from latentlm.data.stories.grammar import GRAMMAR, NUMBER_WORDS, REDUCED_GRAMMAR, Grammar

__all__ = ["GENERATOR_VERSION", "GRAMMAR", "NUMBER_WORDS", "REDUCED_GRAMMAR", "Choice", "Grammar", "Parse", "Story",
           "entropy_floor", "enumerate_stories", "generate_stories", "generate_story", "parse_story",
           "story_logprob"]

GENERATOR_VERSION = "stories-1"  # bump when a text or a probability changes: it keys the data cache


@dataclass(frozen=True)
class Story:
    text: str
    logp: float  # natural-log probability of exactly this text under the generator


@dataclass(frozen=True)
class Parse:
    """How far the grammar derives a text: all of it, a prefix of some story, or not at all."""

    status: Literal["complete", "prefix", "invalid"]
    logp: float  # log-probability of the choices read (the story's logp when complete)


def _seed(seed: int, index: int) -> int:
    """One integer per (seed, index) pair, the same in every process (no str hashing)."""
    if seed < 0 or not 0 <= index < 2**64:
        raise ValueError("seed must be >= 0 and 0 <= index < 2**64")
    return (seed << 64) | index


def generate_story(seed: int, index: int, *, grammar: Grammar = GRAMMAR) -> Story:
    """Story number `index` of the stream `seed`, without generating any other."""
    sampler = Sampler(random.Random(_seed(seed, index)).random)
    plot.story(sampler, grammar)
    return Story("".join(sampler.parts), sampler.logp)


def generate_stories(seed: int, start: int, count: int, *, grammar: Grammar = GRAMMAR) -> list[Story]:
    """Stories `start` .. `start + count - 1` of the stream `seed` (each as `generate_story` gives it)."""
    return [generate_story(seed, i, grammar=grammar) for i in range(start, start + count)]


def parse_story(text: str, *, grammar: Grammar = GRAMMAR) -> Parse:
    """Re-derive the choices behind `text`; a text that ends early but agrees so far is a "prefix"."""
    parser = Parser(text)
    try:
        plot.story(parser, grammar)
    except Mismatch:
        return Parse("invalid", parser.logp)
    except EndOfText:
        return Parse("prefix", parser.logp)
    return Parse("complete" if parser.pos == len(text) else "invalid", parser.logp)


def story_logprob(text: str, *, grammar: Grammar = GRAMMAR) -> float | None:
    """Exact natural-log probability of `text`, or None if the grammar cannot derive it."""
    parsed = parse_story(text, grammar=grammar)
    return parsed.logp if parsed.status == "complete" else None


def enumerate_stories(grammar: Grammar = REDUCED_GRAMMAR) -> Iterator[Story]:
    """Every story the grammar can produce, once each (depth-first); feasible for the reduced grammar only."""
    path: list[int] = []
    while True:
        walker = Enumerator(path)
        plot.story(walker, grammar)
        yield Story("".join(walker.parts), walker.logp)
        while path and path[-1] + 1 >= walker.sizes[len(path) - 1]:
            path.pop()
        if not path:
            return
        path[-1] += 1


def entropy_floor(stories: Iterable[Story], count_tokens: Callable[[str], int]) -> float:
    """Nats per token no model can beat on these stories: their total -logp over their total token count."""
    nats = tokens = 0.0
    for story in stories:
        nats -= story.logp
        tokens += count_tokens(story.text)
    if not tokens:
        raise ValueError("no tokens to average over")
    return nats / tokens
