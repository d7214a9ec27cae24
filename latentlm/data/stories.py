"""Seeded TinyStories-style stories with an exact log-likelihood, so a benchmark knows its loss floor.

A story is written by one small program (`_story`) that makes random choices. Every choice writes its chosen
option at once, and the options of any one decision are prefix-free as word sequences (checked when a
`Choice` is built). The same program run by a parser instead of a sampler can therefore read the choices back
from the text, left to right with one token of lookahead: no two choice sequences give the same text, and the
sum of the choices' log-probabilities is the true log-likelihood of the text. Everything else follows from
earlier choices with probability 1: pronouns follow the name's gender, "the red ball" recalls "a big red
ball", "all three apples" recalls "three apples", dialogue addresses the right character by name. Those
recalls cost no entropy, which puts the floor well below what a model that cannot look far back achieves.
"""

from __future__ import annotations

import math
import random
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cache
from itertools import accumulate
from typing import Literal, NamedTuple, Protocol

GENERATOR_VERSION = "stories-1"

_TOKEN = re.compile(r"[A-Za-z]+|.", re.DOTALL)  # a maximal run of letters, or any one other character


@dataclass(frozen=True)
class Story:
    text: str
    logp: float  # natural-log probability of exactly this text under the generator


@dataclass(frozen=True)
class Parse:
    """How far the grammar derives a text: all of it, a prefix of some story, or not at all."""

    status: Literal["complete", "prefix", "invalid"]
    logp: float  # log-probability of the choices read (the story's logp when complete)


class _Mismatch(Exception):
    """The text cannot continue the derivation here."""


class _EndOfText(Exception):
    """The text ended while it still agreed with the derivation: it is a prefix of some story."""


def _ends_word(option: str, text: str, end: int) -> bool:
    """An option ending in a letter matches only where the text's word ends too ("Ann" is not in "Anna")."""
    return end == len(text) or not (option[-1].isalpha() and text[end].isalpha())


def _no_match(options: Sequence[str], text: str, pos: int) -> Exception:
    rest = text[pos:]
    return _EndOfText() if any(o.startswith(rest) for o in options) else _Mismatch()


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
            dist = _Weights(weights)
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


class _Weights:
    """Probabilities for a decision whose option texts are only known while a story is written."""

    __slots__ = ("logps", "cum")

    def __init__(self, weights: Sequence[float]) -> None:
        total = math.fsum(weights)
        self.logps = tuple(math.log(w / total) for w in weights)
        self.cum = tuple(accumulate(w / total for w in weights))[:-1]


@cache
def _uniform(n: int) -> _Weights:
    return _Weights((1.0,) * n)


_HALF = _uniform(2)


class _Deriver(Protocol):
    """What the story program needs: a sampler writes its choices, a parser reads them back."""

    def say(self, text: str) -> None: ...
    def pick(self, choice: Choice) -> int: ...
    def pick_other(self, choice: Choice, taken: Sequence[int]) -> int: ...
    def pick_text(self, options: Sequence[str], weights: _Weights) -> int: ...


class _Sampler:
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

    def pick_text(self, options: Sequence[str], weights: _Weights) -> int:
        i = self._draw(len(options), weights.cum)
        self.parts.append(options[i])
        self.logp += weights.logps[i]
        return i


class _Enumerator(_Sampler):
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


class _Parser:
    """Reads the choices back from a text: the inverse of `_Sampler`."""

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
            raise _Mismatch()
        self.pos += len(choice.options[i])
        self.logp -= math.log(choice.n - len(taken))
        return i

    def pick_text(self, options: Sequence[str], weights: _Weights) -> int:
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


# ----------------------------------------------------------------------------------------------------------
# Story state

_PRONOUNS = {  # subject, possessive, past of "to be"
    "F": ("she", "her", "was"),
    "M": ("he", "his", "was"),
    "N": ("they", "their", "were"),
}


class _Char:
    __slots__ = ("name", "he", "his", "was", "He", "His", "family")

    def __init__(self, name: str, gender: str, family: bool = False) -> None:
        self.name, self.family = name, family
        self.he, self.his, self.was = _PRONOUNS[gender]
        self.He, self.His = self.he.capitalize(), self.his.capitalize()


class _Toy(NamedTuple):
    colour: str
    noun: str
    base: str  # what one does with it: "fly"
    past: str  # "flew"


NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")


def _count(n: int) -> str:
    """How a recalled count of two or more reads: "both" or "all three"."""
    return "both" if n == 2 else f"all {NUMBER_WORDS[n]}"


# ----------------------------------------------------------------------------------------------------------
# The story program. Each function writes a part of the story; every sentence that starts with a pronoun
# refers to the first name of the last sentence that named someone (the rule `latentlm.judge` checks).


def _story(g: _Deriver, G: Grammar) -> None:
    cast: list[str] = []
    hero = _opening(g, G, cast)
    _home_and_likes(g, G, hero)
    toy = _toy(g, G, hero)
    friend = _friend(g, G, hero, cast)
    g.pick(G.time_leads)
    g.say(f" {hero.name} ")
    other, morals = G.conflicts.values[g.pick(G.conflicts)](g, G, hero, toy, friend, cast)
    _ending(g, G, hero, toy, other)
    g.say(f" {hero.name} ")
    g.pick(G.learned)
    g.say(" ")
    g.pick(morals)
    g.say(".")


def _character(g: _Deriver, G: Grammar, adjs: Choice, kinds: Choice, cast: list[str]) -> _Char:
    """'a shy girl named Lily': the kind decides which names, hence which pronouns, are possible."""
    g.pick(adjs)
    g.say(" ")
    kind = g.pick(kinds)
    g.say(" named ")
    names = G.names_by_group[kinds.values[kind]]
    i = g.pick_other(names, [names.index[n] for n in cast if n in names.index])
    cast.append(names.options[i])
    return _Char(names.options[i], names.values[i])


def _opening(g: _Deriver, G: Grammar, cast: list[str]) -> _Char:
    shape = G.openings.values[g.pick(G.openings)]
    g.say(" ")
    if shape == "day":
        g.pick(G.weathers)
        g.say(" ")
        g.pick(G.day_parts)
        g.say(", ")
    elif shape != "plain":
        g.pick(G.towns)
        g.say(", there lived " if shape == "lived" else ", there was ")
    hero = _character(g, G, G.hero_adjs, G.kinds, cast)
    if shape == "day":
        g.say(" ")
        g.pick(G.wakings)
    g.say(".")
    return hero


