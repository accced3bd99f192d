"""Does the documents' text support the figures of an answer? A lexical check, no LM.

The 0.5B invents answers to questions the documents do not answer by copying a figure from a
neighbouring fact ("The price of a TurtleBot 4 is $1,000", "the maximum operating temperature
is 2h 30m", the battery life row); what the index knows does not catch those, since the
question's words are in it. What tells them apart is where the figure stands: a figure the
documents give for what the question asks stands in a sentence or table row that also names it.

So a figure of the answer (a number standing alone, not the digits of a name such as T2 or
E-311; one the question does not hold) is supported when a unit of the passages (a sentence,
list item or table row, read with its heading path and its table's header row) holds it together
with at least SUPPORT_MIN of one question part's specific terms, or with as many of them as the
best unit of the passages holds (the documents may put the rest otherwise: "Wait about 90 seconds
for the boot" answers "How long does a Tern T2 take to boot after it is switched on?"). Specific
terms are the retriever's (`evidence["specific_terms"]`: the question's terms that at most
`specific_share` of the passages hold, the asking words aside: "maximum", "payload",
"temperature", not "TurtleBot" or "robot"); a term counts when a unit's word extends it by a
suffix, as the retrieval itself counts it ("weigh" -> "Weight").

Names are checked more simply: a name of the answer (a word written with a capital inside it,
"NVIDIA", "GeForce", "iRobot"; one joining letters and digits, "GTX1080", "M4"; or a capitalised
word inside a sentence) that neither the question nor any passage holds is the model's own: the
0.5B's "NVIDIA GeForce GTX 1080" for a GPU the manuals never name.

Chosen on the tune halves (docs/retrieval.md, "Figures the documents support"): on the 0.5B's
answers it refused three of the four invented answers with a figure on the manuals' tune half
(the fourth, "2A" as an IP rating for water resistance, stands in a unit holding as many of the
question's known specific terms as any unit does) and the invented "600 kg" on the demo KB's,
and one right answer ("60 mm" for "How high can the Tern T2 lift its top plate?": the row says
"Lift height"); a plain share of the terms would have refused a second right one.
"""
from __future__ import annotations

import re
from typing import Callable

from . import lexical
from .chunking import split_units

SUPPORT_MIN = 0.5  # share of a question part's specific terms the figure's unit must hold
# a number standing alone or before its unit ("12m", "28.8W"), not the digits of a name or code (T2, E-311, A1M8)
_NUMBER = re.compile(r"(?<![\w.,/-])\d+(?:[.,]\d+)*")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+")
_SOURCE_TAG = re.compile(r"\[[^\s\[\]]+\]")
# a word with a capital after its first letter, one mixing letters and digits, or a capitalised word
# that does not begin a sentence
_NAME = re.compile(r"\b(?:[A-Za-z]+[A-Z][\w-]*|[A-Za-z]+\d[\w-]*|\d+[A-Za-z][\w-]*)\b|(?<![.!?:]\s)(?<!^)\b[A-Z][a-z]+\b")
_FOLD = re.compile(r"[^a-z0-9]+")


def figures(text: str) -> list[str]:
    """The numbers of a text, thousands separators dropped ("1,000" -> "1000"), in order."""
    return [n.replace(",", "") if _THOUSANDS.fullmatch(n) else n for n in _NUMBER.findall(text)]


def _covered(unit_terms: set[str], wanted: set[str]) -> set[str]:
    return {q for q in wanted if q in unit_terms or (
        len(q) >= lexical.SAME_WORD_PREFIX and q.isalpha()
        and any(t.startswith(q) and len(t) - len(q) <= lexical.EXTENSION_LETTERS for t in unit_terms))}


def _units(passages):
    """(terms, figures) of every unit of the passages, read with its heading and table header."""
    for p in passages:
        parts = split_units(p.text)
        for u in parts.units:
            header = parts.headers[u.table][0] if u.table is not None else ""
            yield set(lexical.terms(f"{parts.heading} {header} {u.text}")), set(figures(u.text))


def unsupported_figures(answer: str, question: str, passages, specific_terms, unknown_terms=()) -> list[str]:
    """The answer's figures (those the question does not hold) that no unit of the passages states
    for what the question asks: for every part of the question, the units that hold the figure
    hold fewer than SUPPORT_MIN of the part's specific terms and fewer than the unit of the
    passages that holds the most of them (or none). Terms the index does not know
    (`unknown_terms`: "voltage" where the documents write "48 V") cannot be held and do not count;
    a part asked in such words only leaves the answer unjudged (no figure is reported)."""
    return figures_check(question, passages, specific_terms, unknown_terms)(answer)


def figures_check(question: str, passages, specific_terms, unknown_terms=()) -> Callable[[str], list[str]]:
    """unsupported_figures for one question and its passages, the passages read once (at the first
    answer with a figure to judge): the pipeline judges a held answer word by word."""
    parts = [set(specific_terms) & set(lexical.terms(part)) for part in lexical.question_parts(question)]
    wanted = [w - set(unknown_terms) for w in parts if w]
    asked = set(figures(question))
    read: list = []  # [units, the most terms of each part any unit holds], once read

    def unsupported(answer: str) -> list[str]:
        said = [f for f in dict.fromkeys(figures(_SOURCE_TAG.sub(" ", answer))) if f not in asked]
        if not said or not wanted or not all(wanted):  # a part asked only in words the index lacks: nothing to judge by
            return []
        if not read:
            units = list(_units(passages))
            read.extend([units, [max((len(_covered(t, w)) for t, _ in units), default=0) for w in wanted]])
        units, most = read
        return [f for f in said if not _stated(f, units, wanted, most)]
    return unsupported


def _stated(figure: str, units, wanted, most) -> bool:
    for w, best in zip(wanted, most):
        held = max((len(_covered(t, w)) for t, found in units if figure in found), default=0)
        if held and (held >= SUPPORT_MIN * len(w) or held == best):
            return True
    return False


def _folded(text: str) -> str:
    """Lower case, letters and digits only ("Create® 3" and "create 3" read the same)."""
    return _FOLD.sub("", text.lower())


def names_check(question: str, passages) -> Callable[[str], list[str]]:
    """unsupported_names for one question and its passages, the passages read once."""
    held = _folded(question) + " " + " ".join(_folded(f"{p.source} {p.text}") for p in passages)

    def unsupported(answer: str) -> list[str]:
        said = _SOURCE_TAG.sub(" ", answer)
        return [name for name in dict.fromkeys(m.group(0) for m in _NAME.finditer(said))
                if name != "I" and _folded(name) not in held]
    return unsupported


def unsupported_names(answer: str, question: str, passages) -> list[str]:
    """The answer's names (see the module doc) that neither the question nor a passage holds, read
    letters and digits only, in any case ("OAK-D Pro" is "oakdpro")."""
    return names_check(question, passages)(answer)
