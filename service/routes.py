"""HTTP routes: a thin layer over the model classes."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.exceptions import DeadlineExceeded, InvalidInput, ModelNotReady, RouteDisabled
from service.metrics import REGISTRY
from service.models.attack import AttackModel
from service.models.base import public_name
from service.models.cvss import DEFAULT_ADAPTER, CvssModel
from service.records import CveRecord, compare, parse_record
from service.report import navigator, stix
from service.report.intake import read_report
from service.report.pipeline import analyse
from service.report.protocol import ReportOptions, ReportRequest, ReportResult
from service.schemas import (
    AttackBatchResponse,
    AttackRequest,
    AttackResult,
    CvssBatchResponse,
    CvssRequest,
    CvssResult,
    ErrorResponse,
    LoadedModel,
    ModelsResponse,
    check_text,
)
from service.security import require_api_key, require_api_key_for_metrics, require_api_key_for_ops
from service.settings import Settings


@dataclass
class Models:
    cvss: CvssModel | None = None
    attack: AttackModel | None = None
    ready: bool = False
    problems: list[str] = field(default_factory=list)

    def loaded(self) -> list[CvssModel | AttackModel]:
        return [x for x in (self.cvss, self.attack) if x is not None]


router = APIRouter()
text_log = logging.getLogger("service.texts")
protected = [Depends(require_api_key)]
ops = [Depends(require_api_key_for_ops)]
ERRORS = {422: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}


async def get_models(request: Request) -> Models:  # async: no thread-pool hop (service/security.py)
    return request.app.state.models


async def app_settings(request: Request) -> Settings:
    return request.app.state.settings


ModelsDep = Annotated[Models, Depends(get_models)]
SettingsDep = Annotated[Settings, Depends(app_settings)]


def _log_texts(route: str, texts: list[str], s: Settings) -> None:
    """Request texts reach the log only when SECCLF_LOG_TEXT is set (they may hold sensitive reports)."""
    if s.log_text:
        text_log.info("request texts", extra={"route": route, "texts": texts})


def _check_lengths(texts: list[str], limit: int) -> None:
    for i, t in enumerate(texts):
        if len(t) > limit:
            raise InvalidInput(f"item {i}: {len(t)} characters; the limit is {limit}")


async def _classify(model, route: str, texts: list[str], s: Settings, **opts):
    """What both classify routes do with their texts: limits, optional logging, the model under the deadline."""
    _check_lengths(texts, s.max_text_chars)
    _log_texts(route, texts, s)
    return await _deadline(model.classify_many(texts, **opts), s)


async def _deadline(coro, s: Settings):
    try:
        return await asyncio.wait_for(coro, s.request_timeout_s)
    except TimeoutError as e:  # cancelling the work aborts its requests in vLLM
        raise DeadlineExceeded(f"not answered within the {s.request_timeout_s:g} s deadline") from e


def _require(model, name: str, models: Models):
    if model is None:
        raise RouteDisabled(f"the {name} classifier is not enabled on this server")
    if not models.ready or not model.healthy:
        raise ModelNotReady(f"the {name} classifier is not ready")
    return model


@router.post(
    "/classify/cvss",
    response_model=CvssResult | CvssBatchResponse,
    response_model_exclude_unset=True,  # "abstained" appears only when min_confidence was asked for
    responses=ERRORS,
    tags=["classify"],
    dependencies=protected,
    summary="CVSS v3.1 base vector, score, severity and per-value probabilities for CVE descriptions",
)
async def classify_cvss(body: CvssRequest, models: ModelsDep, s: SettingsDep):
    cvss = _require(models.cvss, "CVSS", models)
    records = _records(body)
    texts = [r.description for r in records] if records is not None else _cvss_texts(body)
    adapter = body.adapter or DEFAULT_ADAPTER
    results = await _classify(
        cvss, "/classify/cvss", texts, s, adapter=adapter, min_confidence=body.min_confidence, coverage=body.coverage
    )
    for result, record in zip(results, records or [], strict=False):
        _attach_record(result, record, cvss)
    single = body.description is not None or body.record is not None
    return results[0] if single else CvssBatchResponse(results=list(results))


def _cvss_texts(body: CvssRequest) -> list[str]:
    return [body.description] if body.description is not None else list(body.descriptions or [])


def _records(body: CvssRequest) -> list[CveRecord] | None:
    """The request's records parsed (a bad one is a 422 naming its index), or None for plain descriptions."""
    if body.record is None and body.records is None:
        return None
    raw = [body.record] if body.record is not None else list(body.records or [])
    parsed = [parse_record(r, i) for i, r in enumerate(raw)]
    for i, record in enumerate(parsed):
        try:
            check_text(record.description)
        except ValueError as e:
            raise InvalidInput(f"record {i}: its English description {e}") from None
    return parsed


