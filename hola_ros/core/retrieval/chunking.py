"""Split documents into overlapping word windows, keeping Markdown section headings.

Windows are counted in words (tokenizer-independent, so the index does not depend on the LM);
the context budget is enforced later in LM tokens by `adacomp.fit_budget`.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

_HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")


@dataclass(frozen=True)
class ChunkingConfig:
    size: int = 120  # words per chunk
    overlap: int = 24  # words shared by consecutive chunks of one section

    def __post_init__(self):
        if self.size < 8:
            raise ValueError(f"chunk size must be >= 8 words, got {self.size}")
        if not 0 <= self.overlap < self.size:
            raise ValueError(f"chunk overlap must be in [0, size), got {self.overlap} (size {self.size})")

    def as_dict(self) -> dict:
        return asdict(self) | {"unit": "words"}


def _sections(text: str, markdown: bool) -> list[tuple[str, str]]:
    """(heading path, body) pairs; the heading path gives each chunk its topic."""
    if not markdown:
        return [("", text)]
    out, path, body = [], [], []
    for line in text.splitlines():
        m = _HEADING.match(line)
        if m:
            out.append((" > ".join(t for _, t in path), "\n".join(body)))
            level = len(m.group(1))
            path = [(lv, t) for lv, t in path if lv < level] + [(level, m.group(2))]
            body = []
        else:
            body.append(line)
    out.append((" > ".join(t for _, t in path), "\n".join(body)))
    return [(h, b) for h, b in out if b.strip()]


def chunk_text(text: str, config: ChunkingConfig = ChunkingConfig(), markdown: bool = False) -> list[str]:
    """Chunks of at most `config.size` words (plus the heading line for Markdown sections)."""
    chunks = []
    step = config.size - config.overlap
    for heading, body in _sections(text, markdown):
        words = re.findall(r"\S+\s*", body)  # keep the original line breaks (tables, lists)
        prefix = f"{heading}\n" if heading else ""
        start = 0
        while start < len(words):
            chunks.append(prefix + "".join(words[start:start + config.size]).strip())
            if start + config.size >= len(words):
                break
            start += step
    return chunks
