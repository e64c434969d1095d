"""`python -m service.batch IN OUT` (also `secclf-batch`): whole files through the service's own code path,
in process (the same folded checkpoints, the same route functions and error messages; no HTTP).

IN is one of:
- a JSONL file in vLLM's `run_batch` shape, one request a line:
  `{"custom_id": "...", "method": "POST", "url": "/classify/cvss" | "/classify/attack", "body": {...}}`;
- an NVD API 2.0 answer or feed file (`{"vulnerabilities": [{"cve": {...}}, ...]}`);
- a CVE List folder, or a zip of it, of CVE JSON 5 records (every `*.json` under it).

OUT is JSONL in `run_batch`'s answer shape, one line per input line or record, in input order:
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`. A bad line gets a line
with the route's error, never dropped. Each line is written whole with one `write`; running again with the
same OUT drops a cut-off last line (a kill -9) and skips the ids already written.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import sys
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from service import fork_server, reaper, routes
from service.errors import service_error_payload, validation_payload
from service.exceptions import Overloaded, ServiceError, quoted
from service.logging_setup import REQUEST_ID
from service.schemas import AttackRequest, CvssRequest
from service.settings import Settings, get_settings

log = logging.getLogger("service.batch")
ROUTES: dict[str, tuple[str, type[BaseModel], Callable[..., Awaitable[Any]]]] = {
    "/classify/cvss": ("cvss", CvssRequest, routes.classify_cvss),
    "/classify/attack": ("attack", AttackRequest, routes.classify_attack),
}


@dataclass
class Item:
    """One request: a `run_batch` line or a record made into one. `error` set: answered without the engine."""

    custom_id: str
    url: str = ""
    method: str = "POST"
    body: Any = None
    error: tuple[int, dict] | None = None


# -- reading IN -----------------------------------------------------------------------------------
def _record_item(record: Any, fallback_id: str) -> Item:
    cve = record.get("cve") if isinstance(record, dict) else None
    meta = record.get("cveMetadata") if isinstance(record, dict) else None
    cve_id = (cve or {}).get("id") if isinstance(cve, dict) else (meta or {}).get("cveId") if meta else None
    return Item(str(cve_id or fallback_id), "/classify/cvss", body={"record": record})


def _jsonl_items(lines: Iterator[str]) -> Iterator[Item]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except json.JSONDecodeError as e:
            yield Item(f"line-{n}", error=(400, {"detail": f"line {n}: not valid JSON: {e.msg} at column {e.colno}"}))
            continue
        if not isinstance(req, dict):
            yield Item(f"line-{n}", error=(400, {"detail": f"line {n}: a request must be a JSON object"}))
            continue
        custom_id = req.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            yield Item(f"line-{n}", error=(400, {"detail": f"line {n}: 'custom_id' must be a non-empty string"}))
            continue
        yield Item(custom_id, str(req.get("url", "")), str(req.get("method", "POST")).upper(), req.get("body"))


def _cve5_files(root: Path) -> Iterator[tuple[str, bytes]]:
    if root.is_dir():
        for path in sorted(root.rglob("*.json")):
            if path.name.startswith("CVE-"):  # the CVE List also holds delta.json, deltaLog.json
                yield path.name, path.read_bytes()
        return
    with zipfile.ZipFile(root) as z:
        for name in sorted(z.namelist()):
            base = name.rsplit("/", 1)[-1]
            if base.startswith("CVE-") and base.endswith(".json"):
                yield base, z.read(name)


def read_items(path: Path) -> list[Item]:
    """Every request of IN, in order (the shape is told by content, not by the file's name)."""
    if path.is_dir() or zipfile.is_zipfile(path):
        items = []
        for name, raw in _cve5_files(path):
            try:
                items.append(_record_item(json.loads(raw), name.removesuffix(".json")))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                items.append(Item(name.removesuffix(".json"), error=(400, {"detail": f"{name}: not valid JSON: {e}"})))
        return items
    text = path.read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None  # JSONL (several documents), or one broken line among them
    if isinstance(whole, dict) and isinstance(whole.get("vulnerabilities"), list):
        return [_record_item(v, f"vulnerability-{i}") for i, v in enumerate(whole["vulnerabilities"])]
    if isinstance(whole, dict) and whole.get("dataType") == "CVE_RECORD":
        return [_record_item(whole, path.stem)]
    return list(_jsonl_items(iter(text.splitlines())))


# -- answering ------------------------------------------------------------------------------------
def line_id(custom_id: str) -> str:
    """A stable id per custom_id, so a resumed run writes the lines an uninterrupted one would."""
    return "batch-" + hashlib.sha256(custom_id.encode()).hexdigest()[:24]


def answer_line(item: Item, status: int, body: Any, request_id: str) -> str:
    error = None if status == 200 else {"code": status, "message": _message(body)}
    line = {
        "id": line_id(item.custom_id),
        "custom_id": item.custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": error,
    }
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"


def _message(body: Any) -> str:
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # validation errors: "loc: msg" each
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg', '')}" for d in detail)
    return str(detail)


def texts_of(item: Item) -> int:
    """How many texts a request puts in flight (what the engines' admission counts)."""
    body = item.body if isinstance(item.body, dict) else {}
    for many in ("descriptions", "records", "texts"):
        if isinstance(body.get(many), list):
            return max(1, len(body[many]))
    return 1


class Budget:
    """A count of texts in flight, taken whole per request (taking one at a time could deadlock two requests
    that each hold part of what they need)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self.cond = asyncio.Condition()

    async def take(self, n: int) -> int:
        n = min(n, self.limit)
        async with self.cond:
            await self.cond.wait_for(lambda: self.used + n <= self.limit)
            self.used += n
        return n

    async def give(self, n: int) -> None:
        async with self.cond:
            self.used -= n
            self.cond.notify_all()


class Runner:
    """Runs items through the route functions with the app's loaded models, at most the service's in-flight
    limit of texts per model at once (so nothing is refused as overloaded)."""

    def __init__(self, app, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.models = app.state.models
        self.budget = {
            task: Budget(model.max_inflight)
            for task, model in (("cvss", self.models.cvss), ("attack", self.models.attack))
            if model is not None
        }

    async def answer(self, item: Item) -> tuple[int, Any]:
        if item.error is not None:
            return item.error
        route = ROUTES.get(item.url)
        if route is None:
            return 404, {"detail": f"unknown url {quoted(item.url)!r}; one of {sorted(ROUTES)}"}
        if item.method != "POST":
            return 405, {"detail": "Method Not Allowed"}
        task, request_model, handler = route
        try:
            body = request_model.model_validate(item.body)
        except ValidationError as e:
            return 422, validation_payload(e.errors())
        budget = self.budget.get(task)
        held = await budget.take(texts_of(item)) if budget is not None else 0
        try:
            while True:
                try:
                    result = await handler(body=body, models=self.models, s=self.settings)
                    return 200, result.model_dump(mode="json", exclude_unset=True)
                except Overloaded as e:  # the other route's work fills the shared budget: wait, as a client would
                    await asyncio.sleep(min(e.retry_after_s, 5))
        except ServiceError as e:
            status, payload, _ = service_error_payload(e)
            return status, payload
        except Exception:  # a line's bug is that line's 500, as the server would answer; the run goes on
            log.exception("request %s failed", quoted(item.custom_id))
            return 500, {"detail": "Internal Server Error"}
        finally:
            if held:
                await budget.give(held)


# Where compiled engines pay back on a 2-core CPU: ~10 s more start-up (warm compile cache) at +14 % CVSS
# throughput (~4.7 -> ~5.3 descriptions/s): about 400 texts
COMPILE_MIN_TEXTS = 400


def compiles(mode: str, texts: int) -> bool:
    """Whether this run's engines are compiled (`batch_compile`), given the texts it will classify."""
    from service.engine import can_compile

    if mode == "off" or (mode == "auto" and texts < COMPILE_MIN_TEXTS):
        return False
    if can_compile():
        return True
    log.warning("no C++ compiler for torch.compile (set CXX or install g++): the engines run eagerly")
    return False


def done_ids(out: Path) -> set[str]:
    """custom_ids already answered in OUT; a cut-off last line (a kill -9 mid-write) is removed first."""
    if not out.exists():
        return set()
    with out.open("rb+") as f:
        data = f.read()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            f.truncate(keep)
            log.warning("%s: dropped a cut-off last line (%d bytes)", out, len(data) - keep)
    ids = set()
    for raw in data[:keep].splitlines():
        ids.add(json.loads(raw)["custom_id"])
    return ids


async def run(items: list[Item], out: Path, settings: Settings, progress: bool = True) -> dict[str, float]:
    """Answers `items` into `out` (appending, in order); returns start-up and run seconds."""
    from tqdm import tqdm

    from service.app import create_app

    t0 = time.perf_counter()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        t1 = time.perf_counter()
        runner = Runner(app, settings)
        window = 4 * sum(m.max_inflight for m in runner.models.loaded())  # bounds the reorder buffer
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        bar = tqdm(total=len(items), unit="req", disable=not progress, dynamic_ncols=True)
        finished: dict[int, str] = {}
        written = 0
        slots = asyncio.Semaphore(window)

        async def one(i: int, item: Item) -> None:
            try:
                token = REQUEST_ID.set(line_id(item.custom_id))
                status, body = await runner.answer(item)
                finished[i] = answer_line(item, status, body, REQUEST_ID.get())
                REQUEST_ID.reset(token)
            finally:
                bar.update(1)

        async def flush() -> None:
            nonlocal written
            while written in finished:  # input order: a resumed file equals an uninterrupted one
                os.write(fd, finished.pop(written).encode())  # one write per whole line
                written += 1
                slots.release()

        try:
            tasks = []
            for i, item in enumerate(items):
                await slots.acquire()
                task = asyncio.create_task(one(i, item))
                task.add_done_callback(lambda _t: asyncio.ensure_future(flush()))
                tasks.append(task)
            await asyncio.gather(*tasks)
            await flush()
        finally:
            bar.close()
            os.close(fd)
        t2 = time.perf_counter()
    return {
        "startup_s": round(t1 - t0, 2),
        "run_s": round(t2 - t1, 3),
        "requests_per_s": round(len(items) / (t2 - t1), 3),
    }


# -- the summary ----------------------------------------------------------------------------------
def summarize(out: Path) -> dict:
    """Counts by outcome; for records, per reference source, how often each metric disagrees."""
    outcomes: Counter[str] = Counter()
    compared: dict[str, Counter[str]] = defaultdict(Counter)
    disagree: dict[str, Counter[str]] = defaultdict(Counter)
    score_diff: dict[str, list[float]] = defaultdict(list)
    for raw in out.read_text(encoding="utf-8").splitlines():
        line = json.loads(raw)
        status = line["response"]["status_code"]
        outcomes["ok" if status == 200 else f"error {status}"] += 1
        body = line["response"]["body"] if status == 200 else {}
        for result in body.get("results", [body]):
            for ref in result.get("reference_vectors") or []:
                agreement = ref.get("agreement")
                if not agreement:
                    continue
                source = ref["source"] if ref["source"] != "ADP" else f"ADP {ref['organization']}"
                for key, m in agreement["metrics"].items():
                    compared[source][key] += 1
                    disagree[source][key] += not m["match"]
                compared[source]["vectors"] += 1
                disagree[source]["vectors"] += agreement["matches"] < len(agreement["metrics"])
                score_diff[source].append(abs(agreement["base_score_difference"]))
    sources = {
        source: {
            "compared": counts["vectors"],
            "disagreement": {k: round(disagree[source][k] / n, 4) for k, n in counts.items()},
            "mean_abs_base_score_difference": round(sum(score_diff[source]) / len(score_diff[source]), 3),
        }
        for source, counts in compared.items()
    }
    return {"lines": sum(outcomes.values()), "outcomes": dict(outcomes), "reference_sources": sources}


def format_summary(summary: dict) -> str:
    rows = [f"{summary['lines']} lines: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["outcomes"].items()))]
    if summary["reference_sources"]:
        keys = ["AV", "AC", "PR", "UI", "S", "C", "I", "A", "vectors"]
        rows.append("disagreement with the record's v3.x vectors (share of compared vectors):")
        rows.append(f"  {'source':<28}{'n':>6}" + "".join(f"{k:>8}" for k in keys) + f"{'|dScore|':>10}")
        for source, s in sorted(summary["reference_sources"].items()):
            rates = "".join(f"{s['disagreement'].get(k, 0):>8.2f}" for k in keys)
            rows.append(f"  {source[:27]:<28}{s['compared']:>6}{rates}{s['mean_abs_base_score_difference']:>10.2f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="JSONL (run_batch), NVD API 2.0 JSON, or CVE 5 folder / zip")
    parser.add_argument("output", type=Path, help="JSONL answers; an existing file is resumed")
    parser.add_argument("--summary-json", type=Path, help="Also write the summary as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar (also SECCLF_NO_PROGRESS=1)")
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        help=f"torch.compile the engines (default SECCLF_BATCH_COMPILE, auto: at {COMPILE_MIN_TEXTS}+ texts)",
    )
    args = parser.parse_args(argv)
    from service import logging_setup

    logging_setup.configure(logging.WARNING)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep the progress bar readable
    fork_server.start(get_settings().engine_fork_server)  # imports vLLM while the input is read
    if not args.input.exists():
        parser.error(f"{args.input}: no such file or folder")
    items = read_items(args.input)
    seen: Counter[str] = Counter(item.custom_id for item in items)
    duplicates = [cid for cid, n in seen.items() if n > 1]
    if duplicates:
        parser.error(
            f"custom_id must be unique (resume is keyed by it): {len(duplicates)} repeat, "
            f"e.g. {quoted(duplicates[0])!r}"
        )
    done = done_ids(args.output)
    todo = [item for item in items if item.custom_id not in done]
    settings = get_settings()
    texts = sum(texts_of(item) for item in todo if item.error is None)
    compiled = bool(todo) and compiles(args.compile or settings.batch_compile, texts)
    print(
        f"{len(items)} requests in {args.input}; {len(done)} already in {args.output}; {len(todo)} to run"
        + (f" ({texts} texts; engines {'compiled' if compiled else 'eager'})" if todo else ""),
        file=sys.stderr,
    )
    if todo:
        needed = {ROUTES[item.url][0] for item in todo if item.error is None and item.url in ROUTES}
        settings = settings.model_copy(
            update={
                "cvss_artifact": settings.cvss_artifact if "cvss" in needed else None,
                "attack_artifact": settings.attack_artifact if "attack" in needed else None,
                "enforce_eager": not compiled,  # batch_compile decides for the batch command, as it printed
            }
        )
        progress = not args.no_progress and os.environ.get("SECCLF_NO_PROGRESS") != "1"
        reaper.start()  # a kill -9 of this process (then a resume) leaves no engine process behind
        timing = asyncio.run(run(todo, args.output, settings, progress))
    summary = summarize(args.output)
    if todo:
        summary["this_run"] = {"requests": len(todo), "engines": "compiled" if compiled else "eager", **timing}
    print(format_summary(summary))
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
