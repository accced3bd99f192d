"""Documents as sections of blocks (paragraphs, lists, tables, code), whatever their format.

Markdown, HTML and PDF manuals reach the chunker in one shape: a `Section` is a heading path
("Setup > Networking > Humble") with its blocks and, for a PDF, its page. `chunking.chunk_sections`
packs them into passages.

- **Markdown** (`markdown_sections`): YAML front matter is read by `python-frontmatter` (its title
  heads a document that has no heading of its own); Liquid templating (Jekyll sites such as the
  TurtleBot 4 manual) is resolved the way the site shows it: a `{% tab group label %}` starts a
  sub-section named after its tab (the manual's per-ROS-distribution instructions), every other
  `{% ... %}` tag and `{{ ... }}` output is dropped (its includes and variables are the site's, not
  the document's); kramdown heading ids and MkDocs admonitions are read as the site shows them. The Markdown is then rendered by `markdown-it-py` (CommonMark with GFM tables,
  raw HTML passed through), so HTML inside Markdown (tables, figures, details) and Markdown itself
  come out as one HTML tree, read by `html_sections`. Fenced blocks stay code, line by line (a `#`
  comment in a shell block is no heading); a fence whose info string is an admonition (note,
  warning, tip, ...) is prose.
- **HTML** (`html_sections`, parser `selectolax`): the page's `<main>` / `<article>` (else its
  body), without navigation, header, footer, aside, script, style and form elements; headings
  give the section path; `<p>`, lists, tables (header row from `<th>` or the first row), `<pre>`,
  `<figcaption>`, `<dt>/<dd>`, `<blockquote>` become blocks; inline `<strong>` stays `**bold**`
  (the FAQ look-up reads "**Question?** Answer" lines), `<em>` `*emphasis*`, `<code>` `` `code` ``, `<br>` in a
  table cell becomes "; ", images are left out (a figure's caption is read).
- **PDF** (`pdf_sections`, `pypdf`): one section per page (its number is the passage's page),
  headed by the document's outline (bookmarks) where it has one; a page's lines are joined into
  paragraphs, and bullet lines (•, ▪, –) into list items.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .chunking import Block, split_sentences

ADMONITIONS = frozenset({"note", "warning", "tip", "danger", "caution", "important", "info", "attention", "hint"})
BOILERPLATE = ("nav", "header", "footer", "aside", "script", "style", "noscript", "form", "template", "svg",
               "button", "[role=navigation]", "[role=banner]", "[role=contentinfo]", "[role=search]")
_LIQUID_TAB = re.compile(r"^\s*\{%-?\s*tab\s+\S+\s+(?P<label>[^%]+?)\s*-?%\}\s*$")
_LIQUID_END_TABS = re.compile(r"^\s*\{%-?\s*endtabs\s*-?%\}\s*$")
_LIQUID_TAG = re.compile(r"\{%-?.*?-?%\}|\{\{.*?\}\}", re.DOTALL)
_ATX = re.compile(r"^(#{1,6})\s")
_ATTRIBUTES = re.compile(r"\s*\{:?\s*[#.][\w\-. #]*\}\s*$")
_ADMONITION = re.compile(r"^!!!\s*(\w+)(?:\s+\"([^\"]*)\")?\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_BLOCK_TAGS = frozenset(_HEADINGS + (
    "p", "div", "section", "article", "main", "body", "html", "ul", "ol", "li", "table", "thead", "tbody", "tfoot",
    "tr", "td", "th", "pre", "blockquote", "figure", "figcaption", "dl", "dt", "dd", "details", "summary", "caption",
    "hr", "img", "center", "address", "fieldset", "header", "footer", "nav", "aside"))
_BULLET = re.compile(r"^\s*[•▪◦●–]\s*")
_CAPTION = re.compile(r"^[^a-z]*[A-Z]{3}[^a-z]*$")  # no lower-case letter, some capitals
_ENDED = re.compile(r"[.!?:;]$")


@dataclass
class Section:
    heading: str  # heading path, "A > B"; "" before the first heading
    blocks: list[Block] = field(default_factory=list)
    page: int = 0  # 1-based page of a PDF; 0: not paged


# ---- Markdown ---------------------------------------------------------------------------------
def markdown_sections(text: str) -> list[Section]:
    import frontmatter

    try:
        meta, body = frontmatter.parse(text)
    except Exception:  # a malformed front matter block: keep the text as it is
        meta, body = {}, text
    html = _markdown_renderer().render(resolve_templating(body))
    sections = html_sections(html, whole_page=True)
    title = str(meta.get("title") or "").strip()
    if title and sections and not sections[0].heading:
        sections[0].heading = title
    return sections


_renderer = None


def _markdown_renderer():
    global _renderer
    if _renderer is None:
        from markdown_it import MarkdownIt

        _renderer = MarkdownIt("commonmark", {"html": True}).enable("table")
    return _renderer


def resolve_templating(text: str) -> str:
    """The page as a reader of the built site sees it: a Liquid tab's label heads its content one
    level below the heading it sits under; other Liquid tags and outputs are dropped; kramdown
    attribute lists (`## Setup {#setup}`) go; a MkDocs admonition (`!!! warning "Notice"` and its
    indented body) becomes a paragraph "Warning: ...". Fenced code is left alone."""
    out, last_heading, fenced, admonition = [], "#", False, False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        if fenced:
            out.append(line)
            continue
        heading, tab, note = _ATX.match(line), _LIQUID_TAB.match(line), _ADMONITION.match(line)
        if heading:
            last_heading = _ATTRIBUTES.sub("", line)
        if tab:
            level = len(_ATX.match(last_heading + " ").group(1)) if last_heading.startswith("#") else 1
            out += ["", f"{'#' * min(level + 1, 6)} {tab.group('label').strip()}", ""]
        elif _LIQUID_END_TABS.match(line) and last_heading.strip("# "):
            out += ["", last_heading, ""]  # after the tabs, the page goes on under the heading they sat under
        elif note:
            title = f" ({note.group(2)})" if note.group(2) else ""
            out += ["", f"{note.group(1).capitalize()}{title}:"]
            admonition = True
        elif admonition and (line.startswith("    ") or not line.strip()):
            out.append(line.strip())
        else:
            admonition = False
            out.append(_ATTRIBUTES.sub("", _LIQUID_TAG.sub("", line)))
    return "\n".join(out)


# ---- HTML -------------------------------------------------------------------------------------
def html_sections(html: str, whole_page: bool = False) -> list[Section]:
    """Sections of an HTML page. whole_page: the markup is a document's own content (rendered
    Markdown), so no boilerplate is looked for."""
    from selectolax.lexbor import LexborHTMLParser as HTMLParser

    tree = HTMLParser(html)
    root = tree.body or tree.root
    if not whole_page:
        for node in tree.css(", ".join(BOILERPLATE)):
            node.decompose()
        root = tree.css_first("main") or tree.css_first("[role=main]") or tree.css_first("article") or root
    reader = _HtmlReader()
    if root is not None:
        reader.walk(root)
    return [s for s in reader.sections if s.blocks]


class _HtmlReader:
    def __init__(self):
        self.path: list[tuple[int, str]] = []
        self.sections = [Section("")]

    def _heading(self, level: int, text: str) -> None:
        self.path = [(lv, t) for lv, t in self.path if lv < level] + [(level, text)]
        self.sections.append(Section(" > ".join(t for _, t in self.path)))

    def _add(self, kind: str, units: list[str], header: list[str] | None = None) -> None:
        units = [u for u in units if u]
        if units:
            self.sections[-1].blocks.append(Block(kind, units, header or []))

    def walk(self, node) -> None:
        run = []  # consecutive text and inline elements: one paragraph
        for child in node.iter(include_text=True):
            if child.tag == "-text" or child.tag not in _BLOCK_TAGS:
                run.append(child)
                continue
            self._paragraph(run)
            run = []
            tag = child.tag
            if tag in _HEADINGS:
                text = inline_text(child)
                if text:
                    self._heading(int(tag[1]), text)
            elif tag in ("p", "figcaption", "dt", "dd", "caption", "summary"):
                self._add("prose", split_sentences(inline_text(child)))
            elif tag in ("ul", "ol"):
                self._add("list", list_items(child))
            elif tag == "table":
                header, rows = table_rows(child)
                self._add("table", rows, header)
            elif tag == "pre":
                self._code(child)
            elif tag not in ("hr", "img"):  # an image alone says nothing; figure captions are read as prose
                self.walk(child)
        self._paragraph(run)

    def _paragraph(self, run: list) -> None:
        self._add("prose", split_sentences(_squash("".join(_inline(n) for n in run))))

    def _code(self, node) -> None:
        code = node.css_first("code")
        language = next((c[len("language-"):] for c in (code.attributes.get("class") or "").split()
                         if c.startswith("language-")), "") if code is not None else ""
        text = (code or node).text(deep=True)
        if language.lower() in ADMONITIONS:  # ```note: a remark to read, not code
            self._add("prose", split_sentences(f"{language.capitalize()}: {_squash(text)}"))
        else:
            self._add("code", [line.rstrip() for line in text.strip("\n").splitlines() if line.strip()])


def _squash(text: str) -> str:
    return " ".join(text.split())


def inline_text(node) -> str:
    """A node's text on one line: **bold**, *emphasis* and `code` kept (as Markdown writes them),
    line breaks as "; ", no images."""
    return _squash(re.sub(r"\s*(;\s*)+", "; ", "".join(_inline(c) for c in node.iter(include_text=True))).strip(" ;"))


def _inline(node) -> str:
    tag = node.tag
    if tag == "-text":
        return node.text(deep=False)
    if tag in ("strong", "b"):
        inner = inline_text(node)
        return f"**{inner}**" if inner else ""
    if tag in ("em", "i"):
        inner = inline_text(node)
        return f"*{inner}*" if inner else ""
    if tag == "code":
        inner = _squash(node.text(deep=True))
        return f"`{inner}`" if inner else ""
    if tag == "br":
        return "; "
    if tag == "img":
        return ""  # alt texts name pictures ("Standard Render"); a figure's caption is read as prose
    if tag in ("ul", "ol"):
        return " " + "; ".join(list_items(node)) + " "
    if tag in ("script", "style", "-comment"):
        return ""
    inner = inline_text(node)
    return f" {inner} " if tag in _BLOCK_TAGS else inner


def list_items(node) -> list[str]:
    marker = (lambda i: f"{i}.") if node.tag == "ol" else (lambda i: "-")
    items = [c for c in node.iter() if c.tag == "li"]
    return [f"{marker(i)} {text}" for i, text in enumerate((inline_text(li) for li in items), 1) if text]


def table_rows(node) -> tuple[list[str], list[str]]:
    """A table as Markdown rows: (header row and separator, body rows). The header comes from the
    `<th>` row, else the first row."""
    rows = [[inline_text(cell).replace("|", "/") for cell in tr.iter() if cell.tag in ("td", "th")]
            for tr in node.css("tr")]
    rows = [r for r in rows if any(r)]
    if not rows:
        return [], []
    width = max(len(r) for r in rows)
    line = lambda cells: "| " + " | ".join(cells + [""] * (width - len(cells))) + " |"  # noqa: E731
    return [line(rows[0]), "|" + "|".join(["---"] * width) + "|"], [line(r) for r in rows[1:]]


# ---- PDF --------------------------------------------------------------------------------------
def pdf_sections(path) -> list[Section]:
    """One section per page with text, headed by the outline entry that covers the page."""
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    headings = _outline_headings(reader)
    sections = []
    for number, page in enumerate(reader.pages, 1):
        blocks = text_blocks((page.extract_text() or "").splitlines())
        if blocks:
            sections.append(Section(headings.get(number, ""), blocks, number))
    return sections


def _outline_headings(reader) -> dict[int, str]:
    """Page number -> heading path of the last outline entry starting at or before it."""
    starts: list[tuple[int, str]] = []

    def visit(items, path):
        last = None
        for item in items:
            if isinstance(item, list):
                if last is not None:
                    visit(item, path + [last])
                continue
            try:
                page = reader.get_destination_page_number(item) + 1
            except Exception:  # an entry without a page (an action, a broken destination)
                continue
            last = _squash(str(item.title))
            starts.append((page, " > ".join(path + [last])))

    try:
        visit(reader.outline, [])
    except Exception:  # a malformed outline: pages keep no heading
        return {}
    starts.sort(key=lambda s: s[0])
    out, current, i = {}, "", 0
    for number in range(1, len(reader.pages) + 1):
        while i < len(starts) and starts[i][0] <= number:
            current = starts[i][1]
            i += 1
        out[number] = current
    return out


def text_blocks(lines: list[str]) -> list[Block]:
    """Plain text lines (a PDF page) as blocks: blank lines end a paragraph, a bullet line starts
    a list item, a line in capitals (a heading) stands alone, and any other line continues the
    paragraph before it, or the item before it unless that one ended (. ! ? : ;)."""
    blocks: list[Block] = []
    for line in lines:
        text = _squash(line)
        if not text:
            if blocks and blocks[-1].kind != "break":
                blocks.append(Block("break"))
            continue
        last = blocks[-1] if blocks else None
        if _BULLET.match(line):
            if last is None or last.kind != "list":
                blocks.append(Block("list"))
            blocks[-1].units.append("- " + _BULLET.sub("", line).strip())
        elif _CAPTION.match(text):  # a line in capitals (a PDF's heading): a paragraph of its own
            blocks += [Block("prose", [text]), Block("break")]
        elif last is not None and (last.kind == "prose" or (last.kind == "list" and not _ENDED.search(last.units[-1]))):
            last.units[-1] += " " + text  # a wrapped line: the paragraph or unfinished item goes on
        else:
            blocks.append(Block("prose", [text]))
    return [Block("prose", split_sentences(b.units[0])) if b.kind == "prose" else b
            for b in blocks if b.kind != "break" and b.units]
