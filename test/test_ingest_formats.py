"""Manuals in the formats robots ship them: Markdown with front matter, Liquid tabs, HTML and code
(the shape of the TurtleBot 4 manual), an HTML page written by a real HTML writer (docutils) with
the navigation and footer a docs site has, and a PDF written by a real PDF writer (fpdf2) with an
outline; each becomes passages whose source names the file, the section and the page."""
from pathlib import Path

import pytest

from hola_ros.core.retrieval.chunking import ChunkingConfig, chunk_sections
from hola_ros.core.retrieval.documents import html_sections, markdown_sections, pdf_sections
from hola_ros.core.retrieval.ingest import IngestError, collect_sources, ingest, remove_documents
from hola_ros.core.retrieval.store import IndexStore

KB = Path(__file__).resolve().parent.parent / "data" / "kb"

JEKYLL_PAGE = """---
sort: 2
title: Ignored when the page has a heading
---

# Basic Setup {#basic-setup}

## Connect the Raspberry Pi to your network

{% tabs wifi %}
{% tab wifi humble %}
In your SSH session, run the setup tool:

```bash
# this comment is code, not a heading
turtlebot4-setup
```
{% endtab %}
{% tab wifi jazzy %}
Run `turtlebot4-setup` and pick **Wi-Fi Setup**.
{% endtab %}
{% endtabs %}

```note
The access point is a 5GHz network.
```

<table class="center-table">
  <thead><tr><th>Feature</th><th>TurtleBot 4 Lite</th><th>TurtleBot 4</th></tr></thead>
  <tbody>
    <tr><td>Weight</td><td>3270 g</td><td>3945 g</td></tr>
    <tr><td>User Power</td><td>VBAT @1.9A <br/> 5V @ Low current</td><td>12V @ 300 mA</td></tr>
  </tbody>
</table>

<figure><img src="media/x.png" alt="Render"/><figcaption>TurtleBot 4 top plate</figcaption></figure>

Site root: {{ site.baseurl }}.

!!! warning "Notice"
    Remove the battery before opening the chassis.
"""


def passages_of(sections):
    return [(c.heading, c.text) for c in chunk_sections(sections, ChunkingConfig())]


def test_markdown_page_with_front_matter_liquid_tabs_html_and_code():
    chunks = passages_of(markdown_sections(JEKYLL_PAGE))
    text = "\n".join(t for _, t in chunks)
    headings = [h for h, _ in chunks]
    assert "sort: 2" not in text and "{%" not in text and "{{" not in text and "{#" not in text
    # each Liquid tab is a sub-section named after it; the shell comment stays code inside it
    humble = next(t for h, t in chunks if h == "Basic Setup > Connect the Raspberry Pi to your network > humble")
    assert "# this comment is code, not a heading\nturtlebot4-setup" in humble
    assert not any("this comment" in h for h in headings)
    assert "Run `turtlebot4-setup` and pick **Wi-Fi Setup**." in dict(chunks)[
        "Basic Setup > Connect the Raspberry Pi to your network > jazzy"]
    # the HTML table inside the Markdown: rows whole under their header, line breaks as "; "
    assert "| Feature | TurtleBot 4 Lite | TurtleBot 4 |\n|---|---|---|\n| Weight | 3270 g | 3945 g |" in text
    assert "| User Power | VBAT @1.9A; 5V @ Low current | 12V @ 300 mA |" in text
    assert "Note: The access point is a 5GHz network." in text  # an admonition fence is prose
    assert "Warning (Notice): Remove the battery before opening the chassis." in text  # MkDocs admonition
    # after the tabs, the page goes on under the heading the tabs sat under
    assert any(h == "Basic Setup > Connect the Raspberry Pi to your network" and "5GHz" in t for h, t in chunks)
    assert "TurtleBot 4 top plate" in text and "Render" not in text  # the caption, not the image's alt text


def test_front_matter_title_heads_a_page_without_headings():
    [(heading, text)] = passages_of(markdown_sections("---\ntitle: Docking\n---\nPlace the robot on its dock.\n"))
    assert heading == "Docking" and text == "# Docking\nPlace the robot on its dock."


