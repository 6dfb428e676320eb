"""Reading a config: find the file, apply ``--set`` overrides, check the keys, validate.

Every problem is one :class:`JaxsegError` line naming the file and the setting,
``configs/x.toml: model.transformer_heads: must divide transformer_dim (256); got 3``. The keys are
checked here, before pydantic sees the values, so that an unknown key can say "did you mean" and a
key of another model can say whose it is.

Files written before the ``[model]`` section was chosen by ``model.name`` list every model's
settings; a setting of another model at that model's default is dropped, so old run folders load.
``--set model.name=...`` replacing the file's model drops the settings of the replaced model only.
``train.bf16`` of earlier versions is read as ``train.precision``.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.resources
import tomllib
import typing
from pathlib import Path
from typing import Any

import pydantic

from jaxseg.config.fields import SettingError
from jaxseg.config.model_sections import MODEL_SECTIONS
from jaxseg.config.sections import Config
from jaxseg.errors import JaxsegError

_CONFIG = pydantic.TypeAdapter(Config)


def shipped_configs() -> dict[str, Path]:
    """The configs installed with jaxseg (the repository's ``configs/``, the package
    ``jaxseg.configs``): name -> file, sorted by name."""
    folder = importlib.resources.files("jaxseg.configs")
    return {f.name[:-len(".toml")]: Path(str(f)) for f in sorted(folder.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".toml")}


def resolve_path(name: str | Path) -> Path:
    """Find a config: a path to a TOML file (``.toml`` may be left off), else a shipped config by
    name (``demo``, ``demo.toml`` or ``configs/demo``), wherever the current folder is."""
    p = Path(name)
    for candidate in (p, p.with_name(p.name + ".toml")):
        if candidate.is_file():
            return candidate
    shipped = shipped_configs()
    stem = p.name[:-len(".toml")] if p.name.endswith(".toml") else p.name
    if (p.parent == Path(".") or p.parent == Path("configs")) and stem in shipped:
        return shipped[stem]
    raise JaxsegError(f"{name}: no such config file, and no shipped config of that name "
                      f"(shipped: {', '.join(shipped)}; or give the path of a .toml file)")


def load(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a TOML config, apply ``key=value`` overrides (``train.epochs=3``) and validate it.

    ``path=None`` gives the defaults. Raises :class:`JaxsegError` naming the file and the setting
    for unknown keys, wrong types and out-of-range values.
    """
    source = "defaults"
    raw: dict[str, Any] = {}
    if path is not None:
        file = resolve_path(path)
        source = str(file)
        try:
            raw = tomllib.loads(file.read_text())
        except (OSError, UnicodeDecodeError) as e:
            raise JaxsegError(f"{file}: cannot read config ({e})") from None
        except tomllib.TOMLDecodeError as e:
            raise JaxsegError(f"{file}: not valid TOML ({e})") from None
        raw.setdefault("name", file.stem)
    return load_from_dict(raw, overrides, source)


def load_from_dict(raw: dict[str, Any], overrides: typing.Sequence[str] = (), source: str = "config"
                   ) -> Config:
    """Build and validate a config from a nested dict plus ``key=value`` overrides; ``source``
    names the origin in error messages."""
    raw = copy.deepcopy(raw)
    given_model = copy.deepcopy(raw.get("model"))
    for item in overrides:
        _apply_override(raw, item)
    _drop_settings_of_a_replaced_model(given_model, raw.get("model"))
    _read_train_bf16(raw, source)
    _check_keys(Config, raw, source, ())
    try:
        return _CONFIG.validate_python(raw)
    except pydantic.ValidationError as e:
        raise JaxsegError(_located(e.errors()[0], source)) from None


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise JaxsegError(f"--set {item!r}: expected key=value, e.g. train.epochs=3")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare word such as adamw
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise JaxsegError(f"--set {item!r}: {part} is not a section")
    node[parts[-1]] = parsed


def _drop_settings_of_a_replaced_model(given: Any, model: Any) -> None:
    """``--set model.name=unet`` on a resunet34 config: the settings every model has stay, those of
    resunet34 alone go (settings of another model given by ``--set`` are still an error)."""
    if not (isinstance(given, dict) and isinstance(model, dict)):
        return
    name = model.get("name", "unet")
    if name == given.get("name", "unet") or not isinstance(name, str) or name not in MODEL_SECTIONS:
        return
    own = {f.name for f in dataclasses.fields(MODEL_SECTIONS[name])}
    of_some_model = {f.name for section in MODEL_SECTIONS.values() for f in dataclasses.fields(section)}
    for key, value in given.items():
        if key not in own and key in of_some_model and model.get(key) == value:
            del model[key]


