"""The report route's request: a JSON body (`text` or `html`) or a multipart upload (`file` plus the same
options as form fields), to an extracted document and its options."""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from service.exceptions import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.report.extraction import Extracted, extract
from service.report.protocol import ReportOptions, ReportRequest
from service.settings import Settings

OPTION_FIELDS = frozenset(ReportOptions.model_fields)


def _invalid(e: ValidationError) -> RequestValidationError:
    """pydantic's errors answered as FastAPI answers a bad JSON body (422, locations under "body")."""
    return RequestValidationError([{**err, "loc": ("body", *err.get("loc", ()))} for err in e.errors()])


async def read_report(request: Request, s: Settings) -> tuple[Extracted, ReportOptions]:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _multipart(request, s)
    if ctype not in ("application/json", ""):
        raise UnsupportedMediaType(
            f"content type {ctype[:64]!r}: send application/json or multipart/form-data with a 'file' part"
        )
    try:
        # a 20 MB JSON document parses in tens of milliseconds: off the event loop
        body = await asyncio.to_thread(ReportRequest.model_validate_json, await request.body())
    except ValidationError as e:
        raise _invalid(e) from None
    options = ReportOptions.model_validate(body.model_dump(include=OPTION_FIELDS))
    if body.text is not None:
        if len(body.text.encode("utf-8", "surrogatepass")) > s.report_max_bytes:
            raise PayloadTooLarge(f"the text is over {s.report_max_bytes} bytes")
        return Extracted(kind="text", text=body.text), options
    return await extract(body.html.encode("utf-8", "surrogatepass"), s, kind="html"), options


async def _multipart(request: Request, s: Settings) -> tuple[Extracted, ReportOptions]:
    try:
        form = await request.form(max_files=1, max_fields=len(OPTION_FIELDS) + 1, max_part_size=64 * 1024)
    except Exception as e:  # starlette's MultiPartException and malformed bodies: the client's fault
        raise InvalidInput(f"not a readable multipart body: {str(e)[:200]}") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):  # a plain form field, not a file part
            raise InvalidInput("multipart/form-data needs a 'file' part holding the document")
        unknown = sorted(k for k in form if k != "file" and k not in OPTION_FIELDS)
        if unknown:
            raise InvalidInput(f"unknown form fields {unknown[:5]}; options are {sorted(OPTION_FIELDS)}")
        fields = {k: v for k, v in form.items() if k != "file"}
        try:  # form fields are strings: lax parsing here ("3", "true")
            options = ReportOptions.model_validate(fields, strict=False)
        except ValidationError as e:
            raise _invalid(e) from None
        data = await upload.read(s.report_max_bytes + 1)
    finally:
        await form.close()
    return await extract(data, s), options
