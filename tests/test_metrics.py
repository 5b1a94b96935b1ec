"""math.metrics against a case counted by hand: the confusion matrix (rows the true class),
accuracy, support, precision, recall, F1, and the report softmax-eval prints of them."""

from __future__ import annotations

import warnings

import numpy as np

from softmax_cls.math.metrics import classification_report, format_report

# 8 rows of classes a, b, c (d has none and is never predicted):
#   true       a a a b b c c c
#   predicted  a b a b a c c b
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2])
PREDICTED = np.array([0, 1, 0, 1, 0, 2, 2, 1])
NAMES = ("a", "b", "c", "d")


def test_a_report_counted_by_hand():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # d: no division by zero, no NaN
        report = classification_report(LABELS, PREDICTED, NAMES)
        precision, recall, f1 = report.precision, report.recall, report.f1
    assert report.confusion.tolist() == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 1, 2, 0],
                                         [0, 0, 0, 0]]
    assert report.accuracy == 5 / 8
    assert report.support.tolist() == [3, 2, 3, 0]  # rows of each true class
    # precision: right of those predicted as the class (a 2 of 3, b 1 of 3, c 2 of 2)
    np.testing.assert_allclose(precision, [2 / 3, 1 / 3, 1, 0])
    # recall: right of those truly of the class (a 2 of 3, b 1 of 2, c 2 of 3)
    np.testing.assert_allclose(recall, [2 / 3, 1 / 2, 2 / 3, 0])
    # F1: their harmonic mean, 2 / (1/p + 1/r)
    np.testing.assert_allclose(f1, [2 / 3, 2 / (3 + 2), 2 / (1 + 3 / 2), 0])
    summary = report.to_dict()
    assert summary["n"] == 8 and summary["confusion"] == report.confusion.tolist()
    assert summary["per_class"][1] == {"class": "b", "precision": 1 / 3, "recall": 1 / 2,
                                       "f1": 0.4, "support": 2}


def test_the_printed_report_is_the_counts_by_hand():
    lines = format_report(classification_report(LABELS, PREDICTED, NAMES)).splitlines()
    assert lines[0] == "accuracy: 0.6250 (5 of 8)"
    assert lines[3].split() == ["a", "0.6667", "0.6667", "0.6667", "3"]
    assert lines[4].split() == ["b", "0.3333", "0.5000", "0.4000", "2"]
    assert lines[-4:] == ["a      2     1     0     0",
                          "b      1     1     0     0",
                          "c      0     1     2     0",
                          "d      0     0     0     0"]
