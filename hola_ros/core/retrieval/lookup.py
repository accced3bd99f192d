"""Answers read off the documents' structure, without a generation: a code's table row, and a
FAQ entry that asks the question.

A question about a code (E-214, CD-5) that keys a row of a retrieved table is answered with that
row, cell by cell under its column names.

The small models misread rows they were given (the 0.5B answered "Where is charging dock CD-5?"
with "CD-5" and then with a refusal, the CD-5 row in its context; "CD-1 and CD-3" with CD-1's
location for both), and a code's row is exactly what an operator asks for. So a row answers when
- every code the question names (letter-first identifiers) keys exactly one row of the retrieved
  tables (the row's first cell is that code and nothing else);
- the question asks one thing (no second clause: "... mean, and at what temperature ...");
- every term of the question occurs in the passages that hold those rows (their heading, column
  names, rows and prose), so the question asks about the row and nothing else.

A question that a retrieved FAQ entry (a line "**Question?** Answer") asks is answered with the
entry's answer: the 0.5B answered "Can I move a robot by hand?" with "Yes, you can move a robot
by hand." although the entry in its context says only when it is switched off. An entry asks the
question when
- the question asks one thing, and every term of the entry's question is in it;
- every question word of the entry (what, who, how...) is one of the question's;
- every term of the question is in the entry (its question or answer), so nothing the operator
  added ("... in Zone C at night?") goes unanswered; a term counts when it and an entry term
  begin alike (charging, chargers), as two stems of one word may not;
- exactly one retrieved entry does, from a passage that was not trimmed to the budget (a trimmed
  one may have lost a sentence of the answer).
Anything else goes to the model as before.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from . import lexical
from .chunking import split_units
from .prompting import cite


@dataclass
class Row:
    key: str  # the code in the row's first cell, as the lexical index writes it (e-214)
    header: list[str]
    cells: list[str]
    source: str
    passage_text: str


@dataclass
class LookedUp:
    text: str
    sources: list[str]
    kind: str  # table_row or faq_entry: the stop reason of the answer


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def keyed_rows(passages) -> list[Row]:
    """The table rows of `passages` whose first cell is a single code, each row once."""
    rows, seen = [], set()
    for p in passages:
        parts = split_units(p.text)
        for unit in parts.units:
            if unit.table is None or (p.source, unit.text) in seen:
                continue
            cells = _cells(unit.text)
            key = lexical.concepts(cells[0])
            if len(key) == 1 and key[0] in lexical.identifiers(cells[0]) and key[0][0].isalpha():
                seen.add((p.source, unit.text))
                rows.append(Row(key[0], _cells(parts.headers[unit.table][0]), cells, cite(p), p.text))
    return rows


def _say(row: Row) -> str:
    said = [f"{name}: {cell.rstrip('.')}." for name, cell in zip(row.header[1:], row.cells[1:]) if cell]
    return f"{row.cells[0]} — " + " ".join(said)


def row_answer(question: str, passages) -> LookedUp | None:
    """The rows that answer `question` (rules in the module docstring), or None."""
    codes = [t for t in dict.fromkeys(lexical.identifiers(question)) if t[0].isalpha()]
    if not codes or len(lexical.question_parts(question)) > 1:
        return None
    rows = [r for r in keyed_rows(passages) if r.key in codes]
    if sorted(r.key for r in rows) != sorted(codes):  # a code without a row, or keying two rows
        return None
    covered = {t for text in {r.passage_text for r in rows} for t in lexical.terms(text)}  # two rows may share one
    if any(t not in covered for t in lexical.concepts(question)):
        return None
    rows.sort(key=lambda r: codes.index(r.key))
    return LookedUp(" ".join(_say(r) for r in rows), list(dict.fromkeys(r.source for r in rows)), "table_row")


_FAQ_ENTRY = re.compile(r"^\*\*(?P<question>[^*\n]+\?)\*\*[ \t]*(?P<answer>\S.*)$", re.MULTILINE)


@dataclass
class FaqEntry:
    question: str
    answer: str
    source: str


def faq_entries(passages) -> list[FaqEntry]:
    """The "**Question?** Answer" lines of the passages not trimmed to the budget, each once."""
    found = {}
    for p in passages:
        if not p.trimmed:
            for m in _FAQ_ENTRY.finditer(p.text):
                found.setdefault((cite(p), m["question"]), FaqEntry(m["question"].strip(), m["answer"].strip(), cite(p)))
    return list(found.values())


def _question_words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower())) & set(lexical.QUESTION_WORDS)


def _covered(term: str, known: set[str]) -> bool:
    # a shorter known term cannot share lexical.SAME_WORD_PREFIX letters with it
    return term in known or (len(term) >= lexical.SAME_WORD_PREFIX and any(
        k[:lexical.SAME_WORD_PREFIX] == term[:lexical.SAME_WORD_PREFIX] for k in known))


def _asks(entry: FaqEntry, question: str) -> bool:
    asked = set(lexical.concepts(question))
    entry_terms = set(lexical.terms(f"{entry.question} {entry.answer}"))
    return (set(lexical.concepts(entry.question)) <= asked
            and _question_words(entry.question) <= _question_words(question)
            and all(_covered(t, entry_terms) for t in asked))


def faq_answer(question: str, passages) -> LookedUp | None:
    """The answer of the one retrieved FAQ entry that asks `question` (rules in the module
    docstring), or None."""
    if len(lexical.question_parts(question)) > 1:
        return None
    matching = [e for e in faq_entries(passages) if _asks(e, question)]
    if len(matching) != 1:
        return None
    return LookedUp(matching[0].answer, [matching[0].source], "faq_entry")


def document_answer(question: str, passages) -> LookedUp | None:
    """A code's table row, else the FAQ entry that asks the question, else None (the model answers)."""
    return row_answer(question, passages) or faq_answer(question, passages)
