"""One restored, compiled `Predictor` per checkpoint, kept between jobs.

Building a :class:`jaxseg.infer.predict.Predictor` restores the checkpoint with orbax and jits
the model's forward pass; the explanations' own jitted functions are cached by JAX on the model's
graph. Keeping the predictor means the second job of a model neither restores nor compiles
again. At most ``size`` predictors are kept (least recently used dropped first): each holds its
parameters and compiled programs in memory.
"""
from __future__ import annotations

import collections
import threading
from pathlib import Path


class PredictorCache:
    def __init__(self, size: int = 2):
        self.size = max(1, size)
        self._cache: collections.OrderedDict[Path, object] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.builds = 0  # how many predictors were built (restored and compiled)

    def get(self, run: Path, batch_size: int = 16):
        """The predictor of run folder ``run``, built on first use."""
        from jaxseg.infer.predict import Predictor

        key = (Path(run).resolve(), batch_size)  # a predictor's batch size is fixed when it compiles
        with self._lock:  # one worker uses it; the lock keeps two builds of one model from racing
            predictor = self._cache.pop(key, None)
            if predictor is None:
                predictor = Predictor(run, batch_size)
                self.builds += 1
            self._cache[key] = predictor
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
            return predictor
