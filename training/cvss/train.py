"""CVSS: LoRA fine-tune of the causal LM to write the 8 base-metric values after the prompt.

Answer format: the values in metric order, each as one token, " X" (the letter) or " word" (the first
word of the value's name, `--answers word`): 8 decode steps, against 31 for the full `AV:N/AC:L/...`
string. Loss is on the answer tokens only. The manifest's labels carry the format to the service.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import cvss.constants3 as cvss_constants

from training.artifact.base_model import resolve_base_model
from training.artifact.encoding import cvss_value_token_ids, encode_prompt
from training.artifact.loading import load_tokenizer, pick_device, pick_dtype
from training.artifact.manifest import (
    CvssLabels,
    CvssMetric,
    CvssSplit,
    Manifest,
    TrainingData,
    write_artifact,
    write_split,
)
from training.artifact.prompting import CVSS_TEMPLATE
from training.artifact_writer import data_hash, draft_manifest, new_version, save_adapter_16bit
from training.cvss.predict import predict_cvss
from training.cvss.prior_correction import fit_prior_correction
from training.data import CvssExample, load_cvss
from training.data.common import BASE_METRICS
from training.evaluation import heldout
from training.evaluation.calibrate import cross_fitted_cvss_ece, fit_cvss_temperature
from training.evaluation.conformal import cvss_conformal
from training.evaluation.heldout import cvss_heldout
from training.evaluation.metrics import cvss_metrics
from training.evaluation.split import calibration_halves, split_cvss
from training.fitting.layer_cache import frozen_layer_count, frozen_prefix_states
from training.fitting.trainer import CvssTrainer, EpochEnd, TrainConfig, is_main_process, train, with_lora
from training.fitting.weight_average import TailAverages

log = logging.getLogger(__name__)


ANSWER_FORMATS = ("letter", "word")


def cvss_labels(answers: str = "letter") -> CvssLabels:
    """The CVSS v3.1 base-metric vocabulary, from the `cvss` library's tables. `answers`: the model
    writes each value's letter ("N") or the first word of its name in lower case ("network",
    "adjacent": one token each for SmolLM2, where " Adjacent" is three; a tokenizer that splits one
    is refused by `cvss_value_token_ids`)."""
    if answers not in ANSWER_FORMATS:
        raise ValueError(f"answers must be one of {ANSWER_FORMATS}, not {answers!r}")
    metrics = []
    for k in BASE_METRICS:
        values = dict(cvss_constants.METRICS_VALUE_NAMES[k])
        words = {v: name.split()[0].lower() for v, name in values.items()} if answers == "word" else None
        metrics.append(CvssMetric(key=k, name=cvss_constants.METRICS_ABBREVIATIONS[k], values=values, answers=words))
    return CvssLabels(metrics=metrics)


def _rows(tokenizer, manifest: Manifest, examples: list[CvssExample]) -> list[dict]:
    """Token ids of prompt + answer, and each answer value's index within its metric's allowed list."""
    labels = manifest.labels
    assert isinstance(labels, CvssLabels)
    value_ids = cvss_value_token_ids(tokenizer, labels)
    rows = []
    for ex in examples:
        prompt_ids = encode_prompt(tokenizer, manifest, ex.description)[0]
        vals = ex.values
        index = [list(m.values).index(vals[m.key]) for m in labels.metrics]
        answer = [ids[i] for ids, i in zip(value_ids, index, strict=True)]
        rows.append({"input_ids": prompt_ids + answer, "labels": index})
    return rows


def _selection_score(metrics: dict) -> float:
    """Best epoch: highest mean per-metric accuracy; base-score MAE breaks near-ties."""
    return metrics["mean_metric_accuracy"] - 0.01 * metrics["base_score_mae"]


def _calibration(metrics: dict, probs: list, val_ex: list[CvssExample]) -> dict:
    """One temperature for the per-metric softmaxes, fitted on the validation CVEs; its effect is scored
    cross-fitted (each half scaled by a T fitted on the other half), never on the rows that fitted it."""
    truth = [e.values for e in val_ex]
    ece_raw = metrics.pop("ece_metric_probabilities")
    return {
        "temperature": fit_cvss_temperature(probs, truth),
        "ece_uncalibrated": ece_raw,
        "ece_calibrated_crossfit": cross_fitted_cvss_ece(probs, truth, calibration_halves([e.cve_id for e in val_ex])),
    }


def _values(manifest: Manifest) -> dict[str, list[str]]:
    return {m.key: list(m.values) for m in manifest.labels.metrics}


def _conformal(held, labels: CvssLabels, temperature: float, train_ex, val_ex):
    """Per-metric prediction-set thresholds on the validation CVEs, with TF-IDF + LR's sets beside them."""
    from training.evaluation.baseline import cvss_baseline_probs

    baseline = cvss_baseline_probs(train_ex, val_ex, {m.key: list(m.values) for m in labels.metrics})
    return cvss_conformal(held, labels, temperature, calibration_halves(held.ids), baseline)


