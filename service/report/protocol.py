"""Request and response models of POST /classify/attack/report."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.schemas import ModelInfo

Format = Literal["json", "navigator", "stix"]
REPORT_EXAMPLE = (
    "The intrusion began with spearphishing emails carrying malicious Word documents. Once opened, a macro ran "
    "PowerShell to download the second stage.\n\nThe actors then dumped credentials from LSASS memory."
)


class ReportOptions(BaseModel):
    """What a client may set, in a JSON body or as multipart form fields beside the file."""

    model_config = ConfigDict(extra="forbid", strict=True)
    min_score: float | None = Field(
        None, gt=0, le=1, description="Report-level threshold on a technique's score (default: the manifest's)"
    )
    top_evidence: int = Field(3, ge=1, le=20, description="Evidence sentences per technique, best first")
    format: Format = Field("json", description="json, navigator (ATT&CK Navigator layer 4.5) or stix (2.1 bundle)")
    include_text: bool = Field(False, description="Also return the extracted text (evidence offsets point into it)")


class ReportRequest(ReportOptions):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"text": REPORT_EXAMPLE, "top_evidence": 2}]}
    )
    text: str | None = Field(None, description="The report as plain text")
    html: str | None = Field(None, description="The report as a web page's HTML (its main text is extracted)")

    @model_validator(mode="after")
    def _one(self):
        if (self.text is None) == (self.html is None):
            raise ValueError("give exactly one of 'text' or 'html' (or upload a file as multipart/form-data)")
        return self


class Evidence(BaseModel):
    start: int = Field(description="Character offset of the sentence in the extracted text")
    end: int
    text: str
    probability: float = Field(description="The technique's calibrated probability for this sentence")


class ReportTechnique(BaseModel):
    technique_id: str
    name: str
    tactics: list[str]
    score: float = Field(description="The report-level score the threshold applies to")
    evidence: list[Evidence]


class DocumentInfo(BaseModel):
    kind: Literal["text", "html", "pdf"]
    characters: int
    pages: int | None = None


class ReportResult(BaseModel):
    techniques: list[ReportTechnique]
    segments: int = Field(description="Sentences classified")
    text_sha256: str = Field(description="SHA-256 of the extracted text (UTF-8)")
    truncated: bool = Field(description="Sentences past the segment limit were left out")
    min_score: float
    aggregation: str
    document: DocumentInfo
    model: ModelInfo
    text: str | None = Field(None, description="Only with include_text: the extracted text")
