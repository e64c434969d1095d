"""`python -m service.report FILE... --out DIR`: whole reports on disk through the service's own report
pipeline, in process (the same folded checkpoint, extraction, segmentation and exports; no HTTP server).

Each FILE (PDF, HTML or plain text, recognised by content) gives DIR/<name>.json, .layer.json (Navigator)
or .stix.json; each is written whole (a temporary file renamed into place), and a file whose output exists
is skipped unless --force, so an interrupted folder run resumes. A file that cannot be read is reported
with the route's message and the run goes on; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
from pathlib import Path

from service.exceptions import ServiceError
from service.report.protocol import ReportOptions
from training.artifact.atomic_write import write_text_atomic

SUFFIX = {"json": ".json", "navigator": ".layer.json", "stix": ".stix.json"}


def output_path(src: Path, out: Path, fmt: str) -> Path:
    return out / (src.name + SUFFIX[fmt])


def _write(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


async def run(files: list[Path], out: Path, options: ReportOptions, progress: bool) -> dict[str, str]:
    """Each file's outcome: "ok", or the error message."""
    from tqdm import tqdm

    from service import routes
    from service.app import create_app
    from service.report import navigator, stix
    from service.report.extraction import extract
    from service.report.pipeline import analyse
    from service.settings import get_settings

    settings = get_settings().model_copy(update={"cvss_artifact": None})
    app = create_app(settings)
    outcome: dict[str, str] = {}
    async with app.router.lifespan_context(app):
        model = routes._require(app.state.models.attack, "ATT&CK", app.state.models)
        for src in tqdm(files, unit="report", disable=not progress, dynamic_ncols=True):
            try:
                data = src.read_bytes()
                result = await analyse(model, await extract(data, settings), options, settings)
            except (ServiceError, OSError) as e:
                outcome[str(src)] = f"{type(e).__name__}: {e}"
                continue
            if options.format == "navigator":
                payload = navigator.layer(result, model.labels.catalogue, title=src.name)
            elif options.format == "stix":
                payload = stix.bundle(result, model.labels.techniques, title=src.name)
            else:
                payload = result.model_dump(mode="json", exclude_none=True)
            _write(output_path(src, out, options.format), payload)
            outcome[str(src)] = "ok"
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="PDF, HTML or text reports (folders: every file in them)")
    parser.add_argument("--out", type=Path, required=True, help="Folder for the answers (created)")
    parser.add_argument("--format", choices=sorted(SUFFIX), default="json")
    parser.add_argument("--min-score", type=float, help="Report-level threshold (default: the manifest's)")
    parser.add_argument("--top-evidence", type=int, default=3, help="Evidence sentences per technique")
    parser.add_argument("--include-text", action="store_true", help="Keep the extracted text in the JSON")
    parser.add_argument("--force", action="store_true", help="Redo files whose output exists")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar (also SECCLF_NO_PROGRESS=1)")
    args = parser.parse_args(argv)
    try:
        options = ReportOptions(
            min_score=args.min_score, top_evidence=args.top_evidence, format=args.format, include_text=args.include_text
        )
    except ValueError as e:
        parser.error(str(e))
    files = []
    for f in args.files:
        if f.is_dir():
            files += sorted(p for p in f.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif f.is_file():
            files.append(f)
        else:
            parser.error(f"{f}: no such file or folder")
    args.out.mkdir(parents=True, exist_ok=True)
    todo = [f for f in files if args.force or not output_path(f, args.out, args.format).exists()]
    print(f"{len(files)} reports; {len(files) - len(todo)} already in {args.out}; {len(todo)} to run", file=sys.stderr)
    if not todo:
        return 0
    from service import logging_setup, reaper

    logging_setup.configure(logging.WARNING)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    reaper.start()  # a kill -9 of this process leaves no engine process behind
    progress = not args.no_progress and os.environ.get("SECCLF_NO_PROGRESS") != "1"
    outcome = asyncio.run(run(todo, args.out, options, progress))
    gc.collect()  # the engine client's finalizer runs now, not at interpreter teardown (a spurious traceback)
    failed = {f: msg for f, msg in outcome.items() if msg != "ok"}
    for f, msg in failed.items():
        print(f"{f}: {msg}", file=sys.stderr)
    print(f"{len(outcome) - len(failed)} written to {args.out}, {len(failed)} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
