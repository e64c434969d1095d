"""A report's techniques as an ATT&CK Navigator layer (layer format 4.5, mitre-attack/attack-navigator
`layers/spec/v4.5/layerformat.md`): scores 0-100 on a white-to-red gradient, each technique's best evidence
in its comment and all of it in its metadata, and the model and the report's hash in the layer's metadata."""

from __future__ import annotations

import re

from service.report.protocol import ReportResult

LAYER_VERSION = "4.5"
NAVIGATOR_VERSION = "5.1.0"  # the format requires >= 4.9.0 for layer 4.5
DOMAIN = "enterprise-attack"
COMMENT_CHARS = 500  # a comment is shown in a tooltip: the best sentence, cut


def attack_version(catalogue: str) -> str | None:
    """ATT&CK's major version from the manifest's catalogue name ("MITRE ATT&CK Enterprise v18.1 ...": "18")."""
    m = re.search(r"\bv(\d+)(?:\.\d+)?\b", catalogue)
    return m.group(1) if m else None


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def layer(result: ReportResult, catalogue: str, title: str | None = None) -> dict:
    versions = {"navigator": NAVIGATOR_VERSION, "layer": LAYER_VERSION}
    if (v := attack_version(catalogue)) is not None:
        versions = {"attack": v, **versions}
    techniques = []
    for t in result.techniques:
        best = t.evidence[0] if t.evidence else None
        techniques.append(
            {
                "techniqueID": t.technique_id,
                "score": round(100 * t.score, 1),
                "comment": _cut(f'{best.probability:.2f}: "{best.text}"', COMMENT_CHARS) if best else "",
                "enabled": True,
                "metadata": [
                    {"name": f"evidence {i} (p={e.probability:.2f}, chars {e.start}-{e.end})", "value": e.text}
                    for i, e in enumerate(t.evidence, 1)
                ],
                "showSubtechniques": False,
            }
        )
    m = result.model
    return {
        "name": title or f"Report {result.text_sha256[:12]}",
        "versions": versions,
        "domain": DOMAIN,
        "description": f"Techniques found by {m.name} {m.version} in a {result.document.kind} report "
        f"({result.segments} sentences; score = {result.aggregation} of sentence probabilities, x100; "
        f"shown at >= {100 * result.min_score:g})",
        "sorting": 3,  # descending by score
        "layout": {"layout": "side", "showID": True, "showName": True, "showAggregateScores": False},
        "hideDisabled": False,
        "techniques": techniques,
        "gradient": {"colors": ["#ffffff", "#ff6666"], "minValue": 0, "maxValue": 100},
        "legendItems": [],
        "showTacticRowBackground": False,
        "tacticRowBackground": "#dddddd",
        "selectTechniquesAcrossTactics": True,
        "selectSubtechniquesWithParent": False,
        "selectVisibleTechniques": False,
        "metadata": [
            {"name": "model", "value": f"{m.name} {m.version} (base {m.base_model})"},
            {"name": "report sha256", "value": result.text_sha256},
            {"name": "min_score", "value": f"{result.min_score:g}"},
            {"name": "truncated", "value": str(result.truncated).lower()},
        ],
    }
