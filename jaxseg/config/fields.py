"""The field types of the config sections: strict scalars, lists, and checks that sit on the field.

Each section (:mod:`jaxseg.config.sections`, :mod:`jaxseg.config.model_sections`) is a frozen
pydantic dataclass whose fields carry their own check, e.g.
``dropout: Annotated[float, interval("[0, 1)")] = 0.0``. pydantic validates; the loader
(:mod:`jaxseg.config.load`) turns the first failure into one located line,
``<file>: model.dropout: must be in [0, 1); got 1.5``.

Scalars are strict, as TOML is typed: ``epochs = "3"`` or ``epochs = 3.0`` is an error, never a
silent conversion; an integer is accepted where a number is (``learning_rate = 1`` is 1.0). A list
setting also takes one bare value (``modalities = "flair"`` is ``("flair",)``).
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Callable

import pydantic
from pydantic import AfterValidator, BeforeValidator, Field, StrictBool, StrictFloat, StrictInt, StrictStr

__all__ = ["Bool", "Float", "FloatList", "Int", "IntList", "NonNegativeFloat", "NonNegativeInt",
           "PositiveInt", "SettingError", "Str", "StrList", "check", "interval", "section"]

Bool = StrictBool
Int = StrictInt
Float = StrictFloat
Str = StrictStr
PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
NonNegativeFloat = Annotated[StrictFloat, Field(ge=0)]


def _as_tuple(value: Any) -> Any:
    # TOML gives lists; one bare value stands for a list of one (`modalities = "flair"`).
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return (value,)
    return value


IntList = Annotated[tuple[StrictInt, ...], BeforeValidator(_as_tuple)]
FloatList = Annotated[tuple[StrictFloat, ...], BeforeValidator(_as_tuple)]
StrList = Annotated[tuple[StrictStr, ...], BeforeValidator(_as_tuple)]

# Every section: frozen (hashable, comparable), no settings beyond its fields.
section = pydantic.dataclasses.dataclass(frozen=True, config=pydantic.ConfigDict(extra="forbid"))


class SettingError(ValueError):
    """A failed check that spans fields, naming the setting at fault.

    ``setting`` is dotted and relative to the section whose validator raises it (``"transformer_heads"``
    in the model section, ``"data.image_size"`` from the top-level config); ``problem`` reads after
    the setting's name (``"must divide transformer_dim (256); got 3"``).
    """

    def __init__(self, setting: str, problem: str):
        super().__init__(problem)
        self.setting = setting
        self.problem = problem


def check(predicate: Callable[[Any], bool], problem: str) -> AfterValidator:
    """A field check: ``predicate(value)`` must hold, else ``"<problem>; got <value>"``."""
    def validate(value: Any) -> Any:
        if not predicate(value):
            raise ValueError(f"{problem}; got {_shown(value)}")
        return value
    return AfterValidator(validate)


def interval(bounds: str) -> AfterValidator:
    """A number in ``bounds``, written as in mathematics: ``"[0, 1)"``, ``"(0, 1)"``, ``"[0, 1]"``."""
    low_text, high_text = bounds[1:-1].split(",")
    low, high = float(low_text), float(high_text)
    low_closed, high_closed = bounds[0] == "[", bounds[-1] == "]"

    def inside(v: float) -> bool:
        above = v >= low if low_closed else v > low
        below = v <= high if high_closed else v < high
        return math.isfinite(v) and above and below
    return check(inside, f"must be in {bounds}")


def _shown(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)
