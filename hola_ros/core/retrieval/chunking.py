"""Split documents into passages along their structure: sentences, list items and table rows.

A passage is built from whole units (a sentence of prose, a list item, a table row) of one
Markdown section, up to `size` words; a unit longer than that stays whole. Every passage of a
Markdown section starts with its heading path as a heading line (`# Charging docks > Docking
problems`), and every passage that holds rows of a table repeats the table's header row, so a
row is never read without its column names. Consecutive passages of a section share whole
trailing units up to `overlap` words.

The passage text keeps that structure on lines (heading line, table header, one row or list
item per line, a paragraph's sentences on one line), so `split_units` can take a passage
apart again and `adacomp.fit_budget` can trim it by whole units.
Windows are counted in words (tokenizer-independent, so the index does not depend on the LM);
the context budget is enforced later in LM tokens.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

_HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")
_TABLE_SEPARATOR = re.compile(r"^\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
# a sentence ends at . ! ? (optionally closed by a quote or bracket) followed by space and a capital,
# a digit or an opening mark; "e.g. the" and "3.2 m" do not end one
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(*])")
_ABBREVIATION = re.compile(r"(?:\b(?:e\.g|i\.e|etc|approx|no|vs|fig|max|min)\.|\b[A-Z]\.)$", re.IGNORECASE)
CHUNKER = "structured-1"  # recorded in the manifest: passages depend on it


@dataclass(frozen=True)
class ChunkingConfig:
    size: int = 120  # words per chunk (whole units; one oversized unit stays whole)
    overlap: int = 24  # words of whole trailing units shared by consecutive chunks of one section

    def __post_init__(self):
        if self.size < 8:
            raise ValueError(f"chunk size must be >= 8 words, got {self.size}")
        if not 0 <= self.overlap < self.size:
            raise ValueError(f"chunk overlap must be in [0, size), got {self.overlap} (size {self.size})")

    def as_dict(self) -> dict:
        return asdict(self) | {"unit": "words", "chunker": CHUNKER}

    @classmethod
    def from_dict(cls, d: dict) -> "ChunkingConfig":
        """The config of a manifest's `chunking` (as written by `as_dict`)."""
        return cls(size=d["size"], overlap=d["overlap"])


@dataclass
class Block:
    """A paragraph (units = sentences), a list (units = items) or a table (units = rows)."""
    kind: str  # "prose", "list" or "table"
    units: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)  # a table's header row and separator line


def split_sentences(text: str) -> list[str]:
    parts, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if _ABBREVIATION.search(text[start:m.start()]):
            continue
        parts.append(text[start:m.start()].strip())
        start = m.end()
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _sections(text: str, markdown: bool) -> list[tuple[str, list[str]]]:
    """(heading path, body lines) pairs; the heading path gives each chunk its topic."""
    if not markdown:
        return [("", text.splitlines())]
    out, path, body = [], [], []
    for line in text.splitlines():
        m = _HEADING.match(line)
        if m:
            out.append((" > ".join(t for _, t in path), body))
            level = len(m.group(1))
            path = [(lv, t) for lv, t in path if lv < level] + [(level, m.group(2))]
            body = []
        else:
            body.append(line)
    out.append((" > ".join(t for _, t in path), body))
    return [(h, b) for h, b in out if any(line.strip() for line in b)]


def parse_blocks(lines: list[str], markdown: bool = True) -> list[Block]:
    """Paragraphs, lists and (Markdown) tables of one section, in order."""
    blocks: list[Block] = []
    for line in lines:
        stripped = line.strip()
        last = blocks[-1] if blocks else None
        if not stripped:
            if last is not None and last.kind != "table":
                blocks.append(Block("break"))  # a blank line ends a paragraph or a list
            continue
        if markdown and stripped.startswith("|"):
            if last is None or last.kind != "table":
                blocks.append(Block("table", header=[stripped]))
            elif len(last.header) == 1 and not last.units and _TABLE_SEPARATOR.match(stripped):
                last.header.append(stripped)
            else:
                last.units.append(stripped)
        elif markdown and _LIST_ITEM.match(line):
            if last is None or last.kind != "list":
                blocks.append(Block("list"))
            blocks[-1].units.append(stripped)
        elif last is not None and last.kind in ("list", "prose") and last.units:
            last.units[-1] += " " + stripped  # a wrapped line continues the item or paragraph
        else:
            blocks.append(Block("prose", [stripped]))
    out = []
    for b in blocks:
        if b.kind == "table" and len(b.header) == 1:  # no separator line: a pipe-started paragraph
            b = Block("table", units=b.header)
        if b.kind == "prose":
            b = Block("prose", [s for u in b.units for s in split_sentences(u)])
        if b.kind != "break" and (b.units or b.header):
            out.append(b)
    return out


