"""A document's kind from its content and its text, off the event loop and within time and memory bounds.

The kind comes from magic bytes (the `filetype` library's signatures: PDF, and every image, archive and
office format it knows, which are refused), then for text the WHATWG MIME-sniffing HTML patterns; never from
a file name. Plain text is decoded here; PDF and HTML go to a separate worker process (`extract_worker.py`)
with its own memory and CPU limits, killed at the deadline.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import sys
from typing import Literal

from pydantic import BaseModel

from service.exceptions import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.settings import Settings

Kind = Literal["text", "html", "pdf"]
# WHATWG MIME Sniffing, "rules for identifying an unknown MIME type": tags that mark HTML when they open the
# document (after whitespace), followed by a space or ">"
_HTML_TAGS = (
    b"<!doctype html",
    b"<html",
    b"<head",
    b"<script",
    b"<iframe",
    b"<h1",
    b"<div",
    b"<font",
    b"<table",
    b"<a",
    b"<style",
    b"<title",
    b"<b",
    b"<body",
    b"<br",
    b"<p",
    b"<!--",
)


class Extracted(BaseModel):
    kind: Kind
    text: str
    pages: int | None = None


def sniff(data: bytes) -> Kind:
    """The document's kind from its bytes: 415 for anything but PDF, HTML or text."""
    import filetype

    if not data.strip():
        raise InvalidInput("the document is empty")
    guess = filetype.guess(data[:8192])
    if guess is not None:
        if guess.mime == "application/pdf":
            return "pdf"
        raise UnsupportedMediaType(f"unsupported document type {guess.mime}; send a PDF, an HTML page or plain text")
    head = data[:1024].lstrip(b" \t\n\r\x0c").lower()
    if head.startswith(codecs.BOM_UTF8):
        head = head[len(codecs.BOM_UTF8) :].lstrip()
    for tag in _HTML_TAGS:
        if head.startswith(tag) and (tag == b"<!--" or head[len(tag) : len(tag) + 1] in (b" ", b">")):
            return "html"
    if b"\x00" in data[:8192] and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UnsupportedMediaType("the document is binary, not a PDF, an HTML page or text")
    return "text"


def decode_text(data: bytes) -> str:
    """Plain text as UTF-8 (a BOM is dropped), or UTF-16 with its BOM; anything else is a 415."""
    encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise UnsupportedMediaType(f"the text is not valid {encoding.upper()} (byte {e.start}); send UTF-8") from None


async def extract(data: bytes, s: Settings, kind: Kind | None = None) -> Extracted:
    """The document's text; `kind` when the client named it (a JSON "text" or "html"), else sniffed."""
    if len(data) > s.report_max_bytes:
        raise PayloadTooLarge(f"the document is {len(data)} bytes; the limit is {s.report_max_bytes}")
    kind = kind or sniff(data)
    if kind == "text":
        return Extracted(kind=kind, text=decode_text(data))
    return Extracted(kind=kind, **await _in_worker(kind, data, s))


async def _in_worker(kind: Kind, data: bytes, s: Settings) -> dict:
    cpu = max(1, int(s.report_extract_timeout_s) + 1)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service.report.extract_worker",
        kind,
        str(s.report_max_pages),
        str(s.report_extract_memory_mib),
        str(cpu),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(data), s.report_extract_timeout_s)
    except TimeoutError:
        raise InvalidInput(f"text extraction from the {kind} took over {s.report_extract_timeout_s:g} s") from None
    finally:  # a deadline, a client gone or the server stopping: the worker never outlives its request
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    try:
        answer = json.loads(out)
    except ValueError:
        answer = {"error": f"text extraction from the {kind} failed (it exceeded its memory or CPU limit)"}
    if "error" in answer:
        raise (PayloadTooLarge if answer.get("too_large") else InvalidInput)(answer["error"])
    return answer