def docs_site_page(tmp_path: Path) -> Path:
    """A page of a documentation site: the demo KB's docking document as reStructuredText, written
    to HTML by docutils, inside the navigation, header and footer a site puts around it."""
    from docutils.core import publish_string

    rst = """Charging docks
==============

Robots charge at six docks. Use the nearest free dock.

Docking problems
----------------

If a robot fails to dock three times in a row, it shows error E-214.

=====  ==========================  ================
Dock   Location                    Notes
=====  ==========================  ================
CD-1   Zone A, north wall          fast charger
CD-5   maintenance bay (Zone M)    standard charger
=====  ==========================  ================
"""
    body = publish_string(rst, writer_name="html5", settings_overrides={"output_encoding": "unicode"})
    page = body.replace("<body>", "<body><header><a href='/'>Brightwater Depot docs</a></header>"
                                  "<nav><ul><li>Home</li><li>Zones</li><li>Charging docks</li></ul></nav>", 1)
    page = page.replace("</body>", "<footer>Copyright Brightwater Depot. Search this site.</footer>"
                                   "<script>var tracking = 'site analytics';</script></body>", 1)
    path = tmp_path / "site" / "docks.html"
    path.parent.mkdir(parents=True)
    path.write_text(page, encoding="utf-8")
    return path


def test_html_page_keeps_the_documents_structure_and_drops_the_sites_chrome(tmp_path):
    chunks = passages_of(html_sections(docs_site_page(tmp_path).read_text()))
    text = "\n".join(t for _, t in chunks)
    assert any(h == "Charging docks > Docking problems" and "error E-214" in t for h, t in chunks), chunks
    assert "| Dock | Location | Notes |\n|---|---|---|" in text
    assert "| CD-5 | maintenance bay (Zone M) | standard charger |" in text
    for chrome in ("Brightwater Depot docs", "Home", "Copyright", "tracking"):
        assert chrome not in text


def manual_pdf(path: Path) -> Path:
    """Three pages written by fpdf2 from the demo KB's documents, each page a section of the
    outline (bookmarks), as a PDF manual exported from a word processor has them."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for name, title in (("02-charging-docks.md", "Charging docks"), ("03-speed-limits.md", "Speed limits"),
                        ("06-safety.md", "Safety")):
        pdf.add_page()
        pdf.start_section(title)
        pdf.set_font("helvetica", "B", 16)
        pdf.cell(text=title, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("helvetica", size=11)
        lines = [line for line in (KB / name).read_text().splitlines() if line and not line.startswith(("#", "|---"))]
        pdf.multi_cell(0, 6, text="\n".join(lines).replace("—", "-").replace("**", ""))
    pdf.output(str(path))
    return path


def test_pdf_pages_become_passages_with_their_page_and_outline_section(tmp_path):
    sections = pdf_sections(manual_pdf(tmp_path / "manual.pdf"))
    assert [(s.page, s.heading) for s in sections] == [(1, "Charging docks"), (2, "Speed limits"), (3, "Safety")]
    chunks = chunk_sections(sections, ChunkingConfig())
    zone_c = [c for c in chunks if "0.8 m/s" in c.text]
    assert zone_c and all(c.page == 2 and c.text.startswith("# Speed limits\n") for c in zone_c)


def test_a_folder_of_markdown_html_and_pdf_is_ingested_with_provenance_idempotently(tmp_path):
    from hola_ros.core.retrieval.adacomp import AdaCompRetriever
    from hola_ros.core.retrieval.prompting import cite

    docs = tmp_path / "manual"
    (docs / "setup").mkdir(parents=True)
    (docs / "setup" / "basic.md").write_text(JEKYLL_PAGE)
    manual_pdf(docs / "manual.pdf")
    html = docs_site_page(tmp_path)
    assert [name for _, name in collect_sources([docs, html])] == ["manual.pdf", "setup/basic.md", "docks.html"]

    index = tmp_path / "index"
    first = ingest(index, [docs, html])
    assert len(first.added) == 3 and first.total_passages > 5
    again = ingest(index, [docs, html])
    assert not again.changed and len(again.unchanged) == 3 and again.new_passages == 0

    retriever = AdaCompRetriever(index)
    speed = retriever.retrieve("What is the speed limit in the Zone C aisles?", mode="single")
    top = speed.passages[0]
    assert (top.source, top.page, top.section, cite(top)) == ("manual.pdf", 2, "Speed limits", "manual.pdf#page=2")
    weight = retriever.retrieve("How much does the TurtleBot 4 weigh?", mode="single")
    assert weight.passages[0].source == "setup/basic.md" and "3945 g" in weight.passages[0].text

    removed = remove_documents(index, [docs / "manual.pdf"])
    assert removed.removed == [str((docs / "manual.pdf").resolve())]
    assert {p["source"] for p in IndexStore.load(index).passages} == {"setup/basic.md", "docks.html"}
    with pytest.raises(IngestError, match="not in the index"):
        remove_documents(index, [docs / "manual.pdf"])
    with pytest.raises(IngestError, match="would leave the index .* empty"):
        remove_documents(index, [docs, html])
