"""TF-IDF + logistic-regression baselines on the same split, so every report shows whether the LM earns its cost."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from training.data import AttackExample, CvssExample
from training.metrics import attack_metrics, cvss_metrics


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


def attack_baseline(train: Sequence[AttackExample], test: Sequence[AttackExample], label_ids: Sequence[str]) -> dict:
    index = {tid: i for i, tid in enumerate(label_ids)}
    logits = attack_baseline_logits(train, [e.text for e in test], label_ids)
    return attack_metrics(logits, np.array([index[e.technique] for e in test]), 1.0)