def _attach_record(result: CvssResult, record: CveRecord, cvss: CvssModel) -> None:
    probs = {key: m.probabilities for key, m in result.metrics.items()}
    result.cve_id = record.cve_id
    result.reference_vectors = [compare(ref, cvss.labels, probs, result.base_score) for ref in record.references]


@router.post(
    "/classify/attack",
    response_model=AttackResult | AttackBatchResponse,
    response_model_exclude_unset=True,
    responses=ERRORS,
    tags=["classify"],
    dependencies=protected,
    summary="Ranked MITRE ATT&CK techniques with calibrated probabilities for threat-report excerpts",
)
async def classify_attack(body: AttackRequest, models: ModelsDep, s: SettingsDep):
    attack = _require(models.attack, "ATT&CK", models)
    texts = [body.text] if body.text is not None else list(body.texts or [])
    results = await _classify(
        attack,
        "/classify/attack",
        texts,
        s,
        top_k=body.top_k,
        min_confidence=body.min_confidence,
        coverage=body.coverage,
    )
    return results[0] if body.text is not None else AttackBatchResponse(results=results)


@router.post(
    "/classify/attack/report",
    responses={**ERRORS, 415: {"model": ErrorResponse}},
    tags=["classify"],
    dependencies=protected,
    summary="ATT&CK techniques of a whole report (text, HTML or PDF), each with its evidence sentences",
    description="A JSON body with `text` or `html`, or a multipart/form-data upload with a `file` part (PDF, "
    "HTML or plain text, recognised by content) and the same options as form fields. `format`: json (the "
    "schema below), navigator (an ATT&CK Navigator layer 4.5) or stix (a STIX 2.1 bundle).",
    response_model=ReportResult,
    response_model_exclude_none=True,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": ReportRequest.model_json_schema()},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            **ReportOptions.model_json_schema()["properties"],
                        },
                    }
                },
            },
        }
    },
)
async def classify_attack_report(request: Request, models: ModelsDep, s: SettingsDep):
    attack = _require(models.attack, "ATT&CK", models)

    async def work():
        doc, options = await read_report(request, s)
        _log_texts("/classify/attack/report", [doc.text], s)
        return await analyse(attack, doc, options, s), options

    result, options = await _deadline(work(), s)
    if options.format == "navigator":
        return JSONResponse(navigator.layer(result, attack.labels.catalogue))
    if options.format == "stix":
        return JSONResponse(stix.bundle(result, attack.labels.techniques), media_type=stix.MEDIA_TYPE)
    return result


@router.get("/healthz", tags=["ops"], dependencies=ops, summary="Liveness")
async def healthz() -> dict:
    return {"status": "alive"}


@router.get(
    "/readyz", tags=["ops"], dependencies=ops, summary="Readiness: 200 once every model is loaded and warmed up"
)
async def readyz(response: Response, models: ModelsDep) -> dict:
    unhealthy = [type(x).__name__ for x in models.loaded() if not x.healthy]
    ok = models.ready and not unhealthy
    response.status_code = 200 if ok else 503
    return {"ready": ok, "unhealthy": unhealthy, "problems": models.problems}


@router.get(
    "/v1/models", response_model=ModelsResponse, tags=["ops"], dependencies=protected, summary="Loaded artifacts"
)
async def list_models(request: Request, models: ModelsDep, s: SettingsDep) -> ModelsResponse:
    out = []
    for model in models.loaded():
        manifest = model.manifest
        labels = len(manifest.labels.metrics) if manifest.task == "cvss" else len(manifest.labels.techniques)
        out.append(
            LoadedModel(
                name=manifest.name,
                version=manifest.version,
                task=manifest.task,
                base_model={
                    **manifest.base_model.model_dump(),
                    "name_or_path": public_name(manifest.base_model.name_or_path),
                    "serving": model.base_name,
                },
                labels=labels,
                temperature=manifest.temperature,
                prior_correction=manifest.prior_correction.tau if manifest.prior_correction else None,
                max_input_tokens=manifest.max_input_tokens,
                adapters=sorted(getattr(model, "adapters", {})),
                validation_metrics=manifest.metrics,
                coverages=[lv.coverage for lv in manifest.conformal.levels] if manifest.conformal else [],
                created_at=manifest.created_at,
            )
        )
    return ModelsResponse(
        models=out, auth_enabled=bool(s.api_key_list), startup_seconds=request.app.state.startup_seconds
    )


@router.get(
    "/metrics",
    tags=["ops"],
    dependencies=[Depends(require_api_key_for_metrics)],
    summary="Prometheus metrics (a key when keys are configured; or on SECCLF_METRICS_PORT instead)",
    response_class=Response,
)
async def metrics(s: SettingsDep) -> Response:
    if s.metrics_port is not None:
        raise RouteDisabled(f"metrics are served on their own port ({s.metrics_port})")
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
