"""Plain-loop references the library is checked against: ranking with the tie rule, Recall@N."""

from __future__ import annotations

import numpy as np


def naive_ranking(db: np.ndarray, query: np.ndarray) -> list[int]:
    """Database indices by squared L2 distance to `query` (float64), ties to the lower index."""
    distances = [(float(((np.asarray(d, np.float64) - np.asarray(query, np.float64)) ** 2).sum()), i)
                 for i, d in enumerate(db)]
    return [i for _, i in sorted(distances)]


def naive_recall(db, queries, positives, ns) -> tuple[dict[int, float], int]:
    """Recall@N (percent) over the queries with at least one positive, and how many those are."""
    correct = {n: 0 for n in ns}
    evaluated = 0
    for query, pos in zip(queries, positives):
        if len(pos) == 0:
            continue
        evaluated += 1
        ranking = naive_ranking(db, query)
        wanted = {int(p) for p in pos}
        for n in ns:
            if set(ranking[:n]) & wanted:
                correct[n] += 1
    return {n: 100.0 * correct[n] / evaluated for n in ns}, evaluated
