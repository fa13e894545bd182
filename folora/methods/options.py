"""A method's options, checked against what its class accepts before anything runs.

A method's options are the keyword parameters of its `__init__` (and, where that forwards `**options`, of its
parents'): `method_options` lists them, and `check_method_options` refuses any other key (a misspelt `rnak: 8` would
otherwise be dropped and the default used without a word) and any value of the wrong type, naming the key and the
valid ones. Nested option blocks (`method.proxy`) are checked against the dataclass that consumes them.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing

from omegaconf import DictConfig, OmegaConf

from folora.errors import FoloraError, require


def required_options(cls: type) -> set[str]:
    """The options a method class takes without a default: its YAML must set each of them."""
    required = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        required |= {p.name for p in parameters if p.name != "self" and p.default is inspect.Parameter.empty
                     and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    return required


def method_options(cls: type) -> dict[str, object]:
    """{option: type hint} for every keyword a method class accepts: its own `__init__`'s parameters and, where that
    forwards `**options` to its parent, the parent's, up the class hierarchy."""
    options: dict[str, object] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        hints = typing.get_type_hints(klass.__init__)
        forwards = False
        for name, parameter in inspect.signature(klass.__init__).parameters.items():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                forwards = True
            elif name != "self" and parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
                options.setdefault(name, hints.get(name, object))
        if not forwards:
            break
    return options


def check_method_options(cfg: DictConfig) -> None:
    """Refuse a method config with a key its class does not accept (a misspelt `rnak: 8` would otherwise be dropped
    and the default used without a word) or a value of the wrong type, naming the key and the valid ones."""
    from hydra.utils import get_class

    target = cfg.get("_target_")
    require(isinstance(target, str), "The method config has no `_target_` naming its class; see conf/method/lora.yaml.")
    try:
        cls = get_class(target)
    except Exception as error:
        raise FoloraError(f"method._target_={target!r} cannot be imported ({error}); check conf/method/{cfg.get('name')}.yaml.") from None
    values = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "_target_"}
    check_fields("method", values, method_options(cls), f"method {cfg.get('name')!r} ({target})")
    missing = sorted(required_options(cls) - set(values))
    require(not missing, f"{', '.join(f'method.{k}' for k in missing)}: required by method {cfg.get('name')!r} "
                         f"({target}) but not set; its YAML (conf/method/{cfg.get('name')}.yaml) gives every option a value.")


def check_fields(prefix: str, values: dict, fields: dict[str, object], owner: str) -> None:
    """Every key of `values` is a field, and every value has the field's type (int, float, bool, str, list, dict,
    their unions and Optional); `prefix` names them as a user writes them on the command line."""
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise FoloraError(f"{', '.join(f'{prefix}.{k}' for k in unknown)}: not an option of {owner}. "
                          f"Valid options: {', '.join(sorted(fields))}.")
    for key, value in values.items():
        expected = fields[key]
        if not type_matches(value, expected):
            raise FoloraError(f"{prefix}.{key}={value!r} is a {type(value).__name__}; {owner} expects "
                              f"{type_name(expected)} here.")


def nested_options(prefix: str, values, schema: type, exclude: tuple[str, ...] = ()) -> dict:
    """A method's nested option block (e.g. `method.proxy`) as a plain dict, checked against the fields of the
    dataclass `schema` that consumes it (less `exclude`, the fields the method sets itself)."""
    if values is None:
        return {}
    plain = OmegaConf.to_container(values, resolve=True) if isinstance(values, DictConfig) else dict(values)
    hints = typing.get_type_hints(schema)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(schema) if f.name not in exclude}
    check_fields(prefix, plain, fields, f"{prefix} ({schema.__name__})")
    missing = sorted(f.name for f in dataclasses.fields(schema) if f.name not in exclude and f.name not in plain
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    require(not missing, f"{', '.join(f'{prefix}.{k}' for k in missing)}: not set; the method's YAML in conf/method/ "
                         f"gives every option of {prefix} a value.")
    return plain


def type_matches(value, hint) -> bool:
    """Whether a plain config value (after OmegaConf.to_container) fits a type hint. bool is not an int here, and
    an int is a valid float."""
    if hint is object or hint is typing.Any:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(type_matches(value, part) for part in typing.get_args(hint))
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint) or hint
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin)


def type_name(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(part) for part in typing.get_args(hint))
    if hint is type(None):
        return "null"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
             dict: "a mapping"}
    origin = typing.get_origin(hint) or hint
    return names.get(origin, getattr(origin, "__name__", str(origin)))
