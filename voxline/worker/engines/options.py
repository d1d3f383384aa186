"""Engine options, typed: every engine declares one pydantic model of its options
(`Engine.Options`), whose field names are the option names; `parse_options` validates what a
worker was given, once, before the engine is built.

An option comes from `--engine-opt NAME=VALUE` or, when not given there, from the environment
variable `VOXLINE_ENGINE_<NAME>`: the name upper-cased, dashes turned into underscores
(`max_slots` -> VOXLINE_ENGINE_MAX_SLOTS, `device` -> VOXLINE_ENGINE_DEVICE). Only the chosen
engine's options are looked up, so one environment may hold those of several engines.

A bad value is one ValueError naming the engine, the option, where the value came from and
what is allowed, e.g. `engine 'tone' option chunk_ms='0': chunk_ms must be positive (an
integer)`. The allowed range is read off the field's declaration (type, gt/ge/lt/le, Literal
choices, min_length); a validator of the model says it itself by raising ValueError("must
...").
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

ENV_PREFIX = "VOXLINE_ENGINE_"


class EngineOptions(BaseModel):
    """Base of voxline's own option models (a third party's may be any BaseModel): unknown
    fields refused, no NaN or infinity, each field's docstring its description."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True
    )


def env_name(option: str) -> str:
    """The environment variable an option falls back to: `max_slots` ->
    VOXLINE_ENGINE_MAX_SLOTS."""
    return ENV_PREFIX + option.upper().replace("-", "_")


def option_names(model: type[BaseModel]) -> dict[str, str]:
    """Option name -> field name: a field's alias where it has one, else its name."""
    return {(info.alias or name): name for name, info in model.model_fields.items()}


def parse_options(
    engine: str,
    model: type[BaseModel],
    given: Mapping[str, object],
    environ: Mapping[str, str] | None = None,
) -> BaseModel:
    """`model` validated from the options `given` (strings from the command line, or typed
    values), and from the environment for those not given. ValueError, one for all, when an
    option is unknown or a value is not allowed."""
    names = option_names(model)
    unknown = [key for key in given if key not in names]
    if unknown:
        valid = ", ".join(sorted(names)) or "none"
        raise ValueError(f"engine {engine!r} has no option {unknown[0]!r}; valid options: {valid}")
    environ = os.environ if environ is None else environ
    values: dict[str, object] = dict(given)
    origins: dict[str, str] = {}
    for option in names:
        if option not in values and (raw := environ.get(env_name(option))) is not None:
            values[option] = raw
            origins[option] = env_name(option)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = [_explain(engine, model, error, values, origins) for error in exc.errors()]
        raise ValueError("; ".join(problems)) from None


def _explain(
    engine: str,
    model: type[BaseModel],
    error: ErrorDetails,
    values: Mapping[str, object],
    origins: Mapping[str, str],
) -> str:
    message = _message(error)
    option = str(error["loc"][0]) if error["loc"] else ""
    field = option_names(model).get(option)
    if field is None:  # a model validator's, about several options
        return f"engine {engine!r}: {message}"
    where = f" (from {origins[option]})" if option in origins else ""
    head = f"engine {engine!r} option {option}={values.get(option)!r}{where}"
    if error["type"] != "value_error":
        message = allowed(model.model_fields[field]) or message
    return f"{head}: {option} {message}" if message.startswith("must") else f"{head}: {message}"


def _message(error: ErrorDetails) -> str:
    cause = (error.get("ctx") or {}).get("error")
    # A validator's own words, without pydantic's "Value error, " in front.
    return str(cause) if isinstance(cause, ValueError) else error["msg"]


def allowed(info: FieldInfo) -> str:
    """What a field takes, in words ("must be at least 1 (an integer)"); empty when its type
    is not one this knows how to say."""
    kind = _without_none(info.annotation)
    if get_origin(kind) is Literal:
        return "must be one of " + ", ".join(str(choice) for choice in get_args(kind))
    if kind is bool:
        return "must be one of 1/0, true/false, yes/no, on/off"
    if kind is str:
        nonempty = any(
            isinstance(m, annotated_types.MinLen) and m.min_length > 0 for m in info.metadata
        )
        return "must not be empty" if nonempty else ""
    if kind not in (int, float):
        return ""
    noun = "an integer" if kind is int else "a finite number"
    bounds = _bounds(info, counts=kind is int)
    return f"must be {bounds} ({noun})" if bounds else f"must be {noun}"


def _bounds(info: FieldInfo, *, counts: bool) -> str:
    """A field's numeric constraints: "8000..192000", "in (0, 1]", "positive", "at least 1"
    (of counts; ">= 0" of quantities)..."""
    low: Any = None
    high: Any = None
    low_open = high_open = False
    for m in info.metadata:
        if isinstance(m, annotated_types.Gt):
            low, low_open = m.gt, True
        elif isinstance(m, annotated_types.Ge):
            low, low_open = m.ge, False
        elif isinstance(m, annotated_types.Lt):
            high, high_open = m.lt, True
        elif isinstance(m, annotated_types.Le):
            high, high_open = m.le, False
    if low is not None and high is not None:
        if not (low_open or high_open):
            return f"{low}..{high}"
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        if low_open:
            return "positive" if low == 0 else f"> {low}"
        return f"at least {low}" if counts else f">= {low}"
    if high is not None:
        return f"< {high}" if high_open else (f"at most {high}" if counts else f"<= {high}")
    return ""


def _without_none(annotation: Any) -> Any:
    """`X | None` -> X (None is a default, never a value an option is given)."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation
