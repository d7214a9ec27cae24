"""The story program: one function per part of a story, run by any `Deriver` (engine.py) over a `Grammar`.

Each function writes a part of the story. Everything that is not a choice follows from earlier choices with
probability 1: pronouns follow the name's gender, "the red ball" recalls "a big red ball", "all three apples"
recalls "three apples", dialogue addresses the right character by name. Those recalls cost no entropy, which
puts the floor well below what a model that cannot look far back achieves. Every sentence that starts with a
pronoun refers to the first name of the last sentence that named someone (the rule `latentlm.judge` checks).
"""

from __future__ import annotations

from typing import NamedTuple

from latentlm.data.stories.engine import Choice, Deriver, uniform
from latentlm.data.stories.grammar import NUMBER_WORDS, Grammar

_HALF = uniform(2)

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


def _count(n: int) -> str:
    """How a recalled count of two or more reads: "both" or "all three"."""
    return "both" if n == 2 else f"all {NUMBER_WORDS[n]}"


def story(g: Deriver, G: Grammar) -> None:
    """One whole story, each decision made by `g`: opening, home, toy, friend, conflict, ending, moral."""
    cast: list[str] = []
    hero = _opening(g, G, cast)
    _home_and_likes(g, G, hero)
    toy = _toy(g, G, hero)
    friend = _friend(g, G, hero, cast)
    g.pick(G.time_leads)
    g.say(f" {hero.name} ")
    conflict = _CONFLICTS[G.conflicts.values[g.pick(G.conflicts)]]
    other, morals = conflict(g, G, hero, toy, friend, cast)
    _ending(g, G, hero, toy, other)
    g.say(f" {hero.name} ")
    g.pick(G.learned)
    g.say(" ")
    g.pick(morals)
    g.say(".")


def _character(g: Deriver, G: Grammar, adjs: Choice, kinds: Choice, cast: list[str]) -> _Char:
    """'a shy girl named Lily': the kind decides which names, hence which pronouns, are possible."""
    g.pick(adjs)
    g.say(" ")
    kind = g.pick(kinds)
    g.say(" named ")
    names = G.names_by_group[kinds.values[kind]]
    i = g.pick_other(names, [names.index[n] for n in cast if n in names.index])
    cast.append(names.options[i])
    return _Char(names.options[i], names.values[i])


def _opening(g: Deriver, G: Grammar, cast: list[str]) -> _Char:
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


def _home_and_likes(g: Deriver, G: Grammar, hero: _Char) -> None:
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


def _toy(g: Deriver, G: Grammar, hero: _Char) -> _Toy:
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


def _friend(g: Deriver, G: Grammar, hero: _Char, cast: list[str]) -> _Char | None:
    if g.pick_text((f" {hero.name}'s best friend was", "\n\n"), _HALF):
        return None
    g.say(" ")
    friend = _character(g, G, G.hero_adjs, G.kinds, cast)
    g.say(f". {friend.name} and {hero.name} ")
    g.pick(G.together)
    g.say(".\n\n")
    return friend


def _helper(g: Deriver, G: Grammar, friend: _Char | None, cast: list[str]) -> _Char:
    """Someone comes to help: the friend, a family member, or a new animal."""
    g.say(" ")
    g.pick(G.help_leads)
    g.say(" ")
    options = (*((friend.name,) if friend else ()), *G.family.options, "along came")
    i = g.pick_text(options, uniform(len(options)))
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


def _tagged(g: Deriver, tags: Choice, speaker: _Char) -> None:
    """Closes a quote: '," said Lily.' (the caller wrote the opening quote and the words)."""
    g.say(" ")
    g.pick(tags)
    g.say(f" {speaker.name}.")


def _thanks(g: Deriver, G: Grammar, speaker: _Char, to: _Char) -> None:
    g.say(' "')
    g.pick(G.thanks)
    g.say(f', {to.name}!"')
    _tagged(g, G.cry_tags, speaker)


# Conflicts: each starts after "One day, Lily " with the words of its option in `Grammar.conflicts`,
# and returns the character who shared the adventure and the morals that fit it.
_Maybe = _Char | None
_Outcome = tuple[_Char, Choice]


def _lost(g: Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
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


def _broken(g: Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
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


def _stuck(g: Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
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


def _share(g: Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
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


def _picnic(g: Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
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


def _fear(g: Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
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


def _race(g: Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
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


def _stray(g: Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
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


def _build(g: Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
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


def _rainy_day(g: Deriver, G: Grammar, hero: _Char, toy: _Toy, friend: _Maybe, cast: list[str]) -> _Outcome:
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


_CONFLICTS = {  # by the name words.txt gives each option of `conflicts`
    "lost": _lost, "broken": _broken, "stuck": _stuck, "share": _share, "picnic": _picnic, "fear": _fear,
    "race": _race, "stray": _stray, "build": _build, "rainy_day": _rainy_day,
}


def _ending(g: Deriver, G: Grammar, hero: _Char, toy: _Toy, other: _Char) -> None:
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

