"""A report's text to techniques with evidence: segment (training/artifact/segmenting.py), classify every
sentence with the ATT&CK model, aggregate per technique (training/artifact/aggregating.py), with the settings
and threshold the artifact's manifest records (`evaluate --task attack-report` chose them out of fold)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence

import numpy as np

from service.exceptions import InvalidInput, Overloaded
from service.models.attack import AttackModel
from service.report.extraction import Extracted
from service.report.protocol import DocumentInfo, Evidence, ReportOptions, ReportResult, ReportTechnique
from service.schemas import check_text
from service.settings import MAX_ITEMS, Settings
from training.artifact.aggregating import techniques
from training.artifact.manifest import ReportPipeline
from training.artifact.segmenting import Unit, units

log = logging.getLogger(__name__)


def pipeline_of(model: AttackModel) -> ReportPipeline:
    """The manifest's report settings; an artifact from before they existed gets the defaults (logged once)."""
    if model.manifest.report is None and not getattr(model, "_warned_report", False):
        log.warning("%s has no report settings in its manifest; using defaults", model.manifest.name)
        model._warned_report = True
    return model.manifest.report or ReportPipeline()


def segment(text: str, p: ReportPipeline, limit: int) -> tuple[list[Unit], bool]:
    """The units to classify and whether the segment limit cut them; a text with no prose sentence (a bare
    IoC list) has all its sentences classified rather than none."""
    found = units(text, p.context, p.prose_only) or (units(text, p.context, False) if p.prose_only else [])
    return found[:limit], len(found) > limit


async def probabilities(model: AttackModel, texts: Sequence[str], window: int = 4) -> np.ndarray:
    """[len(texts), labels] calibrated probabilities, in chunks of one request's size, `window` chunks in flight
    so the engine's batch never drains between them. Each chunk is admitted like a request of its own; the
    first is refused at once when the service is busy (a 503 before any work), later ones wait for room (the
    request's deadline still bounds them) rather than waste the chunks done."""
    size = max(1, min(model.max_inflight, MAX_ITEMS))
    chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
    out: list[list] = [[] for _ in chunks]

    async def run(k: int, wait: bool) -> None:
        while True:
            try:
                out[k] = [o.float().numpy() for o, _ in await model.outputs_many(chunks[k])]
                return
            except Overloaded as e:
                if not wait:
                    raise
                await asyncio.sleep(min(e.retry_after_s, 1))

    await run(0, wait=False)
    slots = asyncio.Semaphore(window)

    async def later(k: int) -> None:
        async with slots:
            await run(k, wait=True)

    try:
        async with asyncio.TaskGroup() as group:
            for k in range(1, len(chunks)):
                group.create_task(later(k))
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return np.stack([row for rows in out for row in rows]).astype(np.float64)


def _prepare(text: str, p: ReportPipeline, limit: int) -> tuple[list[Unit], bool, str]:
    """Checks, segmentation and the text's hash: the CPU-bound part before the engine, run off the loop."""
    try:
        check_text(text)
    except ValueError as e:
        raise InvalidInput(f"the document's text {e}") from None
    found, truncated = segment(text, p, limit)
    return found, truncated, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


async def analyse(model: AttackModel, doc: Extracted, opts: ReportOptions, s: Settings) -> ReportResult:
    text = doc.text
    p = pipeline_of(model)
    found_units, truncated, digest = await asyncio.to_thread(_prepare, text, p, s.report_max_segments)
    if not found_units:
        raise InvalidInput("the document holds no sentence to classify")
    probs = await probabilities(model, [u.text for u in found_units])
    min_score = opts.min_score if opts.min_score is not None else p.min_score
    labels = model.labels.techniques
    out = []
    for f in techniques(probs, p.aggregation, min_score, opts.top_evidence):
        t = labels[f.label]
        evidence = [
            Evidence(
                start=found_units[i].start,
                end=found_units[i].end,
                text=text[found_units[i].start : found_units[i].end],
                probability=pr,
            )
            for i, pr in f.evidence
        ]
        out.append(ReportTechnique(technique_id=t.id, name=t.name, tactics=t.tactics, score=f.score, evidence=evidence))
    return ReportResult(
        techniques=out,
        segments=len(found_units),
        text_sha256=digest,
        truncated=truncated,
        min_score=min_score,
        aggregation=p.aggregation,
        document=DocumentInfo(kind=doc.kind, characters=len(text), pages=doc.pages),
        model=model.info(),
        text=text if opts.include_text else None,
    )
