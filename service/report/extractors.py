"""Text out of a document, with libraries made for it. These run inside the extraction worker process
(`extract_worker.py`), never in the server's own process: a hostile PDF costs that process, not the server.

- HTML: trafilatura finds the main text of a page (no navigation, menus, scripts, styles, footers), the
  best of the extractors on published benchmarks and maintained; each block it keeps becomes a paragraph.
- PDF: pypdf, pure Python and maintained, with its own guards on stream sizes; an encrypted file is refused
  rather than guessed at with an empty password.
"""

from __future__ import annotations

import io
import re

_SPACES = re.compile(r"[ \t\f\v\r]+")
_HYPHEN_BREAK = re.compile(r"(?<=[a-z])-\n(?=[a-z])")  # a word hyphenated at a line end


class ExtractionError(ValueError):
    """The document cannot give text: the message says why, for the client; `too_large` marks a document over
    a size limit (413) rather than an unreadable one (422)."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def html_text(data: bytes) -> str:
    import trafilatura

    text = trafilatura.extract(
        data, include_comments=False, include_tables=True, include_links=False, favor_recall=True, deduplicate=False
    )
    if not text or not text.strip():
        raise ExtractionError("the HTML page holds no readable main text")
    return "\n\n".join(line.strip() for line in text.splitlines() if line.strip())


def pdf_text(data: bytes, max_pages: int) -> tuple[str, int]:
    """(text, pages): pages separated by a blank line, lines of a paragraph joined."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise ExtractionError("the PDF is encrypted; send a decrypted copy")
        n = len(reader.pages)
    except PdfReadError as e:
        raise ExtractionError(f"not a readable PDF: {e}") from None
    if n > max_pages:
        raise ExtractionError(f"the PDF has {n} pages; the limit is {max_pages}", too_large=True)
    pages = []
    for i, page in enumerate(reader.pages):
        try:
            pages.append(_paragraphs(page.extract_text() or ""))
        except Exception as e:  # pypdf raises many kinds on damaged content streams: the page's fault
            raise ExtractionError(f"page {i + 1} of the PDF cannot be read: {type(e).__name__}") from None
    text = "\n\n".join(p for p in pages if p)
    if not text.strip():
        raise ExtractionError("the PDF holds no text layer (a scan needs OCR first)")
    return text, n


def _paragraphs(page: str) -> str:
    """A PDF page's lines joined into paragraphs. pypdf gives lines in reading order (columns one after
    the other) but no paragraph breaks; a line clearly shorter than the page's usual line ends one (a
    heading, a paragraph's last line), as does a blank line. A justified long line never does."""
    lines = [_SPACES.sub(" ", line).strip() for line in _HYPHEN_BREAK.sub("", page.replace("\r\n", "\n")).split("\n")]
    lengths = sorted(len(line) for line in lines if line)
    if not lengths:
        return ""
    usual = lengths[(3 * len(lengths)) // 4]  # the upper quartile: a full line, whatever the headings
    out, current = [], []
    for i, line in enumerate(lines):
        if line:
            current.append(line)
        following = lines[i + 1] if i + 1 < len(lines) else ""
        # a short line after a sentence's end is a heading: the paragraph ends before it
        heading_next = line.endswith((".", "!", "?")) and following and len(following) < 0.8 * usual
        heading_next = heading_next and not following.endswith((".", "!", "?", ":"))
        if current and (not line or len(line) < 0.8 * usual or heading_next):
            out.append(" ".join(current))
            current = []
    if current:
        out.append(" ".join(current))
    return "\n\n".join(out)
