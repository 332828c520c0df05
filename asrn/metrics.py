"""Multi-label metrics of the paper's Tables 2-3: F1 micro/macro, Acc, Subacc, and per-class scores.

Plain numpy so that training workers need no scikit-learn; the tests check every number against
scikit-learn on the same inputs. Conventions (scikit-learn's, with explicit `zero_division`):
- F1 micro/macro and per-class precision/recall/F1: an undefined ratio (0/0) counts as 0
  (`zero_division=0`), so a class that is never true and never predicted lowers F1 macro.
- Acc (example-based accuracy, mean of |Y∩Ŷ|/|Y∪Ŷ|): a sample whose truth and prediction are both
  empty scores 1, an exact match, as Subacc counts it (`jaccard_score(average="samples", zero_division=1)`).
- Subacc: the fraction of samples whose whole label set is predicted exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ACC_EMPTY_SAMPLE = 1.0  # Acc of a sample with Y = Ŷ = ∅ (sklearn jaccard_score zero_division)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den == 0 (scikit-learn's zero_division=0)."""
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _check_inputs(targets: np.ndarray, scores: np.ndarray, class_names: Sequence[str]) -> tuple[np.ndarray, ...]:
    targets = np.asarray(targets)
    scores = np.asarray(scores, np.float64)
    if targets.ndim != 2:
        raise ValueError(f"targets must be 2-D (N, C), got shape {targets.shape}")
    if scores.shape != targets.shape:
        raise ValueError(f"scores shape {scores.shape} differs from targets shape {targets.shape}")
    if targets.shape[1] != len(class_names):
        raise ValueError(f"{len(class_names)} class names for {targets.shape[1]} target columns")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class names repeat: {list(class_names)}")
    if targets.shape[0] == 0:
        raise ValueError("no samples: targets has 0 rows")
    if not np.isin(targets, (0, 1)).all():
        bad = np.unique(targets[~np.isin(targets, (0, 1))])[:5]
        raise ValueError(f"targets must be 0/1 multi-hot, found values {bad.tolist()}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return targets.astype(bool), scores


def compute_metrics(targets: np.ndarray, scores: np.ndarray, class_names: Sequence[str],
                    threshold: float = 0.5) -> dict:
    """Metrics of (N, C) 0/1 targets against (N, C) scores, predicting a class where score >= threshold.

    Returns plain Python numbers (JSON-serialisable): f1_micro, f1_macro, acc, subacc, num_samples and
    per_class {name: {precision, recall, f1, accuracy, support}}; see the module docstring for 0/0 cases.
    """
    y, scores = _check_inputs(targets, scores, class_names)
    p = scores >= threshold
    n = y.shape[0]

    tp = (y & p).sum(axis=0)  # (C,)
    fp = (~y & p).sum(axis=0)
    fn = (y & ~p).sum(axis=0)
    tn = (~y & ~p).sum(axis=0)

    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)  # equals 2PR/(P+R), and 0 where both are 0
    f1_micro = _ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())

    inter = (y & p).sum(axis=1)  # (N,)
    union = (y | p).sum(axis=1)
    jaccard = np.where(union > 0, _ratio(inter, union), ACC_EMPTY_SAMPLE)
    exact = (y == p).all(axis=1)

    per_class = {
        str(name): {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "accuracy": float((tp[i] + tn[i]) / n),
            "support": int(tp[i] + fn[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "f1_micro": float(f1_micro),
        "f1_macro": float(f1.mean()),
        "acc": float(jaccard.mean()),
        "subacc": float(exact.mean()),
        "num_samples": int(n),
        "per_class": per_class,
    }


TABLE_COLUMNS: tuple[tuple[str, str], ...] = (("F1 mi", "f1_micro"), ("F1 ma", "f1_macro"), ("Acc", "acc"),
                                              ("Subacc", "subacc"))


def format_table(title: str, rows: dict[str, dict], spread: dict[str, dict] | None = None) -> str:
    """A text table in the layout of the paper's Tables 2-3: one row a method, columns F1 mi, F1 ma, Acc, Subacc.

    `spread` (same keys) adds ± figures, e.g. the standard deviation over seeds.
    """
    width = max([len("Methods"), *map(len, rows)])
    cell = 15 if spread else 8
    lines = [title, f"{'Methods':<{width}}" + "".join(f"{name:>{cell}}" for name, _ in TABLE_COLUMNS)]
    for method, metrics in rows.items():
        cells = []
        for _, key in TABLE_COLUMNS:
            text = f"{metrics[key]:.4f}"
            if spread:
                text += f" ±{spread[method][key]:.3f}"
            cells.append(f"{text:>{cell}}")
        lines.append(f"{method:<{width}}" + "".join(cells))
    return "\n".join(lines)


def group_metrics(targets: np.ndarray, scores: np.ndarray, class_names: Sequence[str], group: str,
                  threshold: float = 0.5) -> dict:
    """Metrics over the classes of one group (`sub` or `obj`) of a wider (e.g. task `all`) prediction."""
    columns = [i for i, name in enumerate(class_names) if name.startswith(f"{group}:")]
    if not columns:
        raise ValueError(f"no {group}:* classes among {list(class_names)}")
    return compute_metrics(np.asarray(targets)[:, columns], np.asarray(scores)[:, columns],
                           [class_names[i] for i in columns], threshold)
