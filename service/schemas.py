"""Request and response models of the HTTP API (validated at the boundary)."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from service.records import ReferenceVector
from service.settings import MAX_ITEMS

# Characters that show nothing: controls, formats (zero-width space and joiners, BOM, bidi marks), separators,
# unassigned and private-use code points, and combining marks with no base
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Me"})


def check_text(v: str) -> str:
    """What every classified text must be: some visible text, valid Unicode, no NUL (ValueError otherwise)."""
    if not v.strip():
        raise ValueError("must contain text, not be empty or whitespace only")
    if all(unicodedata.category(ch) in _INVISIBLE for ch in v):
        raise ValueError("has no visible characters (only spaces, zero-width or control characters)")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate such as "\ud800": valid JSON, not valid text
        raise ValueError(f"is not valid Unicode text: lone surrogate at character {e.start}") from None
    if "\x00" in v:
        raise ValueError("contains a NUL character")
    return v


NonBlank = Annotated[str, AfterValidator(check_text)]

CVE_EXAMPLE = (
    "A SQL injection vulnerability in the login form of Acme Portal 2.3 allows remote "
    "unauthenticated attackers to execute arbitrary SQL commands via the username parameter."
)
REPORT_EXAMPLE = "The attackers used spearphishing emails with malicious Word attachments to gain initial access."


def _one_of(*fields: str):
    def check(self):
        given = [f for f in fields if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of " + ", ".join(f"'{f}'" for f in fields))
        return self

    return check


def _min_confidence(what: str):
    return Field(
        None, gt=0, le=1, description=f"Abstain (abstained: true, predictions still returned) when {what} is below it"
    )


def _coverage(what: str):
    return Field(
        None,
        gt=0,
        lt=1,
        description=f"Also return a prediction set holding the true {what} with this probability; "
        "one of the coverages the model's manifest offers (GET /v1/models), e.g. 0.9",
    )


class CvssRequest(BaseModel):
    # strict: no bool or string taken for a number (`"top_k": true` is not 1)
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"description": CVE_EXAMPLE}, {"descriptions": [CVE_EXAMPLE]}]},
    )
    description: NonBlank | None = Field(None, description="One CVE description")
    descriptions: list[NonBlank] | None = Field(None, min_length=1, max_length=MAX_ITEMS, description="A batch")
    record: dict[str, Any] | None = Field(
        None,
        description='One CVE record: an NVD API 2.0 vulnerability item ({"cve": {...}}) or a CVE JSON 5 record '
        '("dataType": "CVE_RECORD"). Its English description is classified and its CVSS v3.x vectors compared',
    )
    records: list[dict[str, Any]] | None = Field(
        None, min_length=1, max_length=MAX_ITEMS, description="A batch of records"
    )
    adapter: str | None = Field(None, description="Name of a loaded CVSS LoRA adapter (default: the default one)")
    min_confidence: float | None = _min_confidence("a metric's top probability")
    coverage: float | None = _coverage("value of each metric")

    _check = model_validator(mode="after")(_one_of("description", "descriptions", "record", "records"))


class AttackRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"text": REPORT_EXAMPLE, "top_k": 5}]}
    )
    text: NonBlank | None = Field(None, description="One threat-report excerpt")
    texts: list[NonBlank] | None = Field(None, min_length=1, max_length=MAX_ITEMS, description="A batch")
    top_k: int = Field(5, ge=1, le=50, description="How many techniques to return, most probable first")
    min_confidence: float | None = _min_confidence("the top probability")
    coverage: float | None = _coverage("technique")

    _check = model_validator(mode="after")(_one_of("text", "texts"))


class ModelInfo(BaseModel):
    name: str
    version: str
    task: str
    base_model: str
    adapter: str | None = None


class CvssMetricResult(BaseModel):
    value: str
    label: str
    probabilities: dict[str, float]
    abstained: bool | None = Field(None, description="Only with min_confidence: this metric's top value is below it")
    prediction_set: list[str] | None = Field(
        None,
        description="Only with coverage: values holding the true one with that probability, most probable first",
    )


class CvssResult(BaseModel):
    vector: str
    base_score: float
    severity: str
    metrics: dict[str, CvssMetricResult]
    truncated: bool = Field(description="The input was cut to the model's window (as in training)")
    model: ModelInfo
    abstained: bool | None = Field(None, description="Only with min_confidence: some metric is below it")
    base_score_range: tuple[float, float] | None = Field(
        None, description="Only with coverage: lowest and highest base score of the vectors the metrics' sets allow"
    )
    cve_id: str | None = Field(None, description="Only for records: the record's CVE id")
    reference_vectors: list[ReferenceVector] | None = Field(
        None,
        description="Only for records: every CVSS vector the record carries, v3.x ones with the model's agreement",
    )


class CvssBatchResponse(BaseModel):
    results: list[CvssResult]


class TechniquePrediction(BaseModel):
    technique_id: str
    name: str
    tactics: list[str]
    probability: float


class AttackResult(BaseModel):
    predictions: list[TechniquePrediction]
    truncated: bool
    model: ModelInfo
    abstained: bool | None = Field(None, description="Only with min_confidence: the top technique is below it")
    prediction_set: list[TechniquePrediction] | None = Field(
        None,
        description="Only with coverage: techniques holding the true one with that probability, most probable first",
    )


class AttackBatchResponse(BaseModel):
    results: list[AttackResult]


class LoadedModel(BaseModel):
    name: str
    version: str
    task: str
    base_model: dict[str, Any]
    labels: int
    temperature: float
    prior_correction: float | None = Field(
        None, description="CVSS: tau of the decoder's shift away from the training prior (absent: plain greedy)"
    )
    max_input_tokens: int
    adapters: list[str] = []
    validation_metrics: dict[str, Any]
    coverages: list[float] = Field(default_factory=list, description="Prediction-set coverages offered")
    created_at: str


class ModelsResponse(BaseModel):
    models: list[LoadedModel]
    auth_enabled: bool = Field(description="Whether /classify/* and /v1/models require a bearer key")
    startup_seconds: dict[str, float] = Field(
        default_factory=dict, description="Where this process's start-up went, step by step"
    )


class ErrorResponse(BaseModel):
    detail: Any
