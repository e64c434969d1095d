"""TF-IDF + logistic-regression baselines on the same split, so every report shows whether the LM earns its cost."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from training.data import AttackExample, CvssExample
from training.evaluation.metrics import attack_metrics, cvss_metrics, shared_excerpt_metrics


def _pipeline():
    return make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, max_features=50000),
        LogisticRegression(max_iter=2000, C=10.0),
    )


def cvss_baseline(train: Sequence[CvssExample], test: Sequence[CvssExample], metric_keys: Sequence[str]) -> dict:
    """One classifier per metric; a metric with a single training value predicts it always."""
    x_train, x_test = [e.description for e in train], [e.description for e in test]
    predicted = [{} for _ in test]
    for k in metric_keys:
        y = [e.values[k] for e in train]
        if len(set(y)) == 1:
            for p in predicted:
                p[k] = y[0]
            continue
        clf = _pipeline().fit(x_train, y)
        for p, v in zip(predicted, clf.predict(x_test), strict=True):
            p[k] = str(v)
    return cvss_metrics(metric_keys, predicted, [e.values for e in test])


def cvss_baseline_probs(
    train: Sequence[CvssExample], test: Sequence[CvssExample], values: dict[str, list[str]]
) -> dict[str, np.ndarray]:
    """Per metric, [test rows, allowed values] probabilities (values never seen in training get 0)."""
    x_train, x_test = [e.description for e in train], [e.description for e in test]
    out = {}
    for k, vals in values.items():
        y = [e.values[k] for e in train]
        probs = np.zeros((len(test), len(vals)))
        if len(set(y)) == 1:
            probs[:, vals.index(y[0])] = 1.0
        else:
            clf = _pipeline().fit(x_train, y)
            proba = clf.predict_proba(x_test)
            for j, cls in enumerate(clf.classes_):
                probs[:, vals.index(str(cls))] = proba[:, j]
        out[k] = probs
    return out


def cvss_majority(train: Sequence[CvssExample], test: Sequence[CvssExample], metric_keys: Sequence[str]) -> dict:
    from collections import Counter

    majority = {k: Counter(e.values[k] for e in train).most_common(1)[0][0] for k in metric_keys}
    return cvss_metrics(metric_keys, [majority] * len(test), [e.values for e in test])


def attack_baseline_logits(
    train: Sequence[AttackExample], test_texts: Sequence[str], label_ids: Sequence[str]
) -> np.ndarray:
    """Log-probabilities of one multinomial classifier over techniques, one column per label;
    labels never seen in training get ~zero probability."""
    clf = _pipeline().fit([e.text for e in train], [e.technique for e in train])
    index = {tid: i for i, tid in enumerate(label_ids)}
    logits = np.full((len(test_texts), len(label_ids)), np.log(1e-9))
    proba = clf.predict_proba(list(test_texts))
    for j, cls in enumerate(clf.classes_):
        logits[:, index[cls]] = np.log(np.maximum(proba[:, j], 1e-9))
    return logits


def attack_baseline_oof(
    examples: Sequence[AttackExample],
    extra: Sequence[AttackExample],
    folds: Sequence[Sequence[str]],
    label_ids: Sequence[str],
) -> np.ndarray:
    """Out-of-fold log-probabilities of the rows of `examples` whose group some fold holds out, in
    their order: each fold's rows from a classifier trained on the other groups (+ `extra`)."""
    held_groups = [g for f in folds for g in f]
    held = [e for e in examples if e.group in held_groups]
    out = np.zeros((len(held), len(label_ids)))
    for fold in folds:
        sel = np.array([e.group in fold for e in held])
        train = [e for e in list(examples) + list(extra) if e.trains_without(fold)]
        out[sel] = attack_baseline_logits(train, [e.text for e, s in zip(held, sel, strict=True) if s], label_ids)
    return out


def attack_baseline(
    train: Sequence[AttackExample],
    test: Sequence[AttackExample],
    label_ids: Sequence[str],
    excerpts: Sequence[str] | None = None,
) -> dict:
    index = {tid: i for i, tid in enumerate(label_ids)}
    logits = attack_baseline_logits(train, [e.text for e in test], label_ids)
    targets = np.array([index[e.technique] for e in test])
    out = attack_metrics(logits, targets, 1.0)
    return out | (shared_excerpt_metrics(logits, targets, excerpts) if excerpts is not None else {})
