"""A report's techniques as a STIX 2.1 bundle, built with the OASIS `stix2` library: a `report` whose
`object_refs` are the techniques' `attack-pattern` objects (the catalogue's own STIX ids where the manifest
records them, so a threat-intelligence platform merges them with MITRE's), each with its ATT&CK external
reference and kill-chain phases, and one `note` per technique holding its evidence sentences, its score as
`confidence`, and refs to both. Produced by an `identity` naming the model."""

from __future__ import annotations

import json
import uuid

import stix2

from service.report.protocol import ReportResult
from training.artifact.manifest import Technique

MEDIA_TYPE = "application/stix+json;version=2.1"
ATTACK_URL = "https://attack.mitre.org/techniques/{}/"


def _pattern(t: Technique, identity: str) -> stix2.AttackPattern:
    # a manifest without the catalogue's id: a stable one of our own, so repeated exports merge
    stix_id = t.stix_id or f"attack-pattern--{uuid.uuid5(uuid.NAMESPACE_URL, ATTACK_URL.format(t.id))}"
    return stix2.AttackPattern(
        id=stix_id,
        name=t.name,
        external_references=[{"source_name": "mitre-attack", "external_id": t.id, "url": ATTACK_URL.format(t.id)}],
        kill_chain_phases=[{"kill_chain_name": "mitre-attack", "phase_name": p} for p in t.tactics],
        created_by_ref=identity,
        allow_custom=False,
    )


def bundle(result: ReportResult, labels: list[Technique], title: str | None = None) -> dict:
    by_id = {t.id: t for t in labels}
    m = result.model
    identity = stix2.Identity(name=f"secclf {m.name} {m.version}", identity_class="system")
    patterns = [_pattern(by_id[t.technique_id], identity.id) for t in result.techniques]
    report = stix2.Report(
        name=title or f"Report {result.text_sha256[:12]}",
        description=f"ATT&CK techniques found by {m.name} {m.version} (base {m.base_model}) in a "
        f"{result.document.kind} report of {result.segments} sentences, SHA-256 {result.text_sha256}; "
        f"threshold {result.min_score:g} on the {result.aggregation} of sentence probabilities",
        report_types=["threat-report"],
        published=stix2.utils.get_timestamp(),
        object_refs=[p.id for p in patterns] or [identity.id],
        created_by_ref=identity.id,
    )
    notes = []
    for t, p in zip(result.techniques, patterns, strict=True):
        lines = [f'- p={e.probability:.3f}, characters {e.start}-{e.end}: "{e.text}"' for e in t.evidence]
        notes.append(
            stix2.Note(
                abstract=f"{t.technique_id} {t.name}: score {t.score:.3f}",
                content="Evidence sentences:\n" + "\n".join(lines),
                object_refs=[report.id, p.id],
                confidence=max(0, min(100, round(100 * t.score))),
                created_by_ref=identity.id,
            )
        )
    return json.loads(stix2.Bundle(identity, report, *patterns, *notes).serialize())
