"""Evaluation reports, shared by both tasks: written atomically, printed as a table of the model beside
its baselines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def format_report(report: dict, keys: Sequence[str]) -> str:
    """A small text table: model beside the baselines on the task's headline metrics (`keys`)."""
    cols = [c for c in ("model", "tfidf_logreg", "majority_class") if c in report]
    lines = [
        f"{report['task']} / {report['artifact']} ({report['version']}), n={report['model']['n']}",
        f"{'metric':<28}" + "".join(f"{c:>16}" for c in cols),
    ]
    if report.get("source"):  # figures recorded in training, not scored now
        lines.insert(1, f"recorded: {report['source']}")
    for k in keys:
        vals = [report[c].get(k) for c in cols]
        lines.append(f"{k:<28}" + "".join(f"{v:>16.4f}" if isinstance(v, (int, float)) else f"{'-':>16}" for v in vals))
    if report.get("abstention"):
        lines += ["", f"choosing min_confidence ({report['abstention_source']}):", "threshold  coverage  precision"]
        lines += [  # precision is None where no answer reaches the threshold
            f"{r['min_confidence']:>9.2f}  {r['coverage']:>8.3f}  "
            + (f"{r['precision']:>9.3f}" if r["precision"] is not None else f"{'-':>9}")
            for r in report["abstention"]
        ]
    return "\n".join(lines)
