"""The extraction worker: `python -m service.report.extract_worker KIND MAX_PAGES MEMORY_MIB CPU_S`, the
document on stdin, one JSON object on stdout ({"text", "pages"} or {"error"}). Its own address-space and
CPU limits bound what a decompression bomb or a pathological file can take; the server also kills it at
its deadline."""

from __future__ import annotations

import json
import resource
import sys


def main() -> int:
    kind, max_pages, memory_mib, cpu_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    limit = memory_mib * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    from service.report.extractors import ExtractionError, html_text, pdf_text

    data = sys.stdin.buffer.read()
    try:
        if kind == "pdf":
            text, pages = pdf_text(data, max_pages)
        elif kind == "html":
            text, pages = html_text(data), None
        else:
            raise ExtractionError(f"unknown kind {kind!r}")
        answer = {"text": text, "pages": pages}
    except ExtractionError as e:
        answer = {"error": str(e), "too_large": e.too_large}
    except MemoryError:
        answer = {"error": f"extracting the {kind} needs more than {memory_mib} MiB (a decompression bomb?)"}
    except RecursionError:
        answer = {"error": f"the {kind} is nested too deeply to read"}
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