def _score_and_fit(model, tokenizer, manifest: Manifest, train_ex, val_ex):
    """The validation CVEs decoded with `manifest`'s decoder (temperature 1): their metrics with the fitted
    temperature and the set report, the kept scores, and the set thresholds. Training's end and
    `calibrate_cvss` both finish an artifact with this."""
    metrics, probs = evaluate_cvss_model(model, tokenizer, manifest.model_copy(update={"temperature": 1.0}), val_ex)
    metrics.update(_calibration(metrics, probs, val_ex))
    held = cvss_heldout(probs, [e.values for e in val_ex], [e.cve_id for e in val_ex], _values(manifest))
    conformal, metrics["conformal"] = _conformal(held, manifest.labels, metrics["temperature"], train_ex, val_ex)
    return metrics, held, conformal


def calibrate_cvss(
    artifact: Path, data: list[Path], out: Path, name: str | None = None, prior_correction: float | None = None
) -> Manifest:
    """(Re-)fit an existing CVSS artifact's temperature and prediction sets on its validation CVEs and write
    it as `out`, the adapter unchanged (what `train_cvss` does at its end, for artifacts trained before it
    did). `prior_correction` (tau; None keeps the artifact's) sets the decoder's shift from the training
    prior first, fitted on the artifact's training CVEs; the validation figures are then the new decoder's."""
    import shutil

    from training.artifact.layout import ADAPTER_FILE, SPLIT_FILE
    from training.artifact.loading import base_for, load_causal_lm_with_adapter
    from training.artifact.manifest import load_manifest

    manifest = load_manifest(artifact)
    split = json.loads((Path(artifact) / SPLIT_FILE).read_text())  # typed or the earlier untyped layout
    if split.get("selection_ids"):
        raise ValueError(f"{artifact} trained on every CVE (`refit-cvss`): calibrate its validation run, then refit")
    split = CvssSplit(train_ids=split["train_ids"], validation_ids=split["validation_ids"])
    val_ids = set(split.validation_ids)
    examples = load_cvss(data)
    val_ex = sorted((e for e in examples if e.cve_id in val_ids), key=lambda e: e.cve_id)
    if len(val_ex) != len(val_ids):
        raise ValueError(f"--data holds {len(val_ex)} of the artifact's {len(val_ids)} validation CVEs")
    train_ids = set(split.train_ids)
    train_ex = [e for e in examples if e.cve_id in train_ids]
    if prior_correction is not None:
        if len(train_ex) != len(train_ids):
            raise ValueError(f"--data holds {len(train_ex)} of the artifact's {len(train_ids)} training CVEs")
        correction = fit_prior_correction(manifest.labels, [e.values for e in train_ex], prior_correction)
        manifest = manifest.model_copy(update={"prior_correction": correction if prior_correction else None})
    device = pick_device()
    base = base_for(manifest)
    model = load_causal_lm_with_adapter(Path(artifact), base, device, pick_dtype(device))
    metrics, held, conformal = _score_and_fit(model, load_tokenizer(base), manifest, train_ex, val_ex)
    kept = {k: v for k, v in manifest.metrics.items() if k != "ece_metric_probabilities"}
    final = manifest.model_copy(
        update={
            "name": name or manifest.name,
            **new_version(),  # the served probabilities (and, with a new correction, values) change
            "temperature": metrics["temperature"],
            "conformal": conformal,
            "metrics": {**kept, **metrics},  # the epochs' history stays that of training's own decoder
        }
    )

    def write(d: Path) -> None:
        for f in ("adapter_config.json", ADAPTER_FILE):
            shutil.copy2(Path(artifact) / f, d / f)
        write_split(d, split)
        heldout.save(d, held)

    return write_artifact(Path(out), final, write)


def evaluate_cvss_model(model, tokenizer, manifest: Manifest, examples: list[CvssExample]) -> tuple[dict, list]:
    probs = predict_cvss(model, tokenizer, manifest, [e.description for e in examples])
    predicted = [{k: max(p[k], key=p[k].get) for k in p} for p in probs]
    keys = [m.key for m in manifest.labels.metrics]
    return cvss_metrics(keys, predicted, [e.values for e in examples], probs), probs


def fresh_model(base_path: str, pad_token_id: int, cfg: TrainConfig):
    """The base causal LM with LoRA adapters drawn from `cfg.seed`. Torch seeds each new process at
    random, so without this the same command would start (and end) from another adapter every run."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, use_safetensors=True)
    model.config.pad_token_id = pad_token_id
    return with_lora(model, cfg, "CAUSAL_LM")


def cvss_data_hash(examples: list[CvssExample]) -> str:
    """The manifest's `training_data.sha256` of CVSS data: what `refit-cvss` checks its --data against."""
    return data_hash([(e.cve_id, e.description, e.vector) for e in examples])


