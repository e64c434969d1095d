"""Benchmark inputs: validation CVEs and held-out CTI-HAL excerpts of the committed default artifacts."""

from __future__ import annotations

from pathlib import Path

from bench.harness import REPO

CVSS_ART = REPO / "artifacts" / "cvss-default"
ATTACK_ART = REPO / "artifacts" / "attack-default"


def inputs(data_dir: Path, n: int) -> tuple[list, list[str]]:
    """The first `n` validation CVEs (examples: description + true vector) and CTI-HAL texts: of held-out
    groups where the artifact has any, else of every group (the ATT&CK side times speed, not accuracy)."""
    from training.artifact.manifest import load_split
    from training.attack.catalogue import catalogue
    from training.data import load_cti_hal, load_cvss

    val = set(load_split(CVSS_ART).scored_ids)  # the default, a refit, trained on them: speed, not accuracy
    cves = [e for e in load_cvss([data_dir / "cti-vsp" / "cti-vsp.tsv"]) if e.cve_id in val]
    seen = set(load_split(ATTACK_ART).train_groups)
    hal, _ = load_cti_hal(data_dir / "cti-hal" / "data", catalogue().remap)
    texts = [e.text for e in hal if e.group not in seen] or [e.text for e in hal]
    return cves[:n], texts[: max(n, 64)]


def report_inputs(data_dir: Path, n: int) -> list[str]:
    """`n` whole CTI-HAL reports (as `evaluate --task attack-report` rebuilds them), largest first: the report
    route's throughput is timed on the documents analysts send, not on single sentences."""
    from training.attack.catalogue import catalogue
    from training.data.cti_hal import load_cti_hal_reports

    reports = load_cti_hal_reports(data_dir / "cti-hal" / "data", catalogue().remap)
    return [r.text for r in sorted(reports, key=lambda r: -len(r.text))[:n]]