def _render(pieces: list[tuple[int, Block, str]]) -> str:
    """Units of one chunk as lines: a paragraph's sentences on one line, a table with its header."""
    lines, prev = [], None
    for block_id, block, unit in pieces:
        if block_id != prev and block.kind == "table":
            lines += block.header
        if block_id == prev and block.kind == "prose":
            lines[-1] += " " + unit
        else:
            lines.append(unit)
        prev = block_id
    return "\n".join(lines)


def _words(text: str) -> int:
    return len(text.split())


def chunk_text(text: str, config: ChunkingConfig = ChunkingConfig(), markdown: bool = False) -> list[str]:
    """Chunks of whole units, at most `config.size` words each (plus the heading and table header)."""
    chunks = []
    for heading, lines in _sections(text, markdown):
        units = [(i, b, u) for i, b in enumerate(parse_blocks(lines, markdown)) for u in b.units]
        prefix = f"# {heading}\n" if heading else ""
        start = 0
        while start < len(units):
            end, words = start, 0
            while end < len(units) and (end == start or words + _words(units[end][2]) <= config.size):
                words += _words(units[end][2])
                end += 1
            chunks.append(prefix + _render(units[start:end]))
            if end >= len(units):
                break
            back, shared = end, 0  # whole trailing units up to `overlap` words start the next chunk
            while back - 1 > start and shared + _words(units[back - 1][2]) <= config.overlap:
                back -= 1
                shared += _words(units[back][2])
            start = back
    return chunks


@dataclass
class Unit:
    line: int  # line of the passage body it sits on (a paragraph's sentences share one)
    text: str
    table: int | None = None  # line where its table's rows start (keys PassageUnits.headers)


@dataclass
class PassageUnits:
    """A passage taken apart: lines that always stay (heading, table headers) and trimmable units."""
    heading: str
    units: list[Unit]
    headers: dict[int, list[str]]  # a table's first row line -> its header row and separator


def split_units(text: str) -> PassageUnits:
    """Inverse of the chunk layout: the heading line, table headers, rows, items and sentences."""
    lines = text.split("\n")
    heading = lines[0] if lines and lines[0].startswith("# ") else ""
    body = [line.strip() for line in (lines[1:] if heading else lines)]
    units, headers, table, n = [], {}, None, 0
    while n < len(body):
        line = body[n]
        if line.startswith("|") and n + 1 < len(body) and _TABLE_SEPARATOR.match(body[n + 1]):
            table = n + 2
            headers[table] = [line, body[n + 1]]
            n += 2
            continue
        if not line.startswith("|"):
            table = None
        if line.startswith("|") or _LIST_ITEM.match(line):
            units.append(Unit(n, line, table))
        else:
            units += [Unit(n, s) for s in split_sentences(line)]
        n += 1
    return PassageUnits(heading, units, headers)


def join_units(parts: PassageUnits, keep) -> str:
    """The passage text with only the units at the indices `keep` (in passage order)."""
    lines, line_of, table_of = ([parts.heading] if parts.heading else []), None, None
    for i in sorted(keep):
        unit = parts.units[i]
        if unit.table is not None and unit.table != table_of:
            lines += parts.headers[unit.table]
        if unit.line == line_of and unit.table is None:
            lines[-1] += " " + unit.text
        else:
            lines.append(unit.text)
        line_of, table_of = unit.line, unit.table
    return "\n".join(lines)
