"""CVE records as users hold them: an NVD API 2.0 vulnerability item (`{"cve": {...}}`) or a CVE JSON 5
record (`"dataType": "CVE_RECORD"`). Reads the English description the model classifies and every CVSS
vector the record carries, then compares the model's answer with each v3.x vector.

Shapes follow NVD's `cve_api_json_2.0` schema (`metrics.cvssMetricV31[].cvssData.vectorString`, `source`,
`type` Primary/Secondary) and CVEProject/cve-schema 5.x (`containers.cna` / `containers.adp[]`,
`metrics[].cvssV3_1` ...)."""

from __future__ import annotations

from typing import Any

from cvss import CVSS3
from cvss.exceptions import CVSSError
from pydantic import BaseModel, Field

from service.exceptions import InvalidInput, quoted
from training.artifact.manifest import CvssLabels

NVD_METRIC_KEYS = {"cvssMetricV40": "4.0", "cvssMetricV31": "3.1", "cvssMetricV30": "3.0", "cvssMetricV2": "2.0"}
CVE5_METRIC_KEYS = {"cvssV4_0": "4.0", "cvssV3_1": "3.1", "cvssV3_0": "3.0", "cvssV2_0": "2.0"}
COMPARED_VERSIONS = ("3.0", "3.1")  # v3.0 and v3.1 share the base metrics and their values


class MetricAgreement(BaseModel):
    reference: str = Field(description="The record's value of this metric")
    predicted: str = Field(description="The model's value")
    match: bool
    probability: float = Field(description="The model's probability of the record's value")


class Agreement(BaseModel):
    metrics: dict[str, MetricAgreement]
    matches: int = Field(description="How many of the 8 base metrics agree")
    base_score_difference: float = Field(description="The model's base score minus the record's")


class ReferenceVector(BaseModel):
    source: str = Field(description="'NVD Primary', 'NVD Secondary', 'CNA' or 'ADP'")
    organization: str = Field(description="Who scored it: NVD's source, or the CNA's or ADP's short name")
    version: str = Field(description="CVSS version of the vector: 2.0, 3.0, 3.1 or 4.0")
    vector: str
    base_score: float | None = None
    agreement: Agreement | None = Field(None, description="Only for v3.x vectors: the model against this vector")


class CveRecord(BaseModel):
    cve_id: str
    description: str
    references: list[ReferenceVector]


def _english(descriptions: Any) -> str | None:
    """The first English description (`en`, `en-US`, ...) with text in it."""
    for d in descriptions if isinstance(descriptions, list) else []:
        if not isinstance(d, dict):
            continue
        lang, value = str(d.get("lang", "")).lower(), d.get("value")
        english = lang == "en" or lang.startswith(("en-", "en_"))
        if english and isinstance(value, str) and value.strip():
            return value
    return None


def _score(data: dict) -> float | None:
    score = data.get("baseScore")
    return float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None


def _nvd(cve: dict, index: int) -> CveRecord:
    cve_id = str(cve.get("id") or "")
    if str(cve.get("vulnStatus", "")).lower() == "rejected":
        raise InvalidInput(f"record {index} ({quoted(cve_id)}): the NVD marks this CVE Rejected")
    description = _english(cve.get("descriptions"))
    if description is None:
        raise InvalidInput(f"record {index} ({quoted(cve_id)}): no English description")
    refs = []
    metrics = cve.get("metrics") if isinstance(cve.get("metrics"), dict) else {}
    for key, version in NVD_METRIC_KEYS.items():
        for m in metrics.get(key) or []:
            data = m.get("cvssData") if isinstance(m, dict) else None
            if not isinstance(data, dict) or not isinstance(data.get("vectorString"), str):
                continue
            kind = "NVD Primary" if str(m.get("type", "")).lower() == "primary" else "NVD Secondary"
            refs.append(
                ReferenceVector(
                    source=kind,
                    organization=str(m.get("source", "")),
                    version=str(data.get("version") or version),
                    vector=data["vectorString"],
                    base_score=_score(data),
                )
            )
    return CveRecord(cve_id=cve_id, description=description, references=refs)


