"""Split documents into passages along their structure: sentences, list items, table rows, code lines.

Documents arrive as sections of blocks (`documents.py` reads Markdown, HTML, PDF and plain text).
A passage is built from whole units (a sentence of prose, a list item, a table row, a line of
code) of one section, up to `size` words; a unit longer than that stays whole. Every passage of a
section starts with its heading path as a heading line (`# Charging docks > Docking
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

_TABLE_SEPARATOR = re.compile(r"^\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
# a sentence ends at . ! ? (optionally closed by a quote or bracket) followed by space and a capital,
# a digit or an opening mark; "e.g. the" and "3.2 m" do not end one
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(*])")
_ABBREVIATION = re.compile(r"(?:\b(?:e\.g|i\.e|etc|approx|no|vs|fig|max|min)\.|\b[A-Z]\.)$", re.IGNORECASE)
CHUNKER = "structured-2"  # recorded in the manifest: passages depend on it (2: Markdown via markdown-it, HTML, PDF pages)


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
    """A paragraph (units = sentences), a list (units = items), a table (units = rows) or code
    (units = lines)."""
    kind: str  # "prose", "list", "table" or "code"
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


@dataclass
class Chunk:
    text: str
    heading: str = ""  # the section's heading path (also the passage's first line)
    page: int = 0  # the PDF page it comes from; 0: not paged


def chunk_sections(sections, config: ChunkingConfig = ChunkingConfig()) -> list[Chunk]:
    """Chunks of whole units of each section (`documents.Section`), at most `config.size` words
    each (plus the heading and table header)."""
    chunks = []
    for section in sections:
        units = [(i, b, u) for i, b in enumerate(section.blocks) for u in b.units]
        prefix = f"# {section.heading}\n" if section.heading else ""
        start = 0
        while start < len(units):
            end, words = start, 0
            while end < len(units) and (end == start or words + _words(units[end][2]) <= config.size):
                words += _words(units[end][2])
                end += 1
            chunks.append(Chunk(prefix + _render(units[start:end]), section.heading, section.page))
            if end >= len(units):
                break
            back, shared = end, 0  # whole trailing units up to `overlap` words start the next chunk
            while back - 1 > start and shared + _words(units[back - 1][2]) <= config.overlap:
                back -= 1
                shared += _words(units[back][2])
            start = back
    return chunks


def chunk_text(text: str, config: ChunkingConfig = ChunkingConfig(), markdown: bool = False) -> list[str]:
    """Chunk texts of a Markdown document (`documents.markdown_sections`) or of plain text."""
    from .documents import Section, markdown_sections, text_blocks

    sections = markdown_sections(text) if markdown else [Section("", text_blocks(text.splitlines()))]
    return [c.text for c in chunk_sections(sections, config)]


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
