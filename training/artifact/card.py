"""The model card of an artifact (`README.md` beside the weights, in the Hugging Face layout): written from
the manifest alone whenever an artifact is written, so a retrained artifact gets a new card; `python -m
training card` rewrites one for an existing artifact. Not hashed: it is derived, like `report/`."""

from __future__ import annotations

from typing import Any

from training.artifact.manifest import AttackLabels, CvssLabels, Manifest

CVSS_ROWS = (  # (manifest key, label, format)
    ("mean_metric_accuracy", "mean per-metric accuracy", "{:.3f}"),
    ("exact_vector_match", "exact vector match", "{:.3f}"),
    ("base_score_mae", "base-score MAE (lower is better)", "{:.3f}"),
    ("severity_accuracy", "severity accuracy", "{:.3f}"),
    ("distinct_predicted_vectors", "distinct predicted vectors", "{:.0f}"),
)
ATTACK_ROWS = (
    ("top1", "top-1 accuracy", "{:.3f}"),
    ("top5", "top-5 accuracy", "{:.3f}"),
    ("macro_f1", "macro-F1", "{:.3f}"),
    ("nll_calibrated", "NLL, calibrated (lower is better)", "{:.2f}"),
    ("ece_calibrated", "ECE of the top-1 probability, calibrated", "{:.3f}"),
)
DATASETS = {"cvss": "CTI-VSP (CTIBench, NeurIPS 2024)", "attack": "CTI-HAL (human-annotated ATT&CK in CTI reports)"}


def _fmt(fmt: str, value: Any) -> str:
    return fmt.format(value) if isinstance(value, int | float) else "–"


def headline(manifest: Manifest) -> list[tuple[str, str, str]]:
    """(metric, model, TF-IDF + LR) rows of held-out figures, as the card and its test read them."""
    m = manifest.metrics
    if manifest.task == "cvss":
        base = m.get("tfidf_logreg", {})
        return [(label, _fmt(f, m.get(key)), _fmt(f, base.get(key))) for key, label, f in CVSS_ROWS]
    model, base = m.get("mean", {}), m.get("tfidf_logreg", {}).get("mean", {})
    return [(label, _fmt(f, model.get(key)), _fmt(f, base.get(key))) for key, label, f in ATTACK_ROWS]


def _held_out(manifest: Manifest) -> str:
    m = manifest.metrics
    if manifest.task == "cvss":
        where = f"{m.get('n', '?')} CVEs held out by CVE (a seeded hash): the model these figures are of never saw them"
        refit = f" (recorded: {m['validation']})" if "validation" in m else ""
        return where + refit + "."
    return f"{m.get('validation', 'cross-validation over threat groups')}; {m.get('note', '')}."


def _sets(manifest: Manifest) -> list[str]:
    """CVSS: whole vectors (coverage over random halves of the validation CVEs); ATT&CK: techniques (mean
    over held-out groups)."""
    rows = []
    for coverage, figures in sorted((manifest.metrics.get("conformal", {}).get("model") or {}).items()):
        if not isinstance(figures, dict):  # notes beside the levels
            continue
        if "vector_random_halves" in figures:
            measured = figures["vector_random_halves"].get("mean_coverage")
            size = figures.get("vector", {}).get("mean_set_size")
        else:
            groups = figures.get("mean_over_groups", {})
            measured, size = groups.get("coverage"), groups.get("mean_set_size")
        rows.append(f"| {coverage} | {_fmt('{:.3f}', measured)} | {_fmt('{:.1f}', size)} |")
    return rows


def _whole_reports(manifest: Manifest) -> list[str]:
    """ATT&CK: the whole-report pipeline's settings and its report-level figures, when evaluated."""
    rep, p = manifest.metrics.get("report"), manifest.report
    if not rep or p is None:
        return []
    rows = [
        ("this model", rep["model"]["mean"]),
        ("TF-IDF + LR, same pipeline", rep["tfidf_logreg"]["mean"]),
        ("every regex sentence's top-1 (this model)", rep["model"]["floor_mean"]),
    ]
    return [
        "",
        "## Whole reports",
        "",
        f"Sentences (pysbd) read with {p.context} neighbouring sentence(s) of context"
        + (", prose only" if p.prose_only else "")
        + f"; score per technique = {p.aggregation.replace('_', '-')} of their probabilities; default threshold "
        f"{p.min_score:g}. Report-level micro figures, each CTI-HAL threat group held out (its settings and "
        "threshold chosen on the other groups; its scores from a model that never trained on it), mean over groups:",
        "",
        "| pipeline | precision | recall | F1 |",
        "|---|---|---|---|",
        *(f"| {n} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} |" for n, m in rows),
    ]


