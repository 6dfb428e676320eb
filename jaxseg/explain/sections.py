"""The summary sections of `jaxseg explain` (issue #17): each is a JSON entry and a report card.

Every class here satisfies :class:`jaxseg.explain.maps.SummarySection` (``template``,
``report_context()``, ``summary()``): an :class:`~jaxseg.explain.maps.ExplainMaps` field holding
one is written to the JSON summary and shown as ``jaxseg/report/templates/sections/<template>.html.j2``
without further code. They hold plain floats, lists and dicts (already JSON), computed by the
library functions named in each docstring; the report context only formats them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from jaxseg.explain import captions


@dataclasses.dataclass(frozen=True)
class ModalitySection:
    """Which MRI sequence drove each region.

    Attributes:
      attribution: ``{region: {modality: share} | None}``
        (:func:`jaxseg.explain.modality.modality_attribution`, shares summing to 1; None = region
        predicted nowhere).
      ablation: :func:`jaxseg.explain.modality.modality_ablation` (score and Dice drop when a
        sequence is replaced by its brain mean).
      steps: integrated-gradient steps; slices: how many slices (2D) or windows (3D) were attributed.
    """
    attribution: Mapping[str, Mapping[str, float] | None]
    ablation: Mapping[str, Any]
    steps: int
    samples: int
    template: str = "modality"

    def captions(self) -> list[str]:
        """One line per region, ``'enhancing tumor: mainly T1ce (64%)'``."""
        return [captions.modality_caption(region, shares) for region, shares in self.attribution.items()]

    def summary(self) -> dict[str, Any]:
        return {"modality_attribution": dict(self.attribution), "modality_ablation": dict(self.ablation),
                "modality_captions": self.captions()}

    def report_context(self) -> dict[str, Any]:
        rows = []
        for (region, shares), caption in zip(self.attribution.items(), self.captions()):
            ablation = self.ablation.get(region) or {}
            bars = [{"modality": captions.MODALITY_NAMES.get(m, m), "share": share, "percent": f"{share:.0%}",
                     "width": f"{100 * share:.1f}%",
                     "dice_drop": (f"{ablation[m]['dice_drop']:.2f}" if m in ablation else "–")}
                    for m, share in (shares or {}).items()]
            rows.append({"region": region, "long": captions.REGION_NAMES.get(region, region), "caption": caption,
                         "bars": bars})
        return {"regions": rows, "steps": self.steps, "samples": self.samples}
