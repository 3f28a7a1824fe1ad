"""Who in this scene said it? The candidates that make a fidelity figure mean something: the
intended character against the other speakers of the item's scene (its context turns' speaker
names, matched to characters by profile name within the item's film) and the film's main cast
(its MAIN_CAST characters with the most training lines), at least MIN_CANDIDATES of them. Among
all characters, a series' recurring cast wins on its line count alone; among the scene's people,
only how a line sounds can tell them apart.

The baseline is the real lines of the other speakers of the same scene (every context turn of
a character the classifier knows, the item's figures their mean), so reference - baseline asks
whether the classifier hears who speaks, not who speaks most; averaging over the scene's lines
instead of taking the last one alone cuts the per-item spread of the margin (on the Seinfeld
conversion from 0.46 to 0.38). Ranks use the classifier's probabilities divided by each
character's share of the training lines (the likelihood of the line, not the posterior): on the
Seinfeld conversion this raises the reference - baseline margin from 0.034 to 0.090.
"""

import hashlib
from collections import Counter

MAIN_CAST = 12
MIN_CANDIDATES = 3


class Scenes:
    """Each character's profile name and film, and its films' main casts, from the training file's
    samples and `films` (`film_mates`); `line_counts`: training lines per character."""

    def __init__(self, samples, films: dict, line_counts: dict):
        self.films = films
        self.line_counts = line_counts
        names = {}
        for s in samples:
            name = str(s.profile.get("name") or "").strip()
            if name:
                names.setdefault(s.user_hash, name)
        self.names = names
        self.unmatched = Counter()  # speaker names of scored items that match no character of their film
        self._by_name, self._cast = {}, {}  # per film (its frozenset of characters): built once

    def _film(self, character: str) -> frozenset:
        return self.films.get(character, frozenset({character}))

    def by_name(self, character: str) -> dict:
        """Folded profile name -> character, within the character's film."""
        film = self._film(character)
        if film not in self._by_name:
            self._by_name[film] = {self.names[m].casefold(): m for m in film if m in self.names}
        return self._by_name[film]

    def speakers(self, character: str, sources) -> list:
        """Characters of the item's film named by its context turns, last speaker first."""
        by_name = self.by_name(character)
        out = []
        for name in reversed(sources):
            found = by_name.get(name.casefold())
            if found is None:
                if name and name.casefold() != "user":
                    self.unmatched[name] += 1
            elif found not in out:
                out.append(found)
        return out

    def main_cast(self, character: str) -> list:
        film = self._film(character)
        if film not in self._cast:
            ranked = sorted(film, key=lambda m: (-self.line_counts.get(m, 0), m))
            self._cast[film] = [m for m in ranked if self.line_counts.get(m, 0)][:MAIN_CAST]
        return self._cast[film]

    def candidates(self, character: str, sources, known) -> list | None:
        """The intended character, the scene's speakers and the film's main cast that the
        classifier knows; None below MIN_CANDIDATES."""
        pool = {character, *self.speakers(character, sources), *self.main_cast(character)} & set(known)
        return sorted(pool) if character in pool and len(pool) >= MIN_CANDIDATES else None

    def baselines(self, character: str, context, sources, known) -> list:
        """(line, its character) of every context turn spoken by another known character of the
        scene, the last first, each line once; empty when there is none."""
        by_name, out = self.by_name(character), []
        for line, name in zip(reversed(list(context)), reversed(list(sources))):
            other = by_name.get(name.casefold())
            if other and other != character and other in known and line and line not in (x for x, _ in out):
                out.append((line, other))
        return out


def likelihoods(probs, classes, line_counts: dict) -> list:
    """The classifier's probabilities divided by each character's share of the training lines."""
    total = sum(line_counts.get(c, 0) for c in classes) or 1
    return [p * total / max(1, line_counts.get(c, 0)) for p, c in zip(probs, classes)]


def film_mates(samples, conversations) -> dict:
    """{character: characters sharing a film with it, itself included}. Records are joined when
    their samples share a conversation; a character in several films gets all their casts."""
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for members in conversations.members:
        for s in members[1:]:
            parent[find(s.record_key)] = find(members[0].record_key)
    cast, films_of = {}, {}
    for s in samples:
        film = find(s.record_key)
        cast.setdefault(film, set()).add(s.user_hash)
        films_of.setdefault(s.user_hash, set()).add(film)
    return {c: frozenset().union(*(cast[f] for f in films)) for c, films in films_of.items()}


def pick_baselines(items, films: dict, scenes=None, known=()) -> int:
    """For each item with a reference, lines of other characters: with `scenes`
    (`fidelity_scene.Scenes`), every context line of another speaker of its scene the classifier
    knows (`Item.baselines`; `baseline` the last of them); else a reference line of another character of the same film where the file
    has one, else of any other character, chosen by a hash of the item's uid, so the same for
    every model scored on the file. Returns how many came from another film."""
    if scenes is not None:
        for it in items:
            if it.reference and not it.baseline:
                found = scenes.baselines(it.character, it.context, it.sources, known)
                if found:
                    it.baselines = tuple(line for line, _ in found)
                    it.baseline = found[0][0]
                    it.baseline_from = "scene:" + ",".join(dict.fromkeys(other for _, other in found))
    by_char = {}
    for it in items:
        if it.reference:
            by_char.setdefault(it.character, []).append(it)
    others_film = 0
    for it in items:
        if not it.reference or it.baseline:
            continue
        mates = sorted(c for c in films.get(it.character, ()) if c != it.character and c in by_char)
        if not mates:
            mates, others_film = sorted(c for c in by_char if c != it.character), others_film + 1
        if not mates:
            continue
        h = int(hashlib.blake2b(it.uid.encode(), digest_size=8).hexdigest(), 16)
        other = by_char[mates[h % len(mates)]]
        chosen = other[(h // len(mates)) % len(other)]
        it.baseline, it.baseline_from = chosen.reference, chosen.sample_id
    return others_film