def _home_and_likes(g: _Deriver, G: Grammar, hero: _Char) -> None:
    g.say(f" {hero.He} lived in ")
    g.pick(G.homes)
    g.say(" ")
    g.pick(G.nears)
    g.say(" the ")
    g.pick(G.places)
    g.say(f". {hero.He} ")
    g.pick(G.likes)
    g.say(" ")
    g.pick(G.activities)
    g.pick(G.like_tails)
    g.say(f" {hero.He} {hero.was} ")
    g.pick(G.goods)
    g.say(" ")
    g.pick(G.skills)
    g.say(".")


def _toy(g: _Deriver, G: Grammar, hero: _Char) -> _Toy:
    """The object whose colour later sentences recall."""
    g.pick_text((f" {hero.name} had", f" {hero.His} favorite toy was"), _HALF)
    g.say(" ")
    colour = G.descs.values[g.pick(G.descs)]
    g.say(" ")
    t = g.pick(G.toys)
    toy = _Toy(colour, G.toys.options[t], *G.toys.values[t])
    g.say(f". {hero.He} {toy.past} the {colour} {toy.noun} ")
    g.pick(G.toy_times)
    g.say(".")
    return toy


def _friend(g: _Deriver, G: Grammar, hero: _Char, cast: list[str]) -> _Char | None:
    if g.pick_text((f" {hero.name}'s best friend was", "\n\n"), _HALF):
        return None
    g.say(" ")
    friend = _character(g, G, G.hero_adjs, G.kinds, cast)
    g.say(f". {friend.name} and {hero.name} ")
    g.pick(G.together)
    g.say(".\n\n")
    return friend


def _helper(g: _Deriver, G: Grammar, friend: _Char | None, cast: list[str]) -> _Char:
    """Someone comes to help: the friend, a family member, or a new animal."""
    g.say(" ")
    g.pick(G.help_leads)
    g.say(" ")
    options = (*((friend.name,) if friend else ()), *G.family.options, "along came")
    i = g.pick_text(options, _uniform(len(options)))
    if options[i] == "along came":
        g.say(" ")
        helper = _character(g, G, G.helper_adjs, G.helper_kinds, cast)
        g.say(".")
        return helper
    if friend and i == 0:
        helper = friend
    else:
        helper = _Char(options[i], G.family.values[G.family.index[options[i]]], family=True)
    g.say(" came ")
    g.pick(G.arrivals)
    g.say(".")
    return helper


def _tagged(g: _Deriver, tags: Choice, speaker: _Char) -> None:
    """Closes a quote: '," said Lily.' (the caller wrote the opening quote and the words)."""
    g.say(" ")
    g.pick(tags)
    g.say(f" {speaker.name}.")


def _thanks(g: _Deriver, G: Grammar, speaker: _Char, to: _Char) -> None:
    g.say(' "')
    g.pick(G.thanks)
    g.say(f', {to.name}!"')
    _tagged(g, G.cry_tags, speaker)


# Conflicts: each starts after "One day, Lily " with the words of its option in `Grammar.conflicts`,
# and returns the character who shared the adventure and the morals that fit it.
_Maybe = _Char | None
_Outcome = tuple[_Char, Choice]


