"""Out-of-fold scores of whole reports' segments, for `evaluate --task attack-report`.

For each threat group, a model trained on every other group with the artifact's recorded recipe (the
same rows, head start, epochs and seed the shipped model trained with) scores the units of that group's
reports; so does TF-IDF + LR trained on the same rows. Each unit variant the evaluation compares
(sentences alone, sentences with context, paragraphs, regular-expression sentences) is scored once per
distinct text. Each group's scores are saved to the cache folder as soon as they exist, so an
interrupted run resumes at the next group (training a fold takes about 15-20 minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path

import numpy as np

from training.artifact.segmenting import paragraphs, units
from training.data.cti_hal import HalReport

log = logging.getLogger(__name__)
CONTEXTS = (0, 1, 2)  # neighbouring sentences read on each side
_REGEX_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n\s*\n")  # the floor's splitter: what a new user writes first


def unit_texts(report: HalReport) -> dict[str, list[tuple[int, int, str]]]:
    """Each variant's units of a report: (start, end, text read by the model)."""
    text = report.text
    out = {f"context{c}": [(u.start, u.end, u.text) for u in units(text, c, prose_only=False)] for c in CONTEXTS}
    out["paragraph"] = [(a, b, text[a:b]) for a, b in paragraphs(text)]
    regex, pos = [], 0
    for piece in _REGEX_SENTENCE.split(text):
        at = text.find(piece, pos)
        if piece.strip():
            regex.append((at, at + len(piece), piece))
        pos = at + len(piece)
    out["regex"] = regex
    return out


def _cache_file(cache: Path, group: str) -> Path:
    return cache / f"{group}.npz"


def load_group(cache: Path, group: str) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """(texts, model logits, baseline log-probabilities) cached for a group, or None."""
    f = _cache_file(cache, group)
    if not f.exists():
        return None
    with np.load(f, allow_pickle=False) as z:
        return json.loads(str(z["texts"])), z["model"], z["baseline"]


def score_folds(artifact: Path, data: Path, reports: list[HalReport], cache: Path, max_steps: int = 0) -> None:
    """Fill `cache` with every group's out-of-fold unit scores (groups already there are kept); `max_steps`
    caps each fold's training (smoke runs only)."""
    import dataclasses

    import torch

    from training.artifact.base_model import resolve_base_model
    from training.artifact.encoding import encode_prompt
    from training.artifact.loading import load_tokenizer
    from training.artifact.manifest import load_manifest
    from training.attack.train import attack_examples, fresh_model, start_head
    from training.evaluation.baseline import attack_baseline_logits
    from training.fitting.layer_cache import frozen_layer_count, frozen_prefix_states
    from training.fitting.trainer import AttackTrainer, EpochEnd, TrainConfig, attack_logits_from_states, train

    manifest = load_manifest(artifact)
    hp = manifest.hyperparameters
    cfg = TrainConfig.from_hyperparameters(hp)
    if max_steps:
        cfg = dataclasses.replace(cfg, max_steps=max_steps)
    # artifacts from before `head_init` recorded `imprint_head`
    head_init = hp.get("head_init") or ("imprint" if hp.get("imprint_head") else "random")
    epochs = int(manifest.metrics.get("best_epoch") or cfg.epochs)
    labels, examples, extra, _ = attack_examples(
        data, hp.get("catalogue_examples", True), 0, hp.get("procedures", 0), hp.get("rationales", False)
    )
    if [t.id for t in labels] != [t.id for t in manifest.labels.techniques]:
        raise ValueError("the catalogue's labels differ from the artifact's: evaluate with the catalogue it used")
    index = {t.id: i for i, t in enumerate(labels)}
    cache.mkdir(parents=True, exist_ok=True)
    groups = sorted({r.group for r in reports})
    todo = [g for g in groups if load_group(cache, g) is None]
    if not todo:
        return
    base_path = resolve_base_model(manifest.base_model.name_or_path)
    tokenizer = load_tokenizer(base_path)
    rows_ex = examples + extra
    ids = [encode_prompt(tokenizer, manifest, e.text)[0] for e in rows_ex]
    model = fresh_model(base_path, len(labels), tokenizer.pad_token_id, cfg)
    n_frozen = frozen_layer_count(model, cfg.lora_layers)
    states = frozen_prefix_states(model, ids, n_frozen)
    rows = [
        {"input_ids": i, "states": s, "labels": index[e.technique]}
        for i, s, e in zip(ids, states, rows_ex, strict=True)
    ]
    for k, group in enumerate(todo):
        texts = sorted({t for r in reports if r.group == group for v in unit_texts(r).values() for _, _, t in v})
        unit_states = frozen_prefix_states(model, [encode_prompt(tokenizer, manifest, t)[0] for t in texts], n_frozen)
        train_idx = [i for i, e in enumerate(rows_ex) if e.trains_without([group])]
        log.info(
            "fold %d/%d: %s held out, %d units; training on %d rows",
            k + 1,
            len(todo),
            group,
            len(texts),
            len(train_idx),
        )
        model = model if k == 0 else fresh_model(base_path, len(labels), tokenizer.pad_token_id, cfg)
        train_rows = [rows[i] for i in train_idx]
        start_head(
            model,
            head_init,
            train_rows,
            [rows_ex[i] for i in train_idx],
            sorted({rows_ex[i].group for i in train_idx}),
            n_frozen,
        )
        with tempfile.TemporaryDirectory() as work:
            train(
                model,
                train_rows,
                cfg,
                work,
                AttackTrainer,
                [EpochEnd(stop_after=epochs)],
                n_frozen=n_frozen,
                label_smoothing=cfg.label_smoothing,
            )
        with torch.inference_mode():
            logits = attack_logits_from_states(model, n_frozen, unit_states).numpy()
        baseline = attack_baseline_logits([rows_ex[i] for i in train_idx], texts, list(index))
        tmp = _cache_file(cache, group).with_suffix(".tmp.npz")
        np.savez(
            tmp,
            texts=np.array(json.dumps(texts)),
            model=logits.astype(np.float32),
            baseline=baseline.astype(np.float32),
        )
        tmp.replace(_cache_file(cache, group))
        log.info("fold %s saved", group)
