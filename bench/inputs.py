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


def speed_cves(data_dir: Path, n: int) -> list[str]:
    """`n` distinct CTI-VSP descriptions in file order, for timing only (any rows will do: nothing is scored)."""
    from training.data import load_cvss

    seen: dict[str, None] = {}
    for e in load_cvss([data_dir / "cti-vsp" / "cti-vsp.tsv"]):
        seen.setdefault(e.description)
        if len(seen) == n:
            break
    return list(seen)


class FreshSlices:
    """Disjoint slices of an input pool, one per measurement key (concurrency, repeat), the same slice for the
    same key on every side of a comparison. No server sees a text twice, so no prefix cache turns a repeat
    into cache hits (CVE descriptions do not repeat in use; repeating 64 of them measured mostly cache)."""

    def __init__(self, pool_size: int) -> None:
        self.pool_size, self.given, self.cursor = pool_size, {}, 0

    def __call__(self, key: tuple, n: int) -> range:
        if key not in self.given:
            if self.cursor + n > self.pool_size:
                raise ValueError(f"input pool of {self.pool_size} exhausted at {key}")
            self.given[key] = range(self.cursor, self.cursor + n)
            self.cursor += n
        return self.given[key]