def card_text(manifest: Manifest) -> str:
    task = manifest.task
    labels = manifest.labels
    what = (
        "a CVE description in, its CVSS v3.1 base vector out (a probability for every value of every metric)"
        if isinstance(labels, CvssLabels)
        else f"a threat-report excerpt in, ranked MITRE ATT&CK techniques out ({len(labels.techniques)} labels)"
        if isinstance(labels, AttackLabels)
        else task
    )
    hp = manifest.hyperparameters
    front = [
        "---",
        f"base_model: {manifest.base_model.name_or_path}",
        "library_name: peft",
        "license: other  # the base model's licence; the training data is CC BY-NC-SA 4.0 (non-commercial)",
        "pipeline_tag: text-classification",
        "tags: [cybersecurity, " + ("cvss" if task == "cvss" else "mitre-attack") + ", lora, vllm, secclf]",
        f"datasets: [{DATASETS.get(task, task)}]",
        "metrics: [" + ", ".join(k for k, _, _ in (CVSS_ROWS if task == "cvss" else ATTACK_ROWS)) + "]",
        "---",
    ]
    body = [
        f"# {manifest.name} ({manifest.version})",
        "",
        f"secclf's {task.upper() if task == 'cvss' else 'ATT&CK'} classifier: {what}. A LoRA adapter"
        + (" and a classification head" if task == "attack" else "")
        + f" on `{manifest.base_model.name_or_path}`, served by vLLM (see the repository README).",
        "This card is written from `manifest.json` by `python -m training card`; the manifest is the source.",
        "",
        "## Intended use",
        "",
        (
            "Triage help for security analysts: a first vector for CVEs that lack one, or a flag where a record's "
            "vector disagrees"
            if task == "cvss"
            else "Triage help for CTI analysts: candidate techniques for an excerpt, with calibrated probabilities "
            "and prediction sets"
        )
        + "; read its probabilities, prediction sets and abstention, not the top answer alone. Out of scope: "
        + (
            "scoring a CVE without a person's review, CVSS v4.0, temporal and environmental metrics"
            if task == "cvss"
            else "attributing an intrusion without a person's review, sub-techniques (mapped to their parent)"
        )
        + ", text not in English.",
        "",
        "## Training data",
        "",
        f"- sources: {', '.join(manifest.training_data.sources)} (sha256 `{manifest.training_data.sha256[:16]}…`)",
        f"- examples trained on: {manifest.training_data.n_train}",
        f"- split: {manifest.training_data.split}",
        "",
        "## Evaluation on held-out data",
        "",
        _held_out(manifest),
        "",
        "| metric | this model | TF-IDF + LR (same split) |",
        "|---|---|---|",
        *(f"| {name} | {model} | {base} |" for name, model, base in headline(manifest)),
        "",
        "## Calibration",
        "",
        f"- temperature T = {manifest.temperature:.3f}, fitted on held-out scores only",
    ]
    m = manifest.metrics
    if task == "cvss" and "ece_calibrated_crossfit" in m:
        body.append(
            f"- ECE of the per-metric probabilities: {m.get('ece_uncalibrated', float('nan')):.3f} uncalibrated, "
            f"{m['ece_calibrated_crossfit']:.3f} calibrated (cross-fitted: each half scaled by a T fitted on the other)"
        )
    elif "mean" in m:
        body.append(
            f"- ECE of the top-1 probability: {m['mean']['ece_uncalibrated']:.3f} uncalibrated, "
            f"{m['mean']['ece_calibrated']:.3f} calibrated (floor {m['mean']['ece_calibrated_floor']:.3f}; each "
            "held-out group scaled by a T fitted on the others)"
        )
    body += _whole_reports(manifest)
    if manifest.prior_correction is not None:
        body.append(f"- prior correction tau = {manifest.prior_correction.tau:g} (logit adjustment when decoding)")
    sets = _sets(manifest)
    unit = "vectors" if task == "cvss" else "techniques"
    if sets:
        body += [
            "",
            "Prediction sets (split-conformal; coverage measured on held-out data):",
            "",
            f"| target coverage | measured coverage | mean set size ({unit}) |",
            "|---|---|---|",
            *sets,
        ]
    body += [
        "",
        "## Limitations",
        "",
        "- Trained on a small public dataset; a new vendor, product family or threat group is a distribution "
        "shift the held-out figures only partly measure.",
        f"- Inputs are cut to {manifest.max_input_tokens} tokens, as in training (the answer says `truncated`).",
        "- The embedded base (SmolLM2-135M) is small; the same recipe on Foundation-Sec-8B is the reference.",
        "",
        "## How to reproduce",
        "",
        "`make train-defaults` in the repository (the exact commands are in its Makefile). Recorded settings:",
        "",
        "```text",
        *(f"{k}: {v}" for k, v in sorted(hp.items()) if not isinstance(v, dict | list) or k == "target_modules"),
        "```",
        "",
        "## Files",
        "",
        "| file | sha256 |",
        "|---|---|",
        *(f"| `{name}` | `{digest[:16]}…` |" for name, digest in sorted(manifest.files.items())),
        "",
    ]
    return "\n".join(front + body)
