"""Launchpad ``Config`` fields whose default lives in the pure core (one home per default).

``core_field("ssc_assets.core.learn.loop:TrainParams.epochs", "Training epochs.")`` is a
pydantic ``Field`` whose default is read from the core: a dataclass field (``Class.field``,
nested ``Class.field.sub`` for a default instance), a keyword default of a function or
constructor (``function.param``), or a module constant (``NAME``). The reference is kept in
the field's JSON schema (``core``), so ``ssc_assets_tests/test_config_defaults.py`` can prove
that every Config default equals its core default, and that no field declares a default of
its own without being listed as asset-only there.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

from pydantic import Field


def core_default(ref: str) -> Any:
    """The default named by ``ref`` (``module:Object.attr[.attr]``, ``module:function.param`` or ``module:CONSTANT``)."""
    module, _, path = ref.partition(":")
    head, *rest = path.split(".")
    obj = getattr(importlib.import_module(module), head)
    if not rest:
        return obj
    if isinstance(obj, type) and dataclasses.is_dataclass(obj):
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if rest[0] in fields:
            f = fields[rest[0]]
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if value is dataclasses.MISSING:
                raise KeyError(f"{ref}: no default")
            for part in rest[1:]:
                value = getattr(value, part)
            return value
    if callable(obj) and len(rest) == 1:
        default = inspect.signature(obj).parameters[rest[0]].default
        if default is inspect.Parameter.empty:
            raise KeyError(f"{ref}: no default")
        return default
    raise KeyError(f"{ref}: not a dataclass field, keyword default or constant")


def _plain(value: Any) -> Any:
    """Tuples become lists (what a launchpad list field holds)."""
    return list(value) if isinstance(value, tuple) else value


def core_field(ref: str, description: str, **kw) -> Any:
    """A ``Field`` with the core default named by ``ref`` (see :func:`core_default`)."""
    return Field(_plain(core_default(ref)), description=description, json_schema_extra={"core": ref}, **kw)


def core_factory_field(ref: str, factory, description: str, **kw) -> Any:
    """A ``Field`` whose default comes from ``factory`` (e.g. an environment setting) and
    equals the core default ``ref`` when that setting is unset (checked by the tests)."""
    return Field(default_factory=factory, description=description, json_schema_extra={"core": ref}, **kw)
