"""ATT&CK: sequence-classification head (LoRA + trained `score` head) over current top-level techniques.

Labels: every current Enterprise technique in the catalogue; CTI-HAL sub-techniques map to their
parent and revoked ids to their replacement. Each technique's catalogue name and description is a
training example, so techniques absent from CTI-HAL can still be predicted.

Validation is across threat groups, the shift users meet: groups are split into k folds (by default
one per group, so each fold model, like the shipped one, meets a group it never trained on after
training on all the others); each fold records its held-out logits after every epoch. The epoch
count is chosen on those out-of-fold logits, the temperature is fitted on them, and the shipped model
is then trained on every group for that many epochs. With `validation_groups`, one held-out fold is the model.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from training.artifact.base_model import resolve_base_model
from training.artifact.encoding import encode_prompt
from training.artifact.layout import HEAD_FILE
from training.artifact.loading import load_tokenizer, new_sequence_classifier, pick_device, pick_dtype
from training.artifact.manifest import (
    AttackLabels,
    AttackSplit,
    Manifest,
    Technique,
    TrainingData,
    write_artifact,
    write_split,
)
from training.artifact.prompting import ATTACK_TEMPLATE
from training.artifact_writer import data_hash, draft_manifest, save_adapter_16bit
from training.attack.catalogue import CATALOGUE_NAME, catalogue
from training.attack.cross_validation import (
    cross_group_metrics,
    excerpt_ids,
    per_group_metrics,
    pick_candidate,
    pooled_temperature,
    summarize,
)
from training.attack.head_init import HEAD_INITS, imprint_head, probe_head, reimprint_head, reimprint_logits
from training.attack.predict import attack_logits
from training.attack.procedures import PROCEDURE_GROUP, procedure_examples
from training.data import AttackExample, load_cti_hal
from training.evaluation import heldout
from training.evaluation.baseline import attack_baseline_oof
from training.evaluation.conformal import attack_conformal
from training.evaluation.split import SplitError, group_k_folds, split_attack
from training.fitting.layer_cache import frozen_layer_count, frozen_prefix_states
from training.fitting.trainer import (
    AttackTrainer,
    EpochEnd,
    TrainConfig,
    attack_logits_from_states,
    is_main_process,
    train,
    with_lora,
)
from training.fitting.weight_average import TailAverages

log = logging.getLogger(__name__)
DEFAULT_FOLDS = 0  # leave-one-group-out: each fold trains on all groups but one, as the shipped model meets a new one
RATIONALE_GROUP = "rationale"  # the group of annotator-reason rows (tied to their item's group)


def evaluate_attack_model(model, tokenizer, manifest: Manifest, examples: list[AttackExample]):
    """(raw logits, targets) of `examples` through the full model, as `evaluate` and the service see it."""
    index = {t.id: i for i, t in enumerate(manifest.labels.techniques)}
    logits = attack_logits(model, tokenizer, manifest, [e.text for e in examples]).numpy()
    return logits, np.array([index[e.technique] for e in examples])


def fresh_model(base_path: str, n_labels: int, pad_id: int, cfg: TrainConfig):
    """The base LM with a `score` head over `n_labels` and LoRA adapters, both drawn from `cfg.seed`."""
    import torch

    torch.manual_seed(cfg.seed)  # every fold and the final model start from the same initial head and LoRA
    model = with_lora(new_sequence_classifier(base_path, n_labels, pad_id, torch.float32), cfg, None)
    model.get_base_model().score.weight.requires_grad_(True)  # trained in full beside the LoRA
    return model


def start_head(
    model, head_init: str, rows: list[dict], examples: list[AttackExample], groups: list[str], n_frozen: int
) -> None:
    """Set the head's starting weights from the training `rows` (`examples[i]` is row i's source; `groups`
    the threat groups they hold) as `head_init` says; "random" keeps the seeded draw."""
    if head_init == "imprint":
        imprint_head(model, rows, n_frozen)
    elif head_init == "probe":
        probe_head(model, rows, n_frozen, examples, groups)


def _mean_top1(logits: np.ndarray, targets: np.ndarray, groups: np.ndarray) -> float:
    """Held-out top-1 averaged over groups (each group weighs the same): what epochs are chosen by."""
    return float(np.mean([np.mean(logits[groups == g].argmax(1) == targets[groups == g]) for g in np.unique(groups)]))


def train_attack(
    data: Path,
    out: Path,
    base_model: str,
    cfg: TrainConfig,
    validation_groups: tuple[str, ...] = (),
    max_input_tokens: int = 256,
    use_catalogue: bool = True,
    name: str | None = None,
    limit_train: int = 0,
    folds: int = DEFAULT_FOLDS,
    procedures: int = 0,
    rationales: bool = False,
    head_init: str = "random",
    reimprint: tuple[float, ...] = (),
) -> Manifest:
    started = time.time()
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {HEAD_INITS}, not {head_init!r}")
    if reimprint and validation_groups:
        raise SplitError("re-imprint blend weights are chosen on cross-validation folds, not a held-out group")
    labels, examples, extra, dropped = attack_examples(data, use_catalogue, limit_train, procedures, rationales)
    index = {t.id: i for i, t in enumerate(labels)}
    fold_groups = [tuple(validation_groups)] if validation_groups else group_k_folds(examples, folds)
    if validation_groups:
        split_attack(examples, validation_groups)  # names must exist
    log.info(
        "ATT&CK: %d items from %d groups (+%d extra rows: catalogue, procedures, reasons); folds %s; dropped %s",
        len(examples),
        len({e.group for e in examples}),
        len(extra),
        fold_groups,
        dict(dropped),
    )

    base_path = resolve_base_model(base_model)
    tokenizer = load_tokenizer(base_path)
    all_groups = sorted({e.group for e in examples})
    final_groups = [g for g in all_groups if g not in validation_groups]
    draft = draft_manifest(
        task="attack",
        out=out,
        name=name,
        base_model=base_model,
        prompt_template=ATTACK_TEMPLATE,
        max_input_tokens=max_input_tokens,
        labels=AttackLabels(catalogue=CATALOGUE_NAME, techniques=labels),
        cfg=cfg,
        training_data=TrainingData(
            sources=[str(Path(data).name)],
            sha256=data_hash([(e.text, e.technique, e.group, e.report) for e in examples]),
            n_train=sum(e.group in final_groups for e in examples) + len(extra),
            n_validation=sum(e.group not in final_groups for e in examples),
            split=(
                f"by threat group: validation = {', '.join(validation_groups)}"
                if validation_groups
                else f"by threat group: {len(fold_groups)}-fold cross-validation over groups {fold_groups}; "
                "the shipped model trains on every group"
            ),
            notes={
                "dropped_labels": dict(dropped),
                "catalogue_examples": sum(e.group != RATIONALE_GROUP for e in extra),  # descriptions + procedures
                "procedure_examples": sum(e.group == PROCEDURE_GROUP for e in extra),
                "rationale_examples": sum(e.group == RATIONALE_GROUP for e in extra),
            },
        ),
        catalogue_examples=use_catalogue,
        procedures=procedures,
        rationales=rationales,
        head_init=head_init,
        reimprint=list(reimprint),
        folds=[list(f) for f in fold_groups],
        limit_train=limit_train,
    )

    # The frozen bottom layers are the base model's, the same in every fold: run them once for all rows.
    rows_ex = examples + extra
    ids = [encode_prompt(tokenizer, draft, e.text)[0] for e in rows_ex]
    model = fresh_model(base_path, len(labels), tokenizer.pad_token_id, cfg)
    n_frozen = frozen_layer_count(model, cfg.lora_layers)
    t0 = time.time()
    states = frozen_prefix_states(model, ids, n_frozen)
    cache_seconds = time.time() - t0
    log.info("cached the inputs of layer %d for %d rows in %.1f s", n_frozen, len(rows_ex), cache_seconds)
    rows = [
        {"input_ids": i, "states": s, "labels": index[e.technique]}
        for i, s, e in zip(ids, states, rows_ex, strict=True)
    ]
    targets_all = np.array([index[e.technique] for e in examples])
    groups_all = np.array([e.group for e in examples])

    # Cross-validation: per fold, held-out logits after every epoch, of the live weights (average start 0)
    # and of each candidate tail average.
    oof: dict[tuple[int, int], np.ndarray] = {}  # (average start, epoch) -> [n_examples, n_labels]
    blend_oof: dict[float, np.ndarray] = {}  # re-imprint blend weight -> the same, of the last epoch's weights
    fold_models = []
    for k, held in enumerate(fold_groups):
        train_idx = [i for i, e in enumerate(rows_ex) if e.trains_without(held)]
        test_idx = [i for i, e in enumerate(examples) if e.group in held]
        model = model if k == 0 else fresh_model(base_path, len(labels), tokenizer.pad_token_id, cfg)

        def record(m, epoch: int, start: int = 0, test_idx=test_idx) -> dict:
            lg = attack_logits_from_states(m, n_frozen, [states[i] for i in test_idx]).numpy()
            key = (start, epoch)
            oof.setdefault(key, np.full((len(examples), len(labels)), np.nan, dtype=np.float32))[test_idx] = lg
            return {"score": _mean_top1(lg, targets_all[test_idx], groups_all[test_idx])}

        epoch_end = EpochEnd(record, keep_best=bool(validation_groups))
        averages = [TailAverages(cfg.average_from, epoch_end.consider)] if cfg.average_from else []
        log.info("fold %d/%d: held out %s (%d items)", k + 1, len(fold_groups), held, len(test_idx))
        train_groups = [g for g in all_groups if g not in held]
        start_head(
            model, head_init, [rows[i] for i in train_idx], [rows_ex[i] for i in train_idx], train_groups, n_frozen
        )
        with tempfile.TemporaryDirectory() as work:
            train(
                model,
                [rows[i] for i in train_idx],
                cfg,
                work,
                AttackTrainer,
                [epoch_end, *averages],
                n_frozen=n_frozen,
                label_smoothing=cfg.label_smoothing,
            )
        if reimprint:
            train_rows, test_states = [rows[i] for i in train_idx], [states[i] for i in test_idx]
            blends = reimprint_logits(model, n_frozen, train_rows, test_states, reimprint)
            for w, lg in blends.items():
                blend_oof.setdefault(w, np.full((len(examples), len(labels)), np.nan, dtype=np.float32))[test_idx] = lg
        fold_models.append((model, epoch_end))

    held_mask = np.isin(groups_all, [g for f in fold_groups for g in f])
    oof_targets, oof_groups = targets_all[held_mask], groups_all[held_mask]
    seen = sorted(c for c in oof if not np.isnan(oof[c][held_mask]).any())  # recorded by every fold
    by_candidate = {c: _mean_top1(oof[c][held_mask], oof_targets, oof_groups) for c in seen}
    by_epoch = {e: v for (s, e), v in by_candidate.items() if s == 0}
    if validation_groups:  # the held-out fold is the model: what its EpochEnd kept
        best_start, best_epoch = fold_models[0][1].best_average_from, fold_models[0][1].best_epoch
    else:
        best_start, best_epoch = pick_candidate(by_candidate, cfg.select_best_epoch)
    # Re-imprinted heads are candidates of the last epoch's live weights; one wins only by scoring higher.
    by_blend = {w: _mean_top1(lg[held_mask], oof_targets, oof_groups) for w, lg in blend_oof.items()}
    blend = max(sorted(by_blend), key=lambda w: by_blend[w], default=0.0)
    if not by_blend or by_blend[blend] <= by_candidate[(best_start, best_epoch)]:
        blend = 0.0
    else:
        best_start, best_epoch = 0, max(e for s, e in by_candidate if s == 0)
    # float64 from here on, as `heldout.load` gives them back: a refit then reproduces these metrics exactly
    oof_logits = (blend_oof[blend] if blend else oof[(best_start, best_epoch)])[held_mask].astype(np.float64)
    temperature = pooled_temperature(oof_logits, oof_targets)
    extra_candidates = {f"average from epoch {s} to {e}": oof[(s, e)] for s, e in seen if s} | {
        f"re-imprinted head, blend {w:.2f}": lg for w, lg in blend_oof.items()
    }
    for name, lg in extra_candidates.items():
        summary = summarize(per_group_metrics(lg[held_mask].astype(np.float64), oof_targets, oof_groups))
        log.info("%s: %s", name, {k: round(v, 4) for k, v in summary["mean"].items()})
    log.info(
        "held-out mean top-1 by epoch %s, by (average start, epoch) %s; keeping %s, T=%.3f",
        by_epoch,
        {f"{s}-{e}": round(v, 4) for (s, e), v in by_candidate.items() if s},
        f"epoch {best_epoch}"
        + (f", averaged from epoch {best_start}" if best_start else "")
        + (f", head re-imprinted at blend {blend}" if blend else ""),
        temperature,
    )

    baseline_logits = attack_baseline_oof(examples, extra, fold_groups, [t.id for t in labels])
    metrics = {
        "validation": (
            f"held-out group(s) {list(validation_groups)}"
            if validation_groups
            else f"{len(fold_groups)}-fold cross-validation over threat groups; out-of-fold logits of every group"
        ),
        "note": "calibrated figures scale each group by a temperature fitted on the other groups' held-out logits",
        "best_epoch": best_epoch,
        "heldout_top1_by_epoch": by_epoch,
        **(
            {
                "average_from": best_start,
                "heldout_top1_by_average": {f"{s}-{e}": v for (s, e), v in by_candidate.items() if s},
            }
            if cfg.average_from
            else {}
        ),
        **(
            {"reimprint": blend, "heldout_top1_by_reimprint": {str(w): v for w, v in by_blend.items()}}
            if reimprint
            else {}
        ),
        "temperature": temperature,
        **cross_group_metrics(
            oof_logits,
            oof_targets,
            oof_groups,
            baseline_logits,
            excerpt_ids([e for e, held in zip(examples, held_mask, strict=True) if held]),
        ),
    }

    held = heldout.AttackHeldout(oof_logits, oof_targets, oof_groups)
    conformal, metrics["conformal"] = attack_conformal(held, temperature, baseline_logits)

    if validation_groups:
        model, epoch_end = fold_models[0]
        epoch_end.restore_best(model)
        stats = {}
    else:
        # The shipped model: every group, the cross-validated epoch count on the same schedule.
        model = fresh_model(base_path, len(labels), tokenizer.pad_token_id, cfg)
        log.info("final model: all %d groups, %d epoch(s)", len(all_groups), best_epoch)
        start_head(model, head_init, rows, rows_ex, all_groups, n_frozen)
        average = TailAverages([best_start]) if best_start else None
        with tempfile.TemporaryDirectory() as work:
            stats = train(
                model,
                rows,
                cfg,
                work,
                AttackTrainer,
                [EpochEnd(stop_after=best_epoch), *([average] if average else [])],
                n_frozen=n_frozen,
                label_smoothing=cfg.label_smoothing,
            )
        if average:
            average.apply(model, best_start)
        if blend:
            reimprint_head(model, rows, n_frozen, blend)
    if not is_main_process():
        return draft
    device = pick_device()
    model.eval().to(device, dtype=pick_dtype(device))
    metrics["train_seconds"] = round(time.time() - started, 1)
    metrics["cache_seconds"] = round(cache_seconds, 1)
    metrics.update({f"train_{k}": v for k, v in stats.items()})
    log.info("ATT&CK cross-group validation: %s", json.dumps({k: metrics[k] for k in ("mean", "std")}))
    head = model.get_base_model().score

    def write(d: Path) -> None:
        import torch

        save_adapter_16bit(model, d)
        save_file({"weight": head.weight.detach().to(torch.bfloat16).contiguous().cpu()}, str(d / HEAD_FILE))
        heldout.save(d, held)
        write_split(
            d,
            AttackSplit(
                train_groups=final_groups,
                validation_groups=list(validation_groups),
                temperature_fit_groups=sorted(set(oof_groups.tolist())),
                cv_folds=[list(f) for f in fold_groups],
            ),
        )

    final = draft.model_copy(update={"metrics": metrics, "temperature": temperature, "conformal": conformal})
    return write_artifact(Path(out), final, write)


def attack_examples(
    data: Path, use_catalogue: bool = True, limit_train: int = 0, procedures: int = 0, rationales: bool = False
):
    """(labels, CTI-HAL items with a current label, extra training rows, dropped label counts)."""
    cat = catalogue()
    labels = cat.labels()
    examples, dropped = load_cti_hal(data, cat.remap)
    examples = [e for e in examples if e.technique in {t.id for t in labels}]
    if limit_train:
        examples = _limit_per_group(examples, limit_train)
    return labels, examples, extra_rows(labels, examples, use_catalogue, procedures, rationales), dropped


def extra_rows(
    labels: list[Technique], examples: list[AttackExample], use_catalogue: bool, procedures: int, rationales: bool
) -> list[AttackExample]:
    """Training rows beside the CTI-HAL items: each technique's catalogue description (`use_catalogue`), up
    to `procedures` catalogue procedure examples per technique, and the annotators' reasons (`rationales`).
    Every row is tagged with the groups it may leak, so no fold trains on one tied to a group it holds out."""
    rows = catalogue_rows(labels, use_catalogue, procedures, [e.group for e in examples])
    return rows + (rationale_rows(examples) if rationales else [])


def catalogue_rows(
    labels: list[Technique], use_catalogue: bool, procedures: int, groups: list[str]
) -> list[AttackExample]:
    """Training rows from the catalogue itself, the procedures tagged with the `groups` they may leak."""
    cat = catalogue()
    described = [AttackExample(cat.description(t.id), t.id, "catalogue", "catalogue", CATALOGUE_NAME) for t in labels]
    ids = {t.id for t in labels}
    return (described if use_catalogue else []) + procedure_examples(cat, ids, procedures, sorted(set(groups)))


def rationale_rows(examples: list[AttackExample]) -> list[AttackExample]:
    """The annotator's reason for each label as a row of its own ("Attackers steal saved login credentials
    from web browsers" for T1555): a paraphrase in ATT&CK's vocabulary of what the excerpt says. Tied to
    the item's group, so it trains only where that item does; never scored. One row per distinct
    (reason, technique); reasons under 20 characters or equal to their excerpt are skipped."""
    out, seen = [], set()
    for e in examples:
        key = (e.rationale.casefold(), e.technique)
        if len(e.rationale) < 20 or e.rationale.casefold() == e.text.casefold() or key in seen:
            continue
        seen.add(key)
        out.append(AttackExample(e.rationale, e.technique, RATIONALE_GROUP, e.report, e.source, (e.group,)))
    return out


def _limit_per_group(examples: list[AttackExample], n: int) -> list[AttackExample]:
    """The first `n` items of each group (smoke runs keep every group, so folds still exist)."""
    seen: dict[str, int] = {}
    out = []
    for e in examples:
        if seen.get(e.group, 0) < n:
            out.append(e)
            seen[e.group] = seen.get(e.group, 0) + 1
    return out
