"""Answers read off a table row: a question about a code (E-214, CD-5) that keys a row of a
retrieved table is answered with that row, cell by cell under its column names, without a
generation.

The small models misread rows they were given (the 0.5B answered "Where is charging dock CD-5?"
with "CD-5" and then with a refusal, the CD-5 row in its context; "CD-1 and CD-3" with CD-1's
location for both), and a code's row is exactly what an operator asks for. So a row answers when
- every code the question names (letter-first identifiers) keys exactly one row of the retrieved
  tables (the row's first cell is that code and nothing else);
- the question asks one thing (no second clause: "... mean, and at what temperature ...");
- every term of the question occurs in the passages that hold those rows (their heading, column
  names, rows and prose), so the question asks about the row and nothing else.
Anything else goes to the model as before.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import lexical
from .chunking import split_units


@dataclass
class Row:
    key: str  # the code in the row's first cell, as the lexical index writes it (e-214)
    header: list[str]
    cells: list[str]
    source: str
    passage_text: str


@dataclass
class RowAnswer:
    text: str
    sources: list[str]


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
                rows.append(Row(key[0], _cells(parts.headers[unit.table][0]), cells, p.source, p.text))
    return rows


def _say(row: Row) -> str:
    said = [f"{name}: {cell.rstrip('.')}." for name, cell in zip(row.header[1:], row.cells[1:]) if cell]
    return f"{row.cells[0]} — " + " ".join(said)


def row_answer(question: str, passages) -> RowAnswer | None:
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
    return RowAnswer(" ".join(_say(r) for r in rows), list(dict.fromkeys(r.source for r in rows)))
