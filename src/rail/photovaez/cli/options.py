"""Command-line options generated from a RAIL stage's ``config_options``, and their parsers.

``--epochs 50``, ``--hidden 512,256,128`` (or JSON ``[512,256,128]``), ``--mag-limits
'{"mag_u_lsst": 27.8, ...}'``, ``--resample false``: one ``--option`` per entry, its ``msg`` as
help; options that are not given are not passed, so the stage's defaults apply.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

__all__ = ["add_stage_options", "dict_parser", "list_parser", "parse_bool", "parsed_stage_options",
           "set_option", "stage_param"]

# options the command line sets itself (the stage name, the input and output files, the group)
RESERVED = frozenset({"name", "config", "input", "model", "output", "unlabeled", "hdf5_groupname"})


def stage_param(key: str, p: Any) -> Any:
    """The ``StageParameter`` of ``config_options[key]``.

    RAIL's ``SHARED_PARAMS`` entries are a ``StageConfig`` that resolves a name only when the
    stage is built; here the parameter is looked up by ``key`` directly.
    """
    from ceci.config import StageConfig

    if isinstance(p, StageConfig):
        p = dict.__getitem__(p, key)
    return p


def parse_bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "y", "on", "t"):
        return True
    if t in ("0", "false", "no", "n", "off", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _scalar(text: str, kind: type | None) -> Any:
    if kind is bool:
        return parse_bool(text)
    if kind in (int, float):
        return kind(text)
    if kind is None:  # unknown element type: a number when it reads as one
        for k in (int, float):
            try:
                return k(text)
            except ValueError:
                pass
    return text


def _json(text: str, kind: type, what: str) -> Any:
    """``text`` as JSON of type ``kind`` (``what`` names it in the messages)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON {what} {text!r}: {exc}") from None
    if not isinstance(value, kind):
        raise argparse.ArgumentTypeError(f"expected a JSON {what}, got {text!r}")
    return value


def list_parser(default: Any) -> Callable[[str], list]:
    """A parser of ``A,B,..`` or a JSON list; the elements take the type of ``default``'s."""
    elems = [e for e in (default or []) if e is not None]
    kind = type(elems[0]) if elems and isinstance(elems[0], (bool, int, float, str)) else None
    if kind is int and any(isinstance(e, float) for e in elems):
        kind = float

    def parse(text: str) -> list:
        t = text.strip()
        if t.startswith("["):
            return _json(text, list, "list")
        if t == "":
            return []
        try:
            return [_scalar(s.strip(), kind) for s in t.split(",")]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid list {text!r}: {exc}") from None

    parse.__name__ = "list"
    return parse


def dict_parser(text: str) -> dict:
    return _json(text, dict, "object")


dict_parser.__name__ = "dict"


def _typed(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def add_stage_options(parser: argparse.ArgumentParser, stage_cls: type, title: str) -> list[str]:
    """One ``--option`` per entry of ``stage_cls.config_options`` (the option's ``msg`` as help).

    Options that are not given are not passed to the stage, so the stage's defaults apply.
    Returns the option keys added.
    """
    group = parser.add_argument_group(title, f"configuration of RAIL's {stage_cls.__name__} (see "
                                      "docs/configuration.md); unset options keep the stage default")
    keys = []
    for key, raw in stage_cls.config_options.items():
        if key in RESERVED:
            continue
        p = stage_param(key, raw)
        kind, default = getattr(p, "dtype", None), getattr(p, "default", None)
        msg = (getattr(p, "msg", "") or "").replace("%", "%%")
        kw: dict[str, Any] = dict(dest=f"opt_{key}", default=argparse.SUPPRESS)
        shown = json.dumps(default) if isinstance(default, (list, dict)) else repr(default)
        if kind is bool:
            kw.update(type=parse_bool, nargs="?", const=True, metavar="true|false")
        elif kind is list:
            kw.update(type=list_parser(default), metavar="A,B,..|JSON")
        elif kind is dict:
            kw.update(type=dict_parser, metavar="JSON")
        elif kind in (int, float, str):
            kw.update(type=_typed(kind), metavar=kind.__name__.upper())
        else:
            kw.update(metavar="VALUE")
        kw["help"] = f"{msg} (default: {shown.replace('%', '%%')})"
        group.add_argument("--" + key.replace("_", "-"), **kw)
        keys.append(key)
    return keys


def parsed_stage_options(args: argparse.Namespace) -> dict[str, Any]:
    """The stage options given on the command line (those :func:`add_stage_options` added)."""
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_")}


def set_option(text: str) -> tuple[str, str, Any]:
    """``ESTIMATOR.KEY=VALUE`` (VALUE read as JSON when it is JSON, else as a string)."""
    head, sep, value = text.partition("=")
    name, dot, key = head.partition(".")
    if not (sep and dot and name and key):
        raise argparse.ArgumentTypeError(f"expected ESTIMATOR.KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return name.strip(), key.strip(), parsed


set_option.__name__ = "ESTIMATOR.KEY=VALUE"
