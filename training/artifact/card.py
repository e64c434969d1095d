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
    ("ece_calibrated_crossfit", "ECE of per-metric probabilities, calibrated (cross-fitted)", "{:.3f}"),
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
    m, data = manifest.metrics, manifest.training_data
    if manifest.task == "cvss":
        n = m.get("n", "?")
        return (
            f"{n} CVEs held out by CVE (seeded hash), never trained on by the model these figures are of. "
            f"{m.get('validation', '')} Split: {data.split}."
        ).strip()
    return f"{m.get('validation', 'cross-validation over threat groups')}: {m.get('note', '')}. Split: {data.split}."


def _sets(manifest: Manifest) -> list[str]:
    rows = []
    for coverage, figures in sorted((manifest.metrics.get("conformal", {}).get("model") or {}).items()):
        summary = figures.get("vector_random_halves") or figures.get("mean_over_groups") or {}
        size = summary.get("mean_set_size")
        rows.append(
            f"| {coverage} | {_fmt('{:.3f}', summary.get('mean_coverage', summary.get('coverage')))} | "
            f"{_fmt('{:.1f}', size)} |"
        )
    return rows


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
        "Triage help for security analysts: a first vector for CVEs that lack one, or a flag where a record's "
        "vector disagrees"
        if task == "cvss"
        else "Triage help for CTI analysts: candidate techniques for an excerpt, with calibrated probabilities "
        "and prediction sets",
        "; read its probabilities, prediction sets and abstention, not the top answer alone. Out of scope: "
        "deciding severity or attribution without a person, languages other than English, CVSS v4.0.",
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
    if manifest.prior_correction is not None:
        body.append(f"- prior correction tau = {manifest.prior_correction.tau:g} (logit adjustment when decoding)")
    sets = _sets(manifest)
    if sets:
        body += [
            "",
            "Prediction sets (split-conformal; coverage measured on held-out data):",
            "",
            "| target coverage | measured coverage | mean set size |",
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
        "```json",
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
