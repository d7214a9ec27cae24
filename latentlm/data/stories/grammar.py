"""The grammar: every decision of the story program, as the `Choice` made from a word list of words.txt.

Most lists are decisions as they stand. A few are built here, where the options follow a rule: an article
before each adjective, a gender behind each name, colours with and without a look word, the human kinds
among the animals, and the number words.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from importlib import resources

from latentlm.data.stories.engine import Choice

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")


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


def _read_lists(text: str) -> dict[str, list[tuple[str, ...]]]:
    """words.txt: a `[name]` line opens a list, then one option a line, split at `|` into the option's text and
    what the story program uses of it later ("ball | kick | kicked"); `#` starts a comment line. Hand-rolled
    for bare lists of lines: INI wants `key = value`, the standard library reads TOML only from Python 3.11,
    and JSON would quote every line."""
    lists: dict[str, list[tuple[str, ...]]] = {}
    for line in map(str.strip, text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if line[1:-1] in lists:
                raise ValueError(f"words.txt has two lists named {line}")
            rows = lists[line[1:-1]] = []
        else:
            rows.append(tuple(cell.strip() for cell in line.split("|")))
    return lists


def _choice(rows: list[tuple[str, ...]]) -> Choice:
    """A list as it stands: each row's text, and its payload where it has one: the second cell ("apples | apple"),
    or all the cells after the first ("ball | kick | kicked")."""
    if all(len(row) == 1 for row in rows):
        return Choice(row[0] for row in rows)
    return Choice([row[0] for row in rows], [row[1] if len(row) == 2 else row[1:] for row in rows])


def _a(phrase: str) -> str:
    """'a red' / 'an orange': the article belongs to the option, as it depends on the word after it."""
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _descs(colours: Sequence[str], looks: Sequence[str]) -> Choice:
    """'a red' or 'a big red': half the toys get a look word too; only the colour is recalled later."""
    plain = [_a(c) for c in colours]
    looked = [_a(f"{look} {c}") for c in colours for look in looks]
    return Choice(plain + looked, list(colours) + [c for c in colours for _ in looks],
                  [len(looks)] * len(plain) + [1] * len(looked))


def _grammar(lists: dict[str, list[tuple[str, ...]]]) -> Grammar:
    """The decisions built by a rule (taking their lists out of `lists`), then every other list as it stands;
    `Grammar` refuses a missing or an extra one."""
    def words(name: str) -> list[str]:
        return [row[0] for row in lists.pop(name)]

    def tagged(name: str, tag: str) -> Choice:  # names carry their gender; animal kinds take any name
        options = words(name)
        return Choice(options, [tag] * len(options))

    animals = words("animals")
    built = dict(
        hero_adjs=Choice(map(_a, words("hero_adjs"))),
        helper_adjs=Choice(map(_a, words("helper_adjs"))),
        lost_adjs=Choice(map(_a, words("lost_adjs"))),
        kinds=Choice((*animals[:1], "girl", "boy", "kid", *animals[1:]),  # a dog first: see REDUCED_GRAMMAR
                     ("any", "F", "M", "N", *["any"] * (len(animals) - 1)),
                     [1, 6, 6, 2, *[1] * (len(animals) - 1)]),
        names_f=tagged("names_f", "F"),
        names_m=tagged("names_m", "M"),
        names_n=tagged("names_n", "N"),
        helper_kinds=tagged("helper_kinds", "any"),
        lost_kinds=tagged("lost_kinds", "any"),
        descs=_descs(words("colours"), words("looks")),
        like_tails=Choice((".", *(f" {tail}" for tail in words("like_tails")))),  # or the sentence just ends
        numbers=Choice(NUMBER_WORDS[2:], range(2, 7)),
    )
    return Grammar(**built, **{name: _choice(rows) for name, rows in lists.items()})


GRAMMAR = _grammar(_read_lists(resources.files(__package__).joinpath("words.txt").read_text(encoding="utf-8")))

# Every sub-grammar, but one option of each word list (the kind is a dog, whose name may be a girl's, a boy's
# or a neutral one), except what the story program needs more of: each opening shape, two colours, counts
# and foods, three search spots. 45,600 stories, few enough to enumerate.
REDUCED_GRAMMAR = GRAMMAR.reduced(
    sizes={"openings": 4, "descs": 2, "numbers": 2, "foods": 2, "spots": 3},
    keep={"conflicts", "endings"},
)

