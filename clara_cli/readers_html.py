"""HTML pages as plain text (readers.py reads .html/.htm/.xhtml files through html_to_text): the
visible text, scripts and styles dropped, block elements on their own lines, <pre> kept as is."""

from __future__ import annotations

import re
from html.parser import HTMLParser

_LINE, _PARA = "\x01", "\x02"  # separator marks (removed from the page text itself)


class _HTMLText(HTMLParser):
    """Visible text of an HTML page: scripts and styles dropped, block elements on their own lines."""

    SKIP = {"script", "style", "noscript", "template", "svg", "head"}
    PARAGRAPH = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "table", "ul", "ol",
                 "dl", "section", "article", "header", "footer", "nav", "aside", "main", "figure",
                 "form", "fieldset", "details", "address", "hr", "title"}
    LINE = {"br", "div", "li", "dt", "dd", "tr", "caption", "figcaption", "summary", "option",
            "body", "html"}
    CELL = {"td", "th"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.pre = 0
        self.in_head_title = False

    def handle_starttag(self, tag, attrs):
        if tag == "title":  # keep the title even though it lives in <head>
            self.in_head_title = True
        if tag in self.SKIP:
            self.skip += 1
        elif tag == "pre":
            self.pre += 1
        self._separate(tag)

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_head_title = False
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
        self._separate(tag)

    def handle_startendtag(self, tag, attrs):
        self._separate(tag)

    def _separate(self, tag):
        if tag in self.PARAGRAPH:
            self.parts.append(_PARA)
        elif tag in self.LINE:
            self.parts.append(_LINE)
        elif tag in self.CELL:
            self.parts.append(" ")

    def handle_data(self, data):
        if self.skip and not self.in_head_title:
            return
        data = data.replace(_LINE, " ").replace(_PARA, " ")
        self.parts.append(data if self.pre else re.sub(r"[ \t\n\r\f\v]+", " ", data))

    def text(self) -> str:
        # A run of separators (and the spaces around them) becomes one line or paragraph break.
        raw = re.sub(f"[ {_LINE}{_PARA}]*[{_LINE}{_PARA}][ {_LINE}{_PARA}]*",
                     lambda m: "\n\n" if _PARA in m.group() else "\n", "".join(self.parts))
        return re.sub(r"\n{3,}", "\n\n", raw).strip()


def html_to_text(html: str) -> str:
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return parser.text()