def _read_train_bf16(raw: dict[str, Any], source: str) -> None:
    """``train.bf16`` (files and ``--set`` of earlier versions; every run folder saved it) is the
    old name of ``train.precision``: true = bfloat16, false = float32. A ``train.precision`` that
    is given wins (``--set train.precision=bfloat16`` on an old run's ``bf16 = false``)."""
    train = raw.get("train")
    if not isinstance(train, dict) or "bf16" not in train:
        return
    bf16 = train.pop("bf16")
    if not isinstance(bf16, bool):
        raise JaxsegError(f"{source}: train.bf16: must be true or false, got {bf16!r} "
                          f"(its new name: train.precision = \"float32\" | \"bfloat16\")")
    train.setdefault("precision", "bfloat16" if bf16 else "float32")


def _subsection(cls: type, key: str) -> type | None:
    """The section class of ``cls.key`` if that field is a table."""
    f = {f.name: f for f in dataclasses.fields(cls)}[key]
    factory = f.default_factory
    return factory if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory) else None


def _check_keys(cls: type, raw: Any, source: str, prefix: tuple[str, ...]) -> None:
    """Unknown keys and non-tables raise; the ``[model]`` table is checked against its model's class."""
    if not isinstance(raw, dict):
        raise JaxsegError(f"{source}: [{'.'.join(prefix)}] must be a table")
    if prefix == ("model",):
        cls = _model_section(raw, source)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in list(raw):
        if key not in names:
            _foreign_or_unknown(raw, key, names, prefix, source)
        elif (sub := _subsection(cls, key)) is not None:
            _check_keys(sub, raw[key], source, prefix + (key,))


def _model_section(raw: dict[str, Any], source: str) -> type:
    name = raw.setdefault("name", "unet")
    if not isinstance(name, str) or name not in MODEL_SECTIONS:
        raise JaxsegError(f"{source}: model.name: must be one of {', '.join(MODEL_SECTIONS)}; got {name!r}")
    return MODEL_SECTIONS[name]


def _foreign_or_unknown(raw: dict[str, Any], key: str, names: list[str], prefix: tuple[str, ...],
                        source: str) -> None:
    where = ".".join(prefix + (key,))
    if prefix == ("model",):
        owners = {name: section for name, section in MODEL_SECTIONS.items()
                  if key in {f.name for f in dataclasses.fields(section)}}
        if owners:
            if any(_is_default(section, key, raw[key]) for section in owners.values()):
                del raw[key]  # written by an earlier jaxseg, which listed every model's settings
                return
            raise JaxsegError(f"{source}: {where}: a setting of {' and '.join(owners)}, not of "
                              f"model.name = {raw['name']!r} (its settings: {', '.join(names)})")
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean {'.'.join(prefix + (close[0],))!r}? " if close else ""
    raise JaxsegError(f"{source}: unknown setting {where!r} ({hint}known here: {', '.join(sorted(names))})")


def _is_default(section: type, key: str, value: Any) -> bool:
    default = {f.name: f.default for f in dataclasses.fields(section)}[key]
    return (tuple(value) if isinstance(value, list) else value) == default


def _located(error: dict[str, Any], source: str) -> str:
    """One pydantic error as ``<source>: <section.key>: <problem>``."""
    loc = list(error["loc"])
    model_class = None
    if loc[:1] == ["model"] and len(loc) > 1 and loc[1] in MODEL_SECTIONS:
        model_class = MODEL_SECTIONS[loc.pop(1)]  # the discriminated union's tag, not a setting
    path = [part for part in loc if isinstance(part, str)]  # without list indices
    problem = _problem(error, path, model_class)
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, SettingError):
        path += cause.setting.split(".")
    return f"{source}: {'.'.join(path)}: {problem}"


def _problem(error: dict[str, Any], path: list[str], model_class: type | None) -> str:
    kind, ctx, given = error["type"], error.get("ctx") or {}, error.get("input")
    got = repr(list(given)) if isinstance(given, tuple) else repr(given)
    if kind == "value_error":
        return str(ctx["error"])
    if kind.startswith("int_"):
        return f"must be a whole number, got {got}"
    if kind.startswith("float_"):
        return f"must be a number, got {got}"
    if kind.startswith("bool_"):
        return f"must be true or false, got {got}"
    if kind.startswith("string_"):
        return f"must be a string, got {got}"
    if kind in ("tuple_type", "list_type"):
        return f"must be a list, got {got}"
    if kind == "literal_error":
        return f"must be one of {', '.join(_choices(path, model_class))}; got {got}"
    if kind == "greater_than_equal":
        bound = ctx["ge"]
        return f"must not be negative; got {got}" if bound == 0 else f"must be at least {bound}; got {got}"
    if kind == "greater_than":
        return f"must be positive; got {got}" if ctx["gt"] == 0 else f"must be more than {ctx['gt']}; got {got}"
    return f"{error['msg'][:1].lower()}{error['msg'][1:]}; got {got}"


def _choices(path: list[str], model_class: type | None) -> tuple[str, ...]:
    """The ``Literal`` choices of the field at ``path``."""
    cls: Any = Config
    for part in path[:-1]:
        cls = model_class if part == "model" and model_class else _subsection(cls, part)
    hint = typing.get_type_hints(cls)[path[-1]]
    return typing.get_args(hint)