def cached_rows(model, tokenizer, manifest: Manifest, examples: list[CvssExample], cfg: TrainConfig):
    """Training rows with the inputs of the lowest adapted layer cached (the frozen layers run once): the
    rows, the number of frozen layers and the seconds the caching took."""
    rows = _rows(tokenizer, manifest, examples)
    n_frozen = frozen_layer_count(model, cfg.lora_layers)
    t0 = time.time()
    for row, states in zip(rows, frozen_prefix_states(model, [r["input_ids"] for r in rows], n_frozen), strict=True):
        row["states"] = states
    seconds = time.time() - t0
    log.info("cached the inputs of layer %d for %d rows in %.1f s", n_frozen, len(rows), seconds)
    return rows, n_frozen, seconds


def train_adapter(model, tokenizer, manifest: Manifest, rows, n_frozen: int, cfg: TrainConfig, callbacks) -> dict:
    """The Trainer over `cached_rows` with the task's loss on the manifest's answer tokens."""
    with tempfile.TemporaryDirectory() as work:
        return train(
            model,
            rows,
            cfg,
            work,
            CvssTrainer,
            callbacks,
            n_frozen=n_frozen,
            allowed=cvss_value_token_ids(tokenizer, manifest.labels),
            loss=cfg.loss,
        )


def train_cvss(
    data: list[Path],
    out: Path,
    base_model: str,
    cfg: TrainConfig,
    n_validation: int = 120,
    max_input_tokens: int = 192,
    name: str | None = None,
    limit_train: int = 0,
    answers: str = "letter",
    split_seed: int | None = None,
) -> Manifest:
    """`split_seed` draws the validation CVEs (default `cfg.seed`, which also draws the adapter and the
    batch order), so other draws of one recipe can be scored on the same split. It decodes greedily;
    `calibrate_cvss` then sets a prior correction, if one is wanted."""
    started = time.time()
    split_seed = cfg.seed if split_seed is None else split_seed
    examples = load_cvss(data)
    train_ex, val_ex = split_cvss(examples, n_validation, split_seed)
    if limit_train:
        train_ex = train_ex[:limit_train]
    if not train_ex or not val_ex:
        raise ValueError(f"need training and validation CVEs; got {len(train_ex)} and {len(val_ex)}")
    log.info("CVSS: %d training CVEs, %d validation CVEs (split by CVE)", len(train_ex), len(val_ex))

    base_path = resolve_base_model(base_model)
    tokenizer = load_tokenizer(base_path)
    draft = draft_manifest(
        task="cvss",
        out=out,
        name=name,
        base_model=base_model,
        prompt_template=CVSS_TEMPLATE,
        max_input_tokens=max_input_tokens,
        labels=cvss_labels(answers),
        cfg=cfg,
        training_data=TrainingData(
            sources=[Path(p).name for p in data],
            sha256=cvss_data_hash(examples),
            n_train=len(train_ex),
            n_validation=len(val_ex),
            split=f"by CVE: {len(val_ex)} CVEs held out by seeded hash (seed {split_seed})",
        ),
        answer_format=f"space-separated value {answers}s",
    )
    device = pick_device()
    model = fresh_model(base_path, tokenizer.pad_token_id, cfg)
    model.print_trainable_parameters()
    rows, n_frozen, cache_seconds = cached_rows(model, tokenizer, draft, train_ex, cfg)

    def validate(m, epoch: int, average_from: int) -> dict:  # the candidate's key is EpochEnd's to record
        metrics, _ = evaluate_cvss_model(m, tokenizer, draft, val_ex)
        return {**metrics, "score": _selection_score(metrics)}

    epoch_end = EpochEnd(validate if is_main_process() else None, keep_best=cfg.select_best_epoch)
    averages = [TailAverages(cfg.average_from, epoch_end.consider)] if cfg.average_from else []
    stats = train_adapter(model, tokenizer, draft, rows, n_frozen, cfg, [epoch_end, *averages])

    if not is_main_process():
        return draft
    best_epoch = epoch_end.restore_best(model)
    model.eval().to(device, dtype=pick_dtype(device))
    metrics, held, conformal = _score_and_fit(model, tokenizer, draft, train_ex, val_ex)
    draft = draft.model_copy(update={"temperature": metrics["temperature"], "conformal": conformal})
    metrics["train_seconds"] = round(time.time() - started, 1)
    metrics["cache_seconds"] = round(cache_seconds, 1)
    metrics["best_epoch"] = best_epoch
    if cfg.average_from:
        metrics["average_from"] = epoch_end.best_average_from
    metrics["epochs"] = [{k: v for k, v in h.items() if k != "n"} for h in epoch_end.history]
    metrics.update({f"train_{k}": v for k, v in stats.items()})
    log.info("CVSS validation: %s", json.dumps(metrics))

    def write(d: Path) -> None:
        save_adapter_16bit(model, d)
        heldout.save(d, held)
        write_split(
            d,
            CvssSplit(train_ids=sorted(e.cve_id for e in train_ex), validation_ids=sorted(e.cve_id for e in val_ex)),
        )

    return write_artifact(Path(out), draft.model_copy(update={"metrics": metrics}), write)
