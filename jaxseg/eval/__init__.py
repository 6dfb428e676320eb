"""Evaluation of predictions against reference segmentations (``jaxseg evaluate``).

``run`` is the entry (:func:`jaxseg.eval.run.evaluate_folders`); ``pairs`` finds and reads
prediction/reference pairs (volumes and 2D slices); ``volumes`` and ``slices`` score arrays;
``surface`` holds HD95 and the BraTS lesion-wise scores; ``tables`` writes the CSVs; ``figures``
draws the gallery and per-case panels from arrays.
"""
