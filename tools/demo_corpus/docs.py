"""Readers for technical documentation: the Python docs' reST sources, man pages, the Debian
Administrator's Handbook and Debian changelogs (R8, R10, R11 in shared/reference/offline-corpora.md)."""

from __future__ import annotations

import gzip
import hashlib
import html.parser
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tools.demo_corpus.units import Context, Unit, long_units, merge_small, shuffled


PYDOC_ROOT = "usr/share/doc/python3.11/html/_sources"
PYDOC_FOLDERS = ("tutorial", "howto", "faq", "library", "reference", "c-api", "extending", "using", "whatsnew")
# A directive with its options and body: the lines after it that are indented deeper, and blank lines.
RST_DROP = re.compile(r"^([ \t]*)\.\. (?:index|_[^:]+|toctree|highlight|testsetup|testcleanup|moduleauthor|"
                      r"sectionauthor|module|currentmodule)::?.*\n(?:\1[ \t]+.*\n|[ \t]*\n)*",
                      flags=re.MULTILINE)
RST_HEADING_RULE = re.compile(r"^([=\-~^*#+`'\"])\1{2,}\s*$", flags=re.MULTILINE)


def _clean_rst(text: str) -> str:
    """R8: drop index/label/toctree blocks and heading rules; keep code blocks; roles -> plain text."""
    text = RST_DROP.sub("", text)
    role = r":[\w:-]+:`~?(?:([^`<]*?)\s*<[^>`]*>|([^`]*))`"  # :func:`~a.b` and :ref:`text <label>`
    text = re.sub(role, lambda m: (m.group(1) or m.group(2)).lstrip("~!"), text)
    text = re.sub(r"`([^`<]+?)\s*<[^>`]+>`__?", r"\1", text)
    text = RST_HEADING_RULE.sub("", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def read_python_docs(ctx: Context) -> Iterator[Unit]:
    """R8: the reST sources of the Python 3.11 docs, split into sections (headings kept)."""
    root = ctx.path("deb:python3.11-doc", PYDOC_ROOT)
    units = []
    for folder in PYDOC_FOLDERS:
        for path in sorted((root / folder).rglob("*.rst.txt")):
            rel = path.relative_to(root).as_posix().removesuffix(".rst.txt")
            raw = path.read_text(encoding="utf-8", errors="replace")
            # Split before a heading line (text followed by a rule of -, =, ~ or ^).
            sections = re.split(r"\n(?=[^\n]+\n[=\-~^]{3,}\s*\n)", raw)
            units += merge_small([(f"pydoc:{rel}:{i}", _clean_rst(s)) for i, s in enumerate(sections)])
    return shuffled([u for label, text in units for u in long_units(label, text)], ctx.rng)


def read_man_pages(ctx: Context) -> Iterator[Unit]:
    """R10: every English man page on the machine except the generated gcloud ones, rendered at 80 columns."""
    if not shutil.which("man") or not shutil.which("col"):
        raise RuntimeError("`man` and `col` are needed (apt-get install man-db bsdextrautils)")
    pages = sorted(p for p in Path("/usr/share/man").glob("man[1-8]/*")
                   if p.is_file() and not p.is_symlink() and not p.name.startswith("gcloud"))
    ctx.rng.shuffle(pages)
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}
    for page in pages:
        try:
            # --nh --nj: no hyphenation or justification, so words are not split across lines.
            rendered = subprocess.run(["man", "--nh", "--nj", "-l", str(page)], capture_output=True,
                                      env=env, timeout=30).stdout
            text = subprocess.run(["col", "-bx"], input=rendered, capture_output=True, timeout=30).stdout
        except subprocess.TimeoutExpired:
            continue
        text = text.decode("utf-8", errors="replace").strip()
        if len(text) > 200 and "\ufffd" not in text:
            yield from long_units(f"man:{page.parent.name}/{page.name.removesuffix('.gz')}", text)


class _HTMLText(html.parser.HTMLParser):
    """R11: visible text, a newline at block tags, <pre> kept verbatim."""

    SKIP = {"script", "style", "head", "nav"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table", "dt", "dd", "section"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        if tag in self.BLOCK:
            self.parts.append("\n\n" if tag != "br" else "\n")
        self.pre += tag == "pre"

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        if tag in self.BLOCK:
            self.parts.append("\n\n")
        if tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))

    NAV = {"Download the ebook", "Prev", "Next", "Up", "Home", "The Debian Administrator's Handbook"}

    def text(self) -> str:
        lines = (line.rstrip() for line in "".join(self.parts).splitlines())
        # Outside <pre>, collapsed whitespace leaves one leading space; navigation links are noise.
        lines = (line[1:] if line.startswith(" ") and not line.startswith("  ") else line for line in lines)
        lines = (line for line in lines if line.strip() not in self.NAV)
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def read_debian_handbook(ctx: Context) -> Iterator[Unit]:
    root = ctx.path("deb:debian-handbook", "usr/share/doc/debian-handbook/html/en-US")
    units = []
    for path in sorted(root.glob("*.html")):
        parser = _HTMLText()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        units += long_units(f"debian-handbook:{path.stem}", parser.text())
    return shuffled(units, ctx.rng)


def read_changelogs(ctx: Context) -> Iterator[Unit]:
    """The newest ~50 lines of each distinct changelog.Debian.gz on the machine."""
    units, seen = [], set()
    for path in sorted(Path("/usr/share/doc").glob("*/changelog.Debian.gz")):
        try:
            text = gzip.open(path).read().decode("utf-8", errors="replace")
        except (OSError, EOFError):
            continue
        head = "\n".join(text.splitlines()[:50]).strip()
        digest = hashlib.sha1(head.encode()).digest()
        if head and digest not in seen:
            seen.add(digest)
            units.append((f"changelog:{path.parent.name}", head))
    return shuffled(units, ctx.rng)
