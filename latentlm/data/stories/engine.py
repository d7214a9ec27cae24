"""The derivation engine: decisions (`Choice`) and the three ways to run a story program over them.

A story program (plot.py) makes every decision through a `Deriver`. Every choice writes its chosen option at
once, and the options of any one decision are prefix-free as word sequences (checked when a `Choice` is
built). So the same program run by a `Parser` instead of a `Sampler` reads the choices back from the text, left
to right with one token of lookahead: no two choice sequences give the same text, and the sum of the choices'
log-probabilities is the true log-likelihood of the text. An `Enumerator` walks every choice sequence in turn.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from itertools import accumulate
from typing import Protocol

_TOKEN = re.compile(r"[A-Za-z]+|.", re.DOTALL)  # a maximal run of letters, or any one other character


class Mismatch(Exception):
    """The text cannot continue the derivation here."""


class EndOfText(Exception):
    """The text ended while it still agreed with the derivation: it is a prefix of some story."""


def _ends_word(option: str, text: str, end: int) -> bool:
    """An option ending in a letter matches only where the text's word ends too ("Ann" is not in "Anna")."""
    return end == len(text) or not (option[-1].isalpha() and text[end].isalpha())


def _no_match(options: Sequence[str], text: str, pos: int) -> Exception:
    rest = text[pos:]
    return EndOfText() if any(o.startswith(rest) for o in options) else Mismatch()


def _check_prefix_free(options: Sequence[str]) -> None:
    """Refuse options one of which may be read as the start of another: that would make texts ambiguous."""
    ordered = sorted(options)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:  # every option starting with `a` sorts right after it
            if not b.startswith(a):
                break
            if a == b or not (a[-1].isalpha() and b[len(a)].isalpha()):
                raise ValueError(f"ambiguous options {a!r} and {b!r}")


class Choice:
    """One decision: option texts (written when chosen), a payload for each, and their probabilities."""

    __slots__ = ("options", "values", "weights", "logps", "cum", "n", "index", "_by_token")

    def __init__(self, options: Iterable[str], values: Iterable | None = None,
                 weights: Sequence[float] | None = None) -> None:
        self.options = tuple(options)
        self.values = tuple(values) if values is not None else self.options
        self.n = len(self.options)
        if not self.n or len(self.values) != self.n or (weights is not None and len(weights) != self.n):
            raise ValueError("a choice needs options, and one value and weight for each")
        _check_prefix_free(self.options)
        self.weights = tuple(weights) if weights is not None else None
        if weights is None:  # uniform: drawn without a search
            self.logps, self.cum = (-math.log(self.n),) * self.n, None
        else:
            dist = Weights(weights)
            self.logps, self.cum = dist.logps, dist.cum
        self.index = {o: i for i, o in enumerate(self.options)}
        by_token: dict[str, list[int]] = {}
        for i, o in enumerate(self.options):
            by_token.setdefault(_TOKEN.match(o).group(), []).append(i)
        self._by_token = {k: tuple(v) for k, v in by_token.items()}

    def head(self, k: int) -> Choice:
        """The first k options, probabilities renormalised: how the reduced grammar shrinks a word list."""
        return Choice(self.options[:k], self.values[:k], self.weights[:k] if self.weights else None)

    def match(self, text: str, pos: int) -> int:
        """Index of the option the text continues with at `pos` (at most one can match)."""
        m = _TOKEN.match(text, pos)
        if m is not None:
            for i in self._by_token.get(m.group(), ()):
                o = self.options[i]
                if text.startswith(o, pos) and _ends_word(o, text, pos + len(o)):
                    return i
        raise _no_match(self.options, text, pos)


class Weights:
    """Probabilities for a decision whose option texts are only known while a story is written."""

    __slots__ = ("logps", "cum")

    def __init__(self, weights: Sequence[float]) -> None:
        total = math.fsum(weights)
        self.logps = tuple(math.log(w / total) for w in weights)
        self.cum = tuple(accumulate(w / total for w in weights))[:-1]


@cache
def uniform(n: int) -> Weights:
    """Equal weights over n option texts (one object per n, shared by every story)."""
    return Weights((1.0,) * n)


class Deriver(Protocol):
    """What the story program needs: a sampler writes its choices, a parser reads them back."""

    def say(self, text: str) -> None: ...
    def pick(self, choice: Choice) -> int: ...
    def pick_other(self, choice: Choice, taken: Sequence[int]) -> int: ...
    def pick_text(self, options: Sequence[str], weights: Weights) -> int: ...


class Sampler:
    """Makes every choice at random (float draws: each probability is exact up to 2**-53) and writes it."""

    def __init__(self, draw: Callable[[], float] | None) -> None:
        self._random = draw
        self.parts: list[str] = []
        self.say = self.parts.append
        self.logp = 0.0

    def _draw(self, n: int, cum: tuple[float, ...] | None) -> int:
        return int(self._random() * n) if cum is None else bisect_right(cum, self._random())

    def pick(self, choice: Choice) -> int:
        i = self._draw(choice.n, choice.cum)
        self.parts.append(choice.options[i])
        self.logp += choice.logps[i]
        return i

    def pick_other(self, choice: Choice, taken: Sequence[int]) -> int:
        """Uniform over the options not yet taken (a second character never gets the first one's name)."""
        i = self._draw(choice.n - len(taken), None)
        for t in sorted(taken):
            if t <= i:
                i += 1
        self.parts.append(choice.options[i])
        self.logp -= math.log(choice.n - len(taken))
        return i

    def pick_text(self, options: Sequence[str], weights: Weights) -> int:
        i = self._draw(len(options), weights.cum)
        self.parts.append(options[i])
        self.logp += weights.logps[i]
        return i


class Enumerator(Sampler):
    """Follows a fixed path of choice indices (then index 0), recording how many options each decision had."""

    def __init__(self, path: list[int]) -> None:
        super().__init__(None)
        self._path = path
        self.sizes: list[int] = []

    def _draw(self, n: int, cum: tuple[float, ...] | None) -> int:
        k = len(self.sizes)
        self.sizes.append(n)
        if k == len(self._path):
            self._path.append(0)
        return self._path[k]


class Parser:
    """Reads the choices back from a text: the inverse of `Sampler`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.logp = 0.0

    def say(self, s: str) -> None:
        if self.text.startswith(s, self.pos):
            self.pos += len(s)
        else:
            raise _no_match((s,), self.text, self.pos)

    def pick(self, choice: Choice) -> int:
        i = choice.match(self.text, self.pos)
        self.pos += len(choice.options[i])
        self.logp += choice.logps[i]
        return i

    def pick_other(self, choice: Choice, taken: Sequence[int]) -> int:
        i = choice.match(self.text, self.pos)
        if i in taken:
            raise Mismatch()
        self.pos += len(choice.options[i])
        self.logp -= math.log(choice.n - len(taken))
        return i

    def pick_text(self, options: Sequence[str], weights: Weights) -> int:
        text, pos = self.text, self.pos
        found = [i for i, o in enumerate(options)
                 if text.startswith(o, pos) and _ends_word(o, text, pos + len(o))]
        if not found:
            raise _no_match(options, text, pos)
        if len(found) > 1:  # a bug in the grammar, not in the text
            raise AssertionError(f"ambiguous options {[options[i] for i in found]}")
        self.pos += len(options[found[0]])
        self.logp += weights.logps[found[0]]
        return found[0]

