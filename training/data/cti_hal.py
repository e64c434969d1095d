"""CTI-HAL: one JSON file per annotated report, `<group>/[annotator X/]<REPORT>.json`, searched recursively."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from training.data.common import AttackExample, DataError

log = logging.getLogger(__name__)
_TECH = re.compile(r"^T\d{4}(\.\d{3})?$")


def _files(root: Path) -> Iterator[tuple[Path, Path, str, list]]:
    """(file, path relative to `root`, threat group, its items) of every CTI-HAL file under `root`."""
    files = sorted(root.rglob("*.json")) if root.is_dir() else [root]
    if not files:
        raise DataError(f"{root}: no CTI-HAL *.json files found")
    for f in files:
        try:
            items = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{f}: not a readable JSON file: {e}") from e
        if not isinstance(items, list):
            raise DataError(f"{f}: expected a list of annotated items, got {type(items).__name__}")
        rel = f.relative_to(root) if root.is_dir() else Path(f.name)
        yield f, rel, rel.parts[0] if len(rel.parts) > 1 else f.parent.name, items


def load_cti_hal(
    root: Path, remap: Callable[[str], str | None], strict: bool = False
) -> tuple[list[AttackExample], Counter[str]]:
    """Labelled items of every report under `root`.

    `remap` takes a technique or sub-technique id and returns the current top-level id, or None
    if the label has no current replacement. Returns the examples and the count of dropped labels
    by label. A malformed technique id (e.g. '1036', 'T027' in the published data) stops loading
    when `strict`, else is logged with its file and item, counted as `malformed:<id>` and skipped.
    """
    out: list[AttackExample] = []
    dropped: Counter[str] = Counter()
    for f, rel, group, items in _files(Path(root)):
        for i, item in enumerate(items):
            where = f"{f}: item {i}"
            if not isinstance(item, dict) or "context" not in item or "technique" not in item:
                raise DataError(f"{where}: expected an object with 'context' and 'technique'")
            text, tech = (item["context"] or "").strip(), item["technique"]
            if not text or tech is None:
                continue  # unlabelled context: not a training example (see SOURCE.md)
            if not isinstance(tech, str) or not _TECH.match(tech.strip()):
                msg = f"{where}: technique {tech!r} is not an ATT&CK id like T1059 or T1059.001"
                if strict:
                    raise DataError(msg)
                log.warning("%s; item skipped", msg)
                dropped[f"malformed:{tech}"] += 1
                continue
            mapped = remap(tech.strip())
            if mapped is None:
                dropped[tech.strip()] += 1
                continue
            meta = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
            reason = meta.get("description") if isinstance(meta.get("description"), str) else ""
            out.append(AttackExample(text, mapped, group, f.stem, rel.as_posix(), rationale=reason.strip()))
    return out, dropped


@dataclass(frozen=True)
class HalReport:
    """One CTI-HAL file as a whole report: its distinct excerpts (labelled or not) joined in file order with
    a blank line between, and the set of current top-level technique ids its annotations name."""

    group: str
    name: str  # the file, relative to the data root
    text: str
    truth: frozenset[str]


def load_cti_hal_reports(root: Path, remap: Callable[[str], str | None]) -> list[HalReport]:
    """Every CTI-HAL file under `root` rebuilt as a report (an excerpt repeated for a second label or by a
    second annotator in the same file appears once); labels that do not map to a current technique are
    left out of the truth, as training leaves them out."""
    out = []
    for _, rel, group, items in _files(Path(root)):
        contexts: dict[str, None] = {}
        truth = set()
        for item in items:
            if not isinstance(item, dict):
                continue
            text = (item.get("context") or "").strip()
            if text:
                contexts.setdefault(text)
            tech = item.get("technique")
            if isinstance(tech, str) and _TECH.match(tech.strip()) and (mapped := remap(tech.strip())):
                truth.add(mapped)
        if contexts:
            out.append(HalReport(group, rel.as_posix(), "\n\n".join(contexts), frozenset(truth)))
    return out