def _container_refs(container: dict, source: str) -> list[ReferenceVector]:
    provider = container.get("providerMetadata") if isinstance(container.get("providerMetadata"), dict) else {}
    org = str(provider.get("shortName") or provider.get("orgId") or "")
    refs = []
    for m in container.get("metrics") or []:
        if not isinstance(m, dict):
            continue
        for key, version in CVE5_METRIC_KEYS.items():
            data = m.get(key)
            if isinstance(data, dict) and isinstance(data.get("vectorString"), str):
                refs.append(
                    ReferenceVector(
                        source=source,
                        organization=org,
                        version=str(data.get("version") or version),
                        vector=data["vectorString"],
                        base_score=_score(data),
                    )
                )
    return refs


def _cve5(record: dict, index: int) -> CveRecord:
    meta = record.get("cveMetadata") if isinstance(record.get("cveMetadata"), dict) else {}
    cve_id = str(meta.get("cveId") or "")
    if str(meta.get("state", "")).upper() == "REJECTED":
        raise InvalidInput(f"record {index} ({quoted(cve_id)}): the CVE record's state is REJECTED")
    containers = record.get("containers") if isinstance(record.get("containers"), dict) else {}
    cna = containers.get("cna") if isinstance(containers.get("cna"), dict) else {}
    adps = [a for a in containers.get("adp") or [] if isinstance(a, dict)]
    description = _english(cna.get("descriptions"))
    for adp in adps:  # the CNA's description first, then an ADP's
        description = description or _english(adp.get("descriptions"))
    if description is None:
        raise InvalidInput(f"record {index} ({quoted(cve_id)}): no English description")
    refs = _container_refs(cna, "CNA")
    for adp in adps:
        refs += _container_refs(adp, "ADP")
    return CveRecord(cve_id=cve_id, description=description, references=refs)


def parse_record(record: Any, index: int = 0) -> CveRecord:
    """One record of either shape; anything else (or a rejected CVE, or no English text) is a 422."""
    if isinstance(record, dict) and isinstance(record.get("cve"), dict):
        return _nvd(record["cve"], index)
    if isinstance(record, dict) and record.get("dataType") == "CVE_RECORD":
        return _cve5(record, index)
    raise InvalidInput(
        f'record {index}: neither an NVD API 2.0 vulnerability item ({{"cve": {{...}}}}) '
        'nor a CVE JSON 5 record ("dataType": "CVE_RECORD")'
    )


def _base_values(vector: str, labels: CvssLabels) -> dict[str, str] | None:
    """The record's base-metric values, or None where the vector is not a valid v3.x vector."""
    try:
        CVSS3(vector)
    except CVSSError:
        return None
    parts = dict(p.split(":", 1) for p in vector.split("/")[1:] if ":" in p)
    values = {m.key: parts.get(m.key) for m in labels.metrics}
    if any(v not in m.values for v, m in zip(values.values(), labels.metrics, strict=True)):
        return None
    return values


def compare(
    reference: ReferenceVector, labels: CvssLabels, probabilities: dict[str, dict[str, float]], base_score: float
) -> ReferenceVector:
    """`reference` with its agreement against the model's per-metric probabilities (v3.x only)."""
    if reference.version not in COMPARED_VERSIONS:
        return reference
    values = _base_values(reference.vector, labels)
    if values is None:
        return reference
    per_metric = {}
    for key, ref_value in values.items():
        probs = probabilities[key]
        predicted = max(probs, key=probs.get)
        per_metric[key] = MetricAgreement(
            reference=ref_value, predicted=predicted, match=predicted == ref_value, probability=probs[ref_value]
        )
    ref_score = reference.base_score
    if ref_score is None:
        ref_score = float(CVSS3(reference.vector).scores()[0])
    agreement = Agreement(
        metrics=per_metric,
        matches=sum(m.match for m in per_metric.values()),
        base_score_difference=round(base_score - ref_score, 1),
    )
    return reference.model_copy(update={"agreement": agreement})
