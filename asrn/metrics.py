"""Multi-label metrics of the paper's Tables 2-3: F1 micro/macro, Acc, Subacc, and per-class scores,
plus threshold-free average precision (AP, mAP) and per-class thresholds tuned on validation data.

Plain numpy so that training workers need no scikit-learn; the tests check every number against
scikit-learn on the same inputs. Conventions (scikit-learn's, with explicit `zero_division`):
- F1 micro/macro and per-class precision/recall/F1: an undefined ratio (0/0) counts as 0
  (`zero_division=0`), so a class that is never true and never predicted lowers F1 macro.
- Acc (example-based accuracy, mean of |Y∩Ŷ|/|Y∪Ŷ|): a sample whose truth and prediction are both
  empty scores 1, an exact match, as Subacc counts it (`jaccard_score(average="samples", zero_division=1)`).
- Subacc: the fraction of samples whose whole label set is predicted exactly.
- AP of a class: scikit-learn's `average_precision_score`, Σ_n (R_n − R_{n−1}) P_n over the distinct
  score thresholds (tied scores enter together); undefined (NaN, or None in `compute_metrics`) for a
  class with no positive. mAP: the mean AP over the classes that have positives.
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
    y, scores = _check_arrays(targets, scores)
    if y.shape[1] != len(class_names):
        raise ValueError(f"{len(class_names)} class names for {y.shape[1]} target columns")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class names repeat: {list(class_names)}")
    return y, scores


def _check_arrays(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) bool targets and float64 scores, or a ValueError that says what is wrong."""
    targets = np.asarray(targets)
    scores = np.asarray(scores, np.float64)
    if targets.ndim != 2:
        raise ValueError(f"targets must be 2-D (N, C), got shape {targets.shape}")
    if scores.shape != targets.shape:
        raise ValueError(f"scores shape {scores.shape} differs from targets shape {targets.shape}")
    if targets.shape[0] == 0:
        raise ValueError("no samples: targets has 0 rows")
    if not np.isin(targets, (0, 1)).all():
        bad = np.unique(targets[~np.isin(targets, (0, 1))])[:5]
        raise ValueError(f"targets must be 0/1 multi-hot, found values {bad.tolist()}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return targets.astype(bool), scores


def average_precision(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(C,) AP of each class of (N, C) 0/1 targets ranked by (N, C) scores; NaN for a class with no positive.

    Equals scikit-learn's `average_precision_score(targets, scores, average=None)` wherever that is
    defined: AP = Σ_n (R_n − R_{n−1}) P_n with one step per distinct score (a tie enters as one block).
    """
    y, scores = _check_arrays(targets, scores)
    ap = np.full(y.shape[1], np.nan)
    for c in range(y.shape[1]):
        positives = int(y[:, c].sum())
        if positives == 0:
            continue
        order = np.argsort(-scores[:, c], kind="stable")  # descending scores
        s, hits = scores[order, c], y[order, c]
        last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each block of tied scores
        tp = np.cumsum(hits)[last]  # (K,) true positives at each distinct threshold
        precision = tp / (last + 1)
        recall = tp / positives
        ap[c] = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    return ap


def _check_thresholds(thresholds: float | np.ndarray, num_classes: int) -> np.ndarray:
    """A scalar or (C,) threshold array as float64, or a ValueError naming the problem."""
    t = np.asarray(thresholds, np.float64)
    if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape != (num_classes,)):
        raise ValueError(f"thresholds must be a number or a ({num_classes},) array, got shape {t.shape}")
    if not np.isfinite(t).all():
        bad = np.atleast_1d(t)[~np.isfinite(np.atleast_1d(t))]
        raise ValueError(f"thresholds must be finite, got {bad[:5].tolist()}")
    return t


def _per_class(class_names: Sequence[str], precision: np.ndarray, recall: np.ndarray, f1: np.ndarray,
               accuracy: np.ndarray, support: np.ndarray, thresholds: np.ndarray, ap: np.ndarray) -> dict:
    """{name: {precision, recall, f1, accuracy, support, threshold, ap}} from (C,) arrays; ap None where NaN."""
    return {
        str(name): {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                    "accuracy": float(accuracy[i]), "support": int(support[i]), "threshold": float(thresholds[i]),
                    "ap": None if np.isnan(ap[i]) else float(ap[i])}
        for i, name in enumerate(class_names)
    }


def compute_metrics(targets: np.ndarray, scores: np.ndarray, class_names: Sequence[str],
                    thresholds: float | np.ndarray = 0.5) -> dict:
    """Metrics of (N, C) 0/1 targets against (N, C) scores, predicting class c where score >= thresholds[c].

    `thresholds` is one number for all classes (the paper's tables: 0.5) or a (C,) array, e.g. from
    `choose_thresholds` on validation data. Returns plain Python numbers, strict-JSON (no NaN):
    f1_micro, f1_macro, acc, subacc, num_samples; map (mean AP over the `map_classes` classes with a
    positive; 0.0 when map_classes == 0); per_class {name: {precision, recall, f1, accuracy, support,
    threshold, ap}} with ap None for a class with no positive. See the module docstring for 0/0 cases.
    """
    y, scores = _check_inputs(targets, scores, class_names)
    t = np.broadcast_to(_check_thresholds(thresholds, y.shape[1]), (y.shape[1],))  # (C,)
    p = scores >= t  # (N, C)
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

    ap = average_precision(y, scores)  # (C,), NaN where a class has no positive
    defined = ~np.isnan(ap)
    per_class = _per_class(class_names, precision, recall, f1, (tp + tn) / n, tp + fn, t, ap)
    return {
        "f1_micro": float(f1_micro),
        "f1_macro": float(f1.mean()),
        "acc": float(jaccard.mean()),
        "subacc": float(exact.mean()),
        "map": float(ap[defined].mean()) if defined.any() else 0.0,
        "map_classes": int(defined.sum()),
        "num_samples": int(n),
        "per_class": per_class,
    }


def _best_f1_threshold(hits: np.ndarray, scores: np.ndarray, candidates: np.ndarray) -> float:
    """The candidate threshold of highest F1 for one class; ties go to the one nearest 0.5, then the higher."""
    positives = int(hits.sum())
    ascending = np.sort(scores)
    positive_scores = np.sort(scores[hits])
    predicted = len(scores) - np.searchsorted(ascending, candidates, side="left")  # (K,) #{score >= t}
    tp = positives - np.searchsorted(positive_scores, candidates, side="left")  # (K,)
    f1 = 2 * tp / (predicted + positives)  # 2tp / (2tp + fp + fn); positives > 0
    tied = candidates[f1 == f1.max()]  # equal counts ratios are equal doubles, so ties are exact
    return float(tied[np.lexsort((-tied, np.abs(tied - 0.5)))[0]])


def choose_thresholds(targets: np.ndarray, scores: np.ndarray, grid: Sequence[float] | np.ndarray | None = None,
                      ) -> np.ndarray:
    """(C,) per-class thresholds, each maximising that class's F1 (predict where score >= threshold) on these data.

    Candidates (grid=None) are the lowest score (predict every sample) and the midpoints between
    consecutive distinct scores, which between them reach every achievable prediction, so the result
    is the exact maximiser, placed midway between the scores it separates. `grid` (1-D, finite)
    replaces them with fixed candidates. Ties go to the candidate nearest 0.5, then to the higher one,
    so the result is deterministic. A class with no positive gets 0.5.
    """
    y, scores = _check_arrays(targets, scores)
    if grid is not None:
        grid = np.asarray(grid, np.float64)
        if grid.ndim != 1 or grid.size == 0 or not np.isfinite(grid).all():
            raise ValueError(f"grid must be a non-empty 1-D array of finite numbers, got {grid!r}")
        grid = np.unique(grid)
    elif not np.isfinite(scores).all():
        raise ValueError("scores must be finite to place thresholds between them")
    thresholds = np.full(y.shape[1], 0.5)
    for c in range(y.shape[1]):
        if not y[:, c].any():
            continue
        if grid is None:
            distinct = np.unique(scores[:, c])  # ascending
            low, high = distinct[:-1], distinct[1:]
            mid = low + (high - low) / 2
            mid = np.where(mid > low, mid, high)  # adjacent doubles: the midpoint rounds onto `low`
            candidates = np.r_[distinct[0], mid]
        else:
            candidates = grid
        thresholds[c] = _best_f1_threshold(y[:, c], scores[:, c], candidates)
    return thresholds


TABLE_COLUMNS: tuple[tuple[str, str], ...] = (("F1 mi", "f1_micro"), ("F1 ma", "f1_macro"), ("Acc", "acc"),
                                              ("Subacc", "subacc"))
# TABLE_COLUMNS plus mAP and F1 macro at per-class thresholds chosen on val: a row's "f1_macro_val_thr"
# is the caller's, e.g. compute_metrics(test..., choose_thresholds(val...))["f1_macro"].
RANKING_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (*TABLE_COLUMNS, ("mAP", "map"),
                                                      ("F1 ma@val-thr", "f1_macro_val_thr"))


def format_table(title: str, rows: dict[str, dict], spread: dict[str, dict] | None = None,
                 columns: Sequence[tuple[str, str]] = TABLE_COLUMNS) -> str:
    """A text table in the layout of the paper's Tables 2-3: one row a method, columns F1 mi, F1 ma, Acc, Subacc.

    `spread` (same keys) adds ± figures, e.g. the standard deviation over seeds. `columns` are
    (header, metrics key) pairs, e.g. RANKING_TABLE_COLUMNS; a value of None prints as "-".
    """
    width = max([len("Methods"), *map(len, rows)])
    cells = [max(15 if spread else 8, len(header) + 2) for header, _ in columns]
    header = "".join(f"{name:>{w}}" for (name, _), w in zip(columns, cells, strict=True))
    lines = [title, f"{'Methods':<{width}}" + header]
    for method, metrics in rows.items():
        line = f"{method:<{width}}"
        for (_, key), w in zip(columns, cells, strict=True):
            if key not in metrics:
                raise KeyError(f"table row {method!r} has no {key!r}; it has {sorted(metrics)}")
            text = "-" if metrics[key] is None else f"{metrics[key]:.4f}"
            if spread and spread[method].get(key) is not None:
                text += f" ±{spread[method][key]:.3f}"
            line += f"{text:>{w}}"
        lines.append(line)
    return "\n".join(lines)


def group_metrics(targets: np.ndarray, scores: np.ndarray, class_names: Sequence[str], group: str,
                  thresholds: float | np.ndarray = 0.5) -> dict:
    """Metrics over the classes of one group (`sub` or `obj`) of a wider (e.g. task `all`) prediction.

    `thresholds` is one number or one per class of the wider prediction, (len(class_names),).
    """
    columns = [i for i, name in enumerate(class_names) if name.startswith(f"{group}:")]
    if not columns:
        raise ValueError(f"no {group}:* classes among {list(class_names)}")
    t = _check_thresholds(thresholds, len(class_names))
    return compute_metrics(np.asarray(targets)[:, columns], np.asarray(scores)[:, columns],
                           [class_names[i] for i in columns], t if t.ndim == 0 else t[columns])
