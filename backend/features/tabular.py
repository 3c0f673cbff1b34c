"""Tabular features: the numeric fields seen in training, median-imputed and standardized.

Fields are the sorted union of the training rows' keys; a value missing in a row is imputed with
the training median (0 for a field never seen with a value); every column is standardized with
the training mean and standard deviation (a constant column is only centred). Fields never seen
in training are ignored at prediction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


class TabularFeaturizer:
    """fit(rows) / transform(rows) -> dense (n, fields) float64, for rows of {field: number}."""

    def __init__(self) -> None:
        self.columns: list[str] = []
        self._median: np.ndarray | None = None
        self._mean: np.ndarray | None = None
        self._scale: np.ndarray | None = None

    def _matrix(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        index = {c: j for j, c in enumerate(self.columns)}
        out = np.full((len(rows), len(self.columns)), np.nan)
        for i, row in enumerate(rows):
            for k, v in row.items():
                j = index.get(k)
                if j is not None:
                    out[i, j] = v
        return out

    def fit_transform(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Learn the fields, medians and scales from `rows` and return their features."""
        self.columns = sorted({k for row in rows for k in row})
        if not self.columns:
            raise ValueError("tabular inputs have no numeric field")
        raw = self._matrix(rows)
        med = np.nanmedian(np.where(np.isnan(raw).all(axis=0), 0.0, raw), axis=0)
        self._median = np.where(np.isnan(med), 0.0, med)
        filled = np.where(np.isnan(raw), self._median, raw)
        self._mean = filled.mean(axis=0)
        scale = filled.std(axis=0)
        self._scale = np.where(scale > 0, scale, 1.0)
        return (filled - self._mean) / self._scale

    def transform(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Features of `rows` with the fitted fields, medians and scales."""
        if self._median is None or self._mean is None or self._scale is None:
            raise RuntimeError("TabularFeaturizer is not fitted")
        raw = self._matrix(rows)
        return (np.where(np.isnan(raw), self._median, raw) - self._mean) / self._scale