def _lost(g: _Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
    g.say(f" {toy.colour} {toy.noun}. {hero.He} looked ")
    looked = [g.pick(G.spots)]
    g.say(", but it was not there.")
    if g.pick_text((f" {hero.He} also looked", f" {hero.name} felt"), _HALF) == 0:
        g.say(" ")
        looked.append(g.pick_other(G.spots, looked))
        g.say(f", but it was not there either. {hero.name} felt")
    g.say(" ")
    g.pick(G.sad_feelings)
    g.say(".")
    helper = _helper(g, G, friend, cast)
    g.say(f' "{helper.name}, I can\'t find my {toy.colour} {toy.noun}!"')
    _tagged(g, G.cry_tags, hero)
    g.say(' "')
    g.pick(G.comforts)
    g.say(f", {hero.name}! ")
    g.pick(G.search_offers)
    g.say(',"')
    _tagged(g, G.say_tags, helper)
    g.say(f" {helper.name} and {hero.name} looked ")
    g.pick_other(G.spots, looked)
    g.say(f", and there was the {toy.colour} {toy.noun}!")
    _thanks(g, G, hero, helper)
    return helper, G.morals_help


def _broken(g: _Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
    g.say(f" {toy.colour} {toy.noun}, and it ")
    g.pick(G.breaks)
    g.say(f". {hero.name} ")
    g.pick(G.sad_acts)
    g.say(".")
    helper = _helper(g, G, friend, cast)
    g.say(f' "{helper.name}, my {toy.colour} {toy.noun} is broken! Can you fix it?" asked {hero.name}.')
    g.say(f' {helper.name} looked at the {toy.colour} {toy.noun}. "I can fix it with ')
    g.pick(G.tools)
    g.say(',"')
    _tagged(g, G.say_tags, helper)
    g.say(f" {helper.name} worked ")
    g.pick(G.manners)
    g.say(f", and soon the {toy.colour} {toy.noun} was as good as new. {hero.name} ")
    g.pick(G.joys)
    g.say(".")
    _thanks(g, G, hero, helper)
    return helper, G.morals_careful


def _stuck(g: _Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
    g.say(f" {toy.colour} {toy.noun} to the ")
    g.pick(G.places)
    g.say(f". {hero.He} {toy.past} the {toy.colour} {toy.noun} ")
    g.pick(G.playfully)
    g.say(". Suddenly, ")
    g.pick(G.winds)
    g.say(f" blew the {toy.colour} {toy.noun} ")
    spot = G.stuck_spots.values[g.pick(G.stuck_spots)]
    g.say(f". {hero.name} could not reach it. {hero.He} ")
    g.pick(G.tries)
    g.say(", but it was too high.")
    helper = _helper(g, G, friend, cast)
    g.say(f' "{helper.name}, my {toy.colour} {toy.noun} is stuck! Can you help me?" asked {hero.name}. "')
    g.pick(G.yeses)
    g.say(f', {hero.name}!"')
    _tagged(g, G.cry_tags, helper)
    g.say(f" {helper.name} ")
    g.pick(G.rescues)
    g.say(f" and got the {toy.colour} {toy.noun} down from {spot}. {hero.name} ")
    g.pick(G.joys)
    g.say(".")
    _thanks(g, G, hero, helper)
    return helper, G.morals_help


def _share(g: _Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
    g.say(f" {toy.colour} {toy.noun} in the ")
    g.pick(G.places)
    g.say(" when ")
    if friend:
        g.say(friend.name)
    else:
        friend = _character(g, G, G.hero_adjs, G.kinds, cast)
    g.say(f' came by. "Can I play with your {toy.colour} {toy.noun}, {hero.name}?" asked {friend.name}. "')
    g.pick(G.refusals)
    g.say(',"')
    _tagged(g, G.cry_tags, hero)
    g.say(f" {friend.name} ")
    g.pick(G.sad_reactions)
    g.say(f". {hero.name} ")
    g.pick(G.regrets)
    g.say(f'. "{friend.name}, wait! ')
    g.pick(G.share_offers)
    g.say(',"')
    _tagged(g, G.say_tags, hero)
    g.say(f" {friend.name} and {hero.name} ")
    g.pick(G.played)
    g.say(". Playing together was much more fun than playing alone.")
    return friend, G.morals_share


def _picnic(g: _Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
    if friend:
        buddy = friend
        g.say(f" {friend.name}")
    else:
        g.say(" ")
        i = g.pick(G.family)
        buddy = _Char(G.family.options[i], G.family.values[i], family=True)
    g.say(" at the ")
    g.pick(G.places)
    g.say(f". {hero.He} ")
    g.pick(G.packs)
    g.say(" ")
    n1 = G.numbers.values[g.pick(G.numbers)]
    g.say(" ")
    a = g.pick(G.foods)
    g.say(" and ")
    n2 = G.numbers.values[g.pick(G.numbers)]
    g.say(" ")
    b = g.pick_other(G.foods, (a,))
    g.say(f" in {hero.his} basket. Soon, a hungry ")
    visitor = G.visitors.options[g.pick(G.visitors)]
    one, many, others = G.foods.values[a], G.foods.options[a], G.foods.options[b]
    rest = f"one {one}" if n1 == 2 else f"{NUMBER_WORDS[n1 - 1]} {many}"
    g.say(f' came by. "May I have something to eat?" asked the {visitor}.'
          f" {hero.name} gave the {visitor} one {one}."
          f" Now {hero.he} had {'only ' if n1 == 2 else ''}{rest} left. {hero.name} and {buddy.name} ate"
          f" {f'the last {one}' if n1 == 2 else f'the {rest}'} and {_count(n2)} {others}. The {visitor} ")
    g.pick(G.visitor_thanks)
    g.say(".")
    return buddy, G.morals_kind


def _fear(g: _Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
    g.say(" ")
    noise = G.noises.options[g.pick(G.noises)]
    g.say(" ")
    g.pick(G.noise_places)
    g.say(f". {hero.He} {hero.was} so scared that {hero.he} hid ")
    g.pick(G.hide_spots)
    g.say(".")
    helper = _helper(g, G, friend, cast)
    g.say(f' "{hero.name}, why are you hiding?" asked {helper.name}. "I heard a loud {noise}!"')
    _tagged(g, G.cry_tags, hero)
    g.say(' "That was just ')
    g.pick(G.explanations)
    g.say('. It cannot hurt you,"')
    _tagged(g, G.say_tags, helper)
    g.say(f" {hero.name} ")
    g.pick(G.calms)
    g.say(f". {hero.He} came out and gave {helper.name} a big hug.")
    return helper, G.morals_brave


def _race(g: _Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
    g.say(" ")
    race = G.races.options[g.pick(G.races)]
    g.say(" at the ")
    g.pick(G.places)
    g.say(f". {hero.He} ")
    g.pick(G.practices)
    g.say(f". On the day of the {race}, {hero.name} was very excited."
          f" {hero.He} ran as fast as {hero.he} could, but then {hero.he} ")
    g.pick(G.mishaps)
    g.say(f". {hero.His} knee hurt.")
    helper = _helper(g, G, friend, cast)
    g.say(f' "Are you okay, {hero.name}?" asked {helper.name}. "')
    g.pick(G.hurts)
    g.say(',"')
    _tagged(g, G.say_tags, hero)
    g.say(f" {helper.name} helped {hero.name} get up. {helper.name} and {hero.name} crossed the finish line"
          f" together. They did not win the {race}, but they were happy.")
    return helper, G.morals_friends


def _stray(g: _Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
    g.say(" ")
    animal = _character(g, G, G.lost_adjs, G.lost_kinds, cast)
    g.say(" who was ")
    g.pick(G.lost_states)
    g.say(f'. "Where is your home, {animal.name}?" asked {hero.name}. "I live in ')
    home = G.animal_homes.values[g.pick(G.animal_homes)]
    g.say(', but I can\'t find it,"')
    _tagged(g, G.say_tags, animal)
    g.say(f" {hero.name} and {animal.name} walked and walked until they found {home}. {animal.name}'s ")
    g.pick(G.parents)
    g.say(f" was there! {animal.name} ")
    g.pick(G.joys)
    g.say(".")
    _thanks(g, G, animal, hero)
    return animal, G.morals_kind


def _build(g: _Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
    g.say(" ")
    thing = G.builds.values[g.pick(G.builds)]
    g.say(" with ")
    n = G.numbers.values[g.pick(G.numbers)]
    g.say(" ")
    parts = G.materials.options[g.pick(G.materials)]
    g.say(f". {hero.He} put the {parts} one on top of the other, but the {thing} fell down! {hero.name} ")
    g.pick(G.frustrations)
    g.say(".")
    helper = _helper(g, G, friend, cast)
    g.say(f' "{helper.name}, my {thing} keeps falling down!"')
    _tagged(g, G.cry_tags, hero)
    g.say(f' "Let\'s try again together, {hero.name}. ')
    g.pick(G.tips)
    g.say(',"')
    _tagged(g, G.say_tags, helper)
    g.say(f" This time, {helper.name} and {hero.name} used {_count(n)} {parts}."
          f" The {thing} stood tall and strong.")
    return helper, G.morals_try


def _rainy_day(g: _Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
    g.say(f" {toy.base} the {toy.colour} {toy.noun}. But then it started to ")
    weather = G.bad_weathers.values[g.pick(G.bad_weathers)]
    g.say(f". {hero.name} looked out the window and ")
    g.pick(G.sighs)
    g.say(".")
    helper = _helper(g, G, friend, cast)
    g.say(f' "{helper.name}, there is nothing to do!"')
    _tagged(g, G.cry_tags, hero)
    g.say(' "We can ')
    done = G.indoors.values[g.pick(G.indoors)]
    g.say(' inside,"')
    _tagged(g, G.say_tags, helper)
    g.say(f" So {helper.name} and {hero.name} {done}."
          f" They had so much fun that they forgot all about the {weather}.")
    return helper, G.morals_fun


def _ending(g: _Deriver, G: Grammar, hero: _Char, toy: _Toy, other: _Char) -> None:
    g.say("\n\n")
    if other.family:  # "Lily and Mom were best friends" would be odd
        shape = G.endings.values[g.pick_other(G.endings, (G.endings.index["From that day on,"],))]
    else:
        shape = G.endings.values[g.pick(G.endings)]
    if shape == "sleep":
        g.say(f" {hero.name} hugged the {toy.colour} {toy.noun} and ")
        g.pick(G.sleeps)
    elif shape == "friends":
        g.say(f" {hero.name} and {other.name} were ")
        g.pick(G.bonds)
    elif shape == "home":
        g.say(f" {hero.name} went home ")
        g.pick(G.homeward)
    else:  # a gift of counted things, recalled in the next sentence
        g.say(f" {hero.name} picked ")
        n = G.numbers.values[g.pick(G.numbers)]
        g.say(" ")
        gifts = G.gifts.options[g.pick(G.gifts)]
        g.say(f" for {other.name}. {other.name} put {_count(n)} {gifts} in ")
        g.pick(G.containers)
    g.say(".")


# ----------------------------------------------------------------------------------------------------------
# The grammar: every word list, as the `Choice` made from it.


@dataclass(frozen=True)
class Grammar:
    """All decisions of the story program. `GRAMMAR` is the real one; `REDUCED_GRAMMAR` keeps a few options of
    each word list, small enough to enumerate every story."""

    openings: Choice
    towns: Choice
    weathers: Choice
    day_parts: Choice
    wakings: Choice
    hero_adjs: Choice
    kinds: Choice
    names_f: Choice
    names_m: Choice
    names_n: Choice
    homes: Choice
    nears: Choice
    places: Choice
    likes: Choice
    activities: Choice
    like_tails: Choice
    goods: Choice
    skills: Choice
    descs: Choice
    toys: Choice
    toy_times: Choice
    together: Choice
    time_leads: Choice
    conflicts: Choice
    help_leads: Choice
    family: Choice
    arrivals: Choice
    helper_adjs: Choice
    helper_kinds: Choice
    cry_tags: Choice
    say_tags: Choice
    thanks: Choice
    joys: Choice
    spots: Choice
    sad_feelings: Choice
    comforts: Choice
    search_offers: Choice
    breaks: Choice
    sad_acts: Choice
    tools: Choice
    manners: Choice
    playfully: Choice
    winds: Choice
    stuck_spots: Choice
    tries: Choice
    yeses: Choice
    rescues: Choice
    refusals: Choice
    sad_reactions: Choice
    regrets: Choice
    share_offers: Choice
    played: Choice
    packs: Choice
    numbers: Choice
    foods: Choice
    visitors: Choice
    visitor_thanks: Choice
    noises: Choice
    noise_places: Choice
    hide_spots: Choice
    explanations: Choice
    calms: Choice
    races: Choice
    practices: Choice
    mishaps: Choice
    hurts: Choice
    lost_adjs: Choice
    lost_kinds: Choice
    lost_states: Choice
    animal_homes: Choice
    parents: Choice
    builds: Choice
    materials: Choice
    frustrations: Choice
    tips: Choice
    bad_weathers: Choice
    sighs: Choice
    indoors: Choice
    endings: Choice
    sleeps: Choice
    bonds: Choice
    homeward: Choice
    gifts: Choice
    containers: Choice
    learned: Choice
    morals_help: Choice
    morals_careful: Choice
    morals_kind: Choice
    morals_share: Choice
    morals_brave: Choice
    morals_friends: Choice
    morals_try: Choice
    morals_fun: Choice
    names_by_group: dict[str, Choice] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names_any = Choice(self.names_f.options + self.names_m.options + self.names_n.options,
                           self.names_f.values + self.names_m.values + self.names_n.values)
        groups = {"F": self.names_f, "M": self.names_m, "N": self.names_n, "any": names_any}
        object.__setattr__(self, "names_by_group", groups)

    def reduced(self, sizes: dict[str, int], keep: Iterable[str]) -> Grammar:
        """The first `sizes[name]` options (default 1) of every decision except those in `keep`."""
        kept = set(keep)
        return replace(self, **{f.name: getattr(self, f.name).head(sizes.get(f.name, 1))
                                for f in fields(self) if f.init and f.name not in kept})


def _a(phrase: str) -> str:
    """'a red' / 'an orange': the article belongs to the option, as it depends on the word after it."""
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _w(words: str) -> tuple[str, ...]:
    return tuple(words.split())


def _phrases(text: str) -> tuple[str, ...]:
    """One option a line, which keeps long lists of multi-word phrases readable."""
    return tuple(line.strip() for line in text.strip().splitlines())


def _descs(colours: Sequence[str], looks: Sequence[str]) -> Choice:
    """'a red' or 'a big red': half the toys get a look word too; only the colour is recalled later."""
    plain = [_a(c) for c in colours]
    looked = [_a(f"{look} {c}") for c in colours for look in looks]
    return Choice(plain + looked, list(colours) + [c for c in colours for _ in looks],
                  [len(looks)] * len(plain) + [1] * len(looked))


def _rows(text: str) -> list[tuple[str, ...]]:
    """'option | payload' lines: the option text, then what the story program uses of it later."""
    return [tuple(cell.strip() for cell in line.split("|")) for line in _phrases(text)]


def _names(gender: str, names: str) -> Choice:
    return Choice(_w(names), [gender] * len(_w(names)))


def _animals(kinds: str) -> Choice:
    """Animal kinds, which take a name of any gender."""
    return Choice(_w(kinds), ["any"] * len(_w(kinds)))


def _choice_of_pairs(text: str) -> Choice:
    return Choice([row[0] for row in _rows(text)], [row[1] for row in _rows(text)])


_ANIMALS = _w("""dog cat bunny bear fox mouse duck frog bird puppy kitten pig cow horse lion tiger owl
        squirrel turtle elephant monkey sheep goat deer hedgehog raccoon panda penguin giraffe zebra
        dragon dinosaur koala kangaroo lamb pony otter beaver badger snail bee ladybug hamster chipmunk
        hippo rhino crocodile seal walrus moose camel llama sloth parrot peacock swan goose chicken
        rooster ostrich octopus""")

_TOYS = """
ball | kick | kicked
kite | fly | flew
boat | sail | sailed
drum | bang | banged
book | read | read
hat | wear | wore
car | race | raced
train | push | pushed
truck | push | pushed
doll | hug | hugged
teddy bear | hug | hugged
balloon | hold | held
bike | ride | rode
scooter | ride | rode
wagon | pull | pulled
bucket | fill | filled
shovel | carry | carried
scarf | wear | wore
sweater | wear | wore
umbrella | open | opened
robot | wind | wound
whistle | blow | blew
trumpet | play | played
guitar | strum | strummed
top | spin | spun
wand | wave | waved
crown | wear | wore
cape | wear | wore
backpack | carry | carried
lunchbox | carry | carried
piano | play | played
blanket | cuddle | cuddled
pillow | hug | hugged
crayon | color | colored
paintbrush | dip | dipped
sled | ride | rode
skateboard | ride | rode
plane | fly | flew
rocket | launch | launched
bell | ring | rang
xylophone | play | played
harmonica | play | played
tambourine | shake | shook
rattle | shake | shook
flute | play | played
violin | play | played
tricycle | ride | rode
raft | float | floated
ship | sail | sailed
pinwheel | spin | spun
tractor | drive | drove
notebook | write in | wrote in
pencil | sharpen | sharpened
marker | draw with | drew with
lantern | light | lit
necklace | wear | wore
bracelet | wear | wore
ribbon | tie | tied
puppet | wave | waved
jacket | wear | wore
flashlight | shine | shone
telescope | look through | looked through
rocking horse | rock | rocked
kazoo | hum into | hummed into
"""


_FOODS = """
apples | apple
cookies | cookie
bananas | banana
carrots | carrot
grapes | grape
muffins | muffin
sandwiches | sandwich
pears | pear
plums | plum
cherries | cherry
peaches | peach
strawberries | strawberry
cupcakes | cupcake
pancakes | pancake
eggs | egg
crackers | cracker
pies | pie
biscuits | biscuit
candies | candy
donuts | donut
lemons | lemon
pretzels | pretzel
tomatoes | tomato
buns | bun
waffles | waffle
apricots | apricot
melons | melon
peanuts | peanut
popsicles | popsicle
brownies | brownie
cakes | cake
potatoes | potato
mangoes | mango
coconuts | coconut
radishes | radish
pickles | pickle
tacos | taco
dumplings | dumpling
"""

_MORALS = {
    "help": """
        it is good to ask for help
        friends are always there to help
        helping each other makes hard things easy
        a friend in need is a friend indeed
        there is no shame in asking for help
        two heads are better than one
        kind helpers make the world a better place
        looking together is better than looking alone
        asking a grown-up is a smart thing to do
        nobody has to solve every problem alone
        a helping hand can turn a bad day around
        good friends show up when you need them
    """,
    "careful": """
        it is important to be careful with your things
        accidents can happen to anyone
        broken things can often be fixed
        taking care of your toys keeps them safe
        it is okay to make mistakes
        being gentle keeps things from breaking
        you should always handle things with care
        there is almost always a way to fix a problem
        you should keep your toys in a safe place
        staying calm helps you fix things
        slow and gentle hands break fewer things
        saying sorry and fixing things is the right thing to do
    """,
    "kind": """
        being kind is the best thing you can do
        a little kindness goes a long way
        helping others makes your heart happy
        everyone needs a friend sometimes
        kindness always comes back to you
        small acts of kindness matter
        it feels good to help someone in need
        caring for others is a special gift
        even a small friend can need a big helper
        being kind to animals is important
        the world is nicer when we look out for each other
        a kind heart is worth more than gold
    """,
    "share": """
        sharing makes everyone happy
        playing together is more fun than playing alone
        good friends share their toys
        sharing is caring
        a toy is more fun with a friend
        being selfish makes everyone sad
        when you share, you make friends
        taking turns is fair and fun
        keeping everything to yourself is lonely
        friends are worth more than toys
        a shared treat tastes sweeter
        saying yes to a friend feels wonderful
    """,
    "brave": """
        being brave means facing your fears
        many scary things are not scary at all
        it is okay to feel scared sometimes
        talking about your fears helps
        you are braver than you think
        a hug can chase your fears away
        loud noises cannot hurt you
        being scared is easier with someone you love
        the dark is not so scary when you know what is there
        courage grows a little every time you use it
        asking what a noise is can make fear go away
        brave hearts can still feel a little shaky
    """,
    "friends": """
        winning is not the most important thing
        friends matter more than prizes
        helping a friend is better than winning
        doing your best is what counts
        having fun is the real prize
        true friends never leave you behind
        it is okay to lose
        falling down is part of learning
        a good friend is the greatest prize of all
        finishing together is better than finishing first
        kindness wins more than races
        getting back up is what matters most
    """,
    "try": """
        you should never give up
        if at first you do not succeed, try again
        hard work pays off
        patience helps you build great things
        practice makes things better
        good things take time
        trying again is the key to success
        a strong base makes things stand tall
        mistakes help you learn
        teamwork makes the dream work
        big things are built one piece at a time
        listening to good advice helps you grow
    """,
    "fun": """
        you can have fun on any kind of day
        rainy days can be fun too
        there is always something fun to do
        fun can be found anywhere
        being together makes any day bright
        a good idea can change a bad day
        it is good to make the best of things
        the best games are the ones you share
        being inside can be an adventure too
        a cozy day at home can be wonderful
        clever ideas turn gloomy days into happy ones
        you do not need sunshine to have a great time
    """,
}

GRAMMAR = Grammar(
    openings=Choice(("Once upon a time, there was", "Once upon a time, in", "One", "In", "There was once"),
                    ("plain", "lived", "day", "was", "plain")),
    towns=Choice(_phrases("""
        a quiet little village
        a busy town
        a small town by the sea
        a big green forest
        a sunny valley
        a land far away
        a cozy little town
        a snowy village
        a bright city
        a green meadow
        a magic forest
        a faraway kingdom
        an old farm
        a little house on a hill
        a noisy city
        a windy seaside town
        a tiny island
        a sleepy village
        a mountain town
        a hidden valley
        a peaceful farm
        a magical garden
        a cold northern land
    """)),
    weathers=Choice(_w("""sunny rainy windy snowy cloudy warm cold bright quiet foggy chilly lovely
        beautiful cool hot breezy calm golden misty stormy frosty gray pleasant""")),
    day_parts=Choice(_w("morning day afternoon")),
    wakings=Choice(_phrases("""
        went outside to play
        looked out the window
        sang a happy song
        went for a walk
        sat in the garden
        ate a big breakfast
        jumped out of bed
        wiggled out of a warm blanket
        fed the hungry birds
        helped make pancakes
        watched the clouds drift by
        put on a warm coat
    """)),
    hero_adjs=Choice(_a(w) for w in _w("""little small kind happy shy brave curious friendly clever silly
        gentle playful sleepy cheerful busy proud quiet funny young sweet lively careful smart polite
        jolly tiny eager bold cheeky helpful grumpy chatty bouncy cute tidy messy noisy lazy hungry lucky
        thoughtful loving caring daring dreamy merry nosy patient peppy plucky speedy spunky wiggly giggly
        quick strong tall short chubby fast wild calm neat fancy sneaky sporty""")),
    kinds=Choice((*_ANIMALS[:1], "girl", "boy", "kid", *_ANIMALS[1:]),  # a dog first: see REDUCED_GRAMMAR
                 ("any", "F", "M", "N", *["any"] * (len(_ANIMALS) - 1)),
                 [1, 6, 6, 2, *[1] * (len(_ANIMALS) - 1)]),
    names_f=_names("F", """Lily Mia Emma Anna Lucy Sophie Chloe Ella Grace Zoe Ruby Daisy Amy Lisa Kate
        Molly Sally Susie Jenny Amber Hannah Julia Nora Ivy Alice Clara Maya Nina Olive Rosie Tina Jane
        Bella Kitty Polly Holly Lola Luna Stella Hazel Ellie Abby Betty Dora Fiona Gina Heidi Iris Jill
        Laura Megan Nellie Penny Wendy Cora Eva Lena Mandy Pam Ada Bonnie Cleo Daphne Edith Freya Hattie
        Ingrid Josie Leah Mabel Opal Rita Tessa Vera Willa Yara Zara"""),
    names_m=_names("M", """Tom Ben Max Jack Leo Tim Timmy Bob Billy Joe Jake Luke Mark Nick Oliver Oscar
        Peter Paul Ryan Toby Adam Andy Danny David Eddie Finn Fred George Harry Henry Jim John Kevin Louis
        Mike Ned Noah Owen Ray Ricky Ron Roy Sid Ted Tony Zack Hugo Felix Jasper Milo Otto Rex Bruno
        Arthur Ethan Liam Alfie Benny Carl Dex Eli Gus Hank Ivan Jonah Lenny Marco Nate Ozzie Percy Rudy
        Simon Theo Victor Walter"""),
    names_n=_names("N", """Sam Alex Charlie Jo Robin Riley Jamie Taylor Casey Kim Pat Sky River Sunny Pip
        Bean Kiwi Pebble Maple Rowan Quinn Remy Frankie Jessie Bobbie Lee Rory Ollie Blue Nico Avery
        Morgan Jordan Dakota Ash Jules Kit Lane Marley Parker Reese Sage Wren"""),
    homes=Choice(_phrases("""
        a small house
        a cozy cottage
        a little hut
        a big farmhouse
        a warm den
        a tall treehouse
        a tiny burrow
        a round nest
        a yellow house
        an old cabin
        a snug hole
        a striped tent
        a pretty cottage
        a wooden shed
        a tall apartment
        a houseboat
        a little igloo
        a stone cottage
        a white house
        a grand palace
        a hollow tree
        a brick house
        a cozy flat
        a quiet lighthouse
    """)),
    nears=Choice(_phrases("""
        near
        next to
        by
        behind
        close to
        across from
        at the edge of
        not far from
        on a hill above
    """)),
    places=Choice(_phrases("""
        park
        forest
        beach
        farm
        lake
        pond
        river
        meadow
        hill
        garden
        zoo
        playground
        market
        library
        school
        woods
        field
        mountain
        sea
        bakery
        old barn
        big oak tree
        candy shop
        toy shop
        train station
        castle
        village square
        town fair
        sunflower field
        duck pond
        apple orchard
        swimming pool
        ice cream shop
        museum
        post office
        fire station
        harbor
        valley
        waterfall
        cave
        jungle
        island
        bridge
        campsite
        circus
        city
        soccer field
        pet shop
        flower shop
        ocean
        pumpkin patch
        skating rink
        windmill
        greenhouse
        aquarium
        riverbank
        carnival
        theater
        stable
        pier
        creek
        cliff
    """)),
    likes=Choice(("loved to", "liked to", "always liked to", "really loved to")),
    activities=Choice(_phrases("""
        play in the sand
        jump in puddles
        sing songs
        draw pictures
        build towers with blocks
        run in the grass
        climb trees
        dance to music
        read books
        splash in the water
        chase butterflies
        look at the stars
        play hide and seek
        help in the garden
        bake cookies
        paint with bright colors
        listen to stories
        count the clouds
        watch the birds
        pick flowers
        blow bubbles
        roll down hills
        make mud pies
        play dress up
        feed the ducks
        swing on the swings
        dig in the dirt
        hop and skip
        collect pretty leaves
        play music
        tell jokes
        make new friends
        explore the woods
        fly paper planes
        do puzzles
        play catch
        stack cups
        skip stones on the pond
        look for bugs
        wear funny hats
        make sand castles
        smell the flowers
        visit the farm animals
        eat sweet berries
        splash in the bath
        jump on the bed
        hum happy tunes
        tell stories
        draw with chalk
        watch the rain
        play in the snow
        ride on a swing
        slide down the slide
        make paper boats
        plant seeds
        count the stars
        play with toy trains
        go on walks
        sit in the sun
        roll in the leaves
        whistle little tunes
        hunt for shells
        stomp in the mud
        learn new words
        race the wind
        jump rope
        spin in circles
        wiggle and giggle
        clap to the beat
        bounce on the trampoline
        feed the fish
        water the plants
        pet the kittens
        bake bread
        build snowmen
        eat ice cream
        pick apples
        ride horses
        wave at the trains
        sail boats on the pond
        drink warm cocoa
        knit warm scarves
        play the piano
        sit by the fire
        watch the sunset
        catch fireflies
        paint rocks
        write funny poems
        ride in the wagon
        listen to the rain
        race snails
        look for rainbows
        collect bottle caps
        help with dinner
        talk to the birds
        draw silly faces
        blow on dandelions
        chase the chickens
        visit the library
        sing in the shower
    """)),
    like_tails=Choice((".", " every day.", " all day long.", " after school.", " in the morning.",
                       " on sunny days.", " more than anything.", " with friends.")),
    goods=Choice(("very good at", "really good at", "great at", "the best at")),
    skills=Choice(_phrases("""
        drawing
        singing
        counting
        running
        jumping
        painting
        climbing
        swimming
        dancing
        whistling
        building things
        telling stories
        finding things
        making friends
        baking
        spelling
        reading
        skipping
        catching balls
        hiding
        sharing
        cleaning up
        listening
        tying knots
        hopping
        juggling
        writing letters
        planting seeds
        fixing things
        folding paper
        humming
        rhyming
        guessing riddles
        playing the drums
        doing cartwheels
        spotting birds
        making people laugh
    """)),
    descs=_descs(_w("red blue green yellow orange purple pink white black brown gray golden silver"),
                 _w("big small little tiny shiny new soft old")),
    toys=Choice([row[0] for row in _rows(_TOYS)], [row[1:] for row in _rows(_TOYS)]),
    toy_times=Choice(_phrases("""
        every day
        all the time
        in the garden
        after breakfast
        before bed
        at the park
        with great joy
        on weekends
        after lunch
        in the bath
        on rainy days
        under the stars
    """)),
    together=Choice(_phrases("""
        played together every day
        liked to share snacks
        went to the same school
        loved to sing songs together
        did everything together
        often raced to the park
        told each other secrets
        built forts in the backyard
        walked to school hand in hand
        traded stickers
        played pretend pirates
    """)),
    time_leads=Choice(("One day,", "One morning,", "The next day,", "One afternoon,", "Later that week,",
                       "One bright morning,", "Then one day,", "One evening,")),
    conflicts=Choice(("could not find the", "dropped the", "took the", "was playing with the",
                      "went on a picnic with", "heard a loud", "wanted to win the", "found",
                      "wanted to build", "wanted to go outside and"),
                     (_lost, _broken, _stuck, _share, _picnic, _fear, _race, _stray, _build,
                      _rainy_day)),
    help_leads=Choice(("Just then,", "Soon,", "After a while,", "A moment later,", "Then,", "Luckily,",
                       "Right then,", "All of a sudden,")),
    family=Choice(("Mom", "Dad", "Grandma", "Grandpa"), ("F", "M", "F", "M")),
    arrivals=Choice(("over", "outside", "running", "by", "to see what was wrong", "along the path",
                     "from next door", "hurrying down the lane")),
    helper_adjs=Choice(_a(w) for w in _w("wise old kind friendly gentle tall strong helpful smart")),
    helper_kinds=_animals("owl turtle bear elephant giraffe fox rabbit horse deer goat beaver badger"),
    cry_tags=Choice(("said", "cried", "shouted", "called")),
    say_tags=Choice(("said", "replied", "whispered", "answered")),
    thanks=Choice(("Thank you", "Thanks a lot", "Oh, thank you", "You are the best", "Hooray")),
    joys=Choice(_phrases("""
        smiled
        laughed
        jumped for joy
        clapped with joy
        danced around
        gave a happy shout
        grinned from ear to ear
    """)),
    spots=Choice(_phrases("""
        under the bed
        behind the couch
        in the closet
        inside the toy box
        under the table
        behind the door
        in the garden
        near the pond
        under a big leaf
        in the kitchen
        behind the tree
        under the stairs
        in the bathtub
        on the shelf
        in the car
        by the fence
        under the slide
        in the sandbox
        in the basket
        under a pile of leaves
        behind the curtains
        in the tall grass
        under the pillow
        next to the flower pot
        under the sofa cushions
        inside a rain boot
        behind the bookshelf
        in the laundry basket
        under the porch
        beside the mailbox
        in the garage
        under the hammock
    """)),
    sad_feelings=Choice(("sad", "very sad", "upset", "worried", "lonely", "grumpy", "like crying", "so sad")),
    comforts=Choice(("Don't worry", "It's okay", "Cheer up", "Do not be sad", "No need to cry")),
    search_offers=Choice(("I will help you", "We will find it together", "I can help you look",
                          "Let me help")),
    breaks=Choice(("broke", "cracked", "fell apart", "got a big hole", "lost a piece")),
    sad_acts=Choice(_phrases("""
        started to cry
        sat down on the floor
        did not know what to do
        wiped away a tear
        felt very sad
    """)),
    tools=Choice(("some glue", "some tape", "a piece of string", "a needle and thread", "a little hammer",
                  "a screwdriver", "a sticky bandage", "a tiny nail")),
    manners=Choice(("slowly", "carefully", "very hard", "for a long time", "with great care")),
    playfully=Choice(("again and again", "all around", "up and down", "with a big smile", "here and there")),
    winds=Choice(("a big gust of wind", "a strong wind", "a sudden breeze", "a wild storm")),
    stuck_spots=_choice_of_pairs("""
        up into a tall tree | the tall tree
        onto the roof of the shed | the roof
        over a high fence | the fence
        onto a high rock | the high rock
        into a thorny bush | the thorny bush
        onto a lamp post | the lamp post
    """),
    tries=Choice(("tried and tried", "jumped and jumped", "stretched up high", "stood on tiptoe")),
    yeses=Choice(("Of course", "Yes, I can", "Sure thing", "Do not worry")),
    rescues=Choice(("climbed up", "reached up high", "stood on a big box", "used a long stick",
                    "jumped up high", "found a tall ladder", "stood on a sturdy chair")),
    refusals=Choice(("No! It is mine", "No, go away", "No, I want it all to myself",
                     "No, you will break it")),
    sad_reactions=Choice(("looked very sad", "walked away slowly", "sat down alone", "began to cry")),
    regrets=Choice(("felt bad", "thought about it", "felt a little sorry", "knew that was not kind")),
    share_offers=Choice(("We can play with it together", "Let's take turns", "You can have the first turn")),
    played=Choice(_phrases("""
        played all afternoon
        took turns and laughed
        had so much fun
        played until the sun went down
    """)),
    packs=Choice(("packed", "brought", "carried")),
    numbers=Choice(NUMBER_WORDS[2:], range(2, 7)),
    foods=_choice_of_pairs(_FOODS),
    visitors=Choice(_w("""duck squirrel bird bunny ant mouse raccoon goat pig puppy chipmunk crow beetle
        seagull pigeon""")),
    visitor_thanks=Choice(("said thank you", "was very happy", "did a little dance", "smiled at them",
                           "flapped its wings happily", "hopped away with a full belly")),
    noises=Choice(_w("boom bang crash rumble creak thump rattle clatter howl whoosh")),
    noise_places=Choice(("outside", "at night", "in the dark", "from the attic", "from the yard",
                         "behind the wall")),
    hide_spots=Choice(_phrases("""
        under the bed
        under a blanket
        behind the couch
        in the closet
        under the table
        behind the curtains
        in a big box
        under the stairs
        inside the wardrobe
        under the covers
        behind a big chair
    """)),
    explanations=Choice(("the thunder", "the wind", "a big truck", "the old door", "a tree branch", "the cat",
                         "a falling pot", "the washing machine", "a noisy garbage truck", "the fireworks")),
    calms=Choice(("took a deep breath", "felt a little better", "peeked out", "smiled a small smile",
                  "counted to ten", "held on tight to a pillow")),
    races=Choice(("big race", "running race", "sack race", "bike race", "relay race", "obstacle race")),
    practices=Choice(("practiced every day", "ran around the yard each morning", "trained very hard",
                      "jogged around the block each evening", "stretched every morning")),
    mishaps=Choice(("tripped over a rock", "slipped in the mud", "fell down", "bumped into a tree",
                    "stepped in a deep puddle", "lost a shoe")),
    hurts=Choice(("My knee hurts", "I fell down", "I can't get up")),
    lost_adjs=Choice(_a(w) for w in _w("little tiny baby young small sad")),
    lost_kinds=_animals("bird duck bunny kitten puppy chick fawn lamb mouse frog squirrel turtle hedgehog"),
    lost_states=Choice(("lost", "all alone", "crying", "far from home", "shivering in the cold",
                        "very hungry")),
    animal_homes=_choice_of_pairs("""
        a nest in an old oak tree | the old oak tree
        a little hole by the river | the river
        a cozy burrow under a big rock | the big rock
        a pond full of lily pads | the pond
        a barn on the hill | the barn
        a hollow log in the woods | the hollow log
    """),
    parents=Choice(("mom", "dad", "family", "grandma", "big brother", "aunt", "uncle")),
    builds=_choice_of_pairs("""
        a tall tower | tower
        a big castle | castle
        a little house | house
        a long bridge | bridge
        a funny robot | robot
        a high wall | wall
    """),
    materials=Choice(_w("blocks boxes cups sticks stones pillows cans cards bricks logs crates tins")),
    frustrations=Choice(("felt sad", "stamped the ground", "wanted to give up", "sat down with a sigh",
                         "grumbled and groaned")),
    tips=Choice(("Put the big ones at the bottom", "Go slowly and carefully", "Make the bottom wide",
                 "Press each one down gently", "Hold it steady with both hands")),
    bad_weathers=_choice_of_pairs("""
        rain | rain
        snow | snow
        storm | storm
        hail | hail
    """),
    sighs=Choice(("sighed", "frowned", "felt grumpy", "pouted", "yawned", "pressed a nose to the glass")),
    indoors=_choice_of_pairs("""
        build a fort with pillows | built a fort with pillows
        bake cookies | baked cookies
        paint pictures | painted pictures
        play a board game | played a board game
        read a story | read a story
        make a puppet show | made a puppet show
        sing silly songs | sang silly songs
        have a tea party | had a tea party
    """),
    endings=Choice(("That night,", "From that day on,", "At the end of the day,", "On the way home,"),
                   ("sleep", "friends", "home", "gift")),
    sleeps=Choice(("fell fast asleep", "went to bed with a smile", "dreamed happy dreams",
                   "drifted off to sleep")),
    bonds=Choice(("best friends", "the best of friends", "good friends", "the closest of friends",
                  "friends forever")),
    homeward=Choice(("happy and tired", "with a big smile", "singing a song", "feeling proud",
                     "humming a tune", "skipping all the way")),
    gifts=Choice(_w("""flowers shells pebbles leaves feathers pinecones acorns daisies berries petals buttons
        marbles clovers""")),
    containers=Choice(("a jar", "a vase", "a box", "a basket", "a bowl", "a clay pot", "a paper bag")),
    learned=Choice(("learned that", "knew now that", "understood that", "remembered that")),
    **{f"morals_{k}": Choice(_phrases(v)) for k, v in _MORALS.items()},
)

# Every sub-grammar, but one option of each word list (the kind is a dog, whose name may be a girl's, a boy's
# or a neutral one), except what the story program needs more of: each opening shape, two colours, counts
# and foods, three search spots. 45,600 stories, few enough to enumerate.
REDUCED_GRAMMAR = GRAMMAR.reduced(
    sizes={"openings": 4, "descs": 2, "numbers": 2, "foods": 2, "spots": 3},
    keep={"conflicts", "endings"},
)


# ----------------------------------------------------------------------------------------------------------
# Public API


def _seed(seed: int, index: int) -> int:
    """One integer per (seed, index) pair, the same in every process (no str hashing)."""
    if seed < 0 or not 0 <= index < 2**64:
        raise ValueError("seed must be >= 0 and 0 <= index < 2**64")
    return (seed << 64) | index


def generate_story(seed: int, index: int, *, grammar: Grammar = GRAMMAR) -> Story:
    """Story number `index` of the stream `seed`, without generating any other."""
    sampler = _Sampler(random.Random(_seed(seed, index)).random)
    _story(sampler, grammar)
    return Story("".join(sampler.parts), sampler.logp)


def generate_stories(seed: int, start: int, count: int, *, grammar: Grammar = GRAMMAR) -> list[Story]:
    """Stories `start` .. `start + count - 1` of the stream `seed` (each as `generate_story` gives it)."""
    return [generate_story(seed, i, grammar=grammar) for i in range(start, start + count)]


def parse_story(text: str, *, grammar: Grammar = GRAMMAR) -> Parse:
    """Re-derive the choices behind `text`; a text that ends early but agrees so far is a "prefix"."""
    parser = _Parser(text)
    try:
        _story(parser, grammar)
    except _Mismatch:
        return Parse("invalid", parser.logp)
    except _EndOfText:
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
        walker = _Enumerator(path)
        _story(walker, grammar)
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
