"""Checked numeric command-line options, shared by the command lines of both packages.

    parser.add_argument("--fps", type=number(above=0, at_most=1000))
    parser.add_argument("--steps", type=whole(at_least=1, at_most=1000))

argparse reports a bad value as "argument --fps: must be a number above 0, got '-5'": the
message names the option, and nothing runs. NaN and infinities are never numbers here.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable


def _range_text(at_least=None, above=None, at_most=None) -> str:
    parts = []
    if above is not None:
        parts.append(f"above {above:g}")
    if at_least is not None:
        parts.append(f"at least {at_least:g}")
    if at_most is not None:
        parts.append(f"at most {at_most:g}")
    return " and ".join(parts)


def number(*, at_least: float | None = None, above: float | None = None, at_most: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite float in the given range."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value)
        ok = ok and (at_least is None or value >= at_least) and (above is None or value > above)
        ok = ok and (at_most is None or value <= at_most)
        if not ok:
            wanted = _range_text(at_least, above, at_most)
            raise argparse.ArgumentTypeError(f"must be a number{' ' + wanted if wanted else ''}, got {text!r}")
        return value

    return parse


def whole(*, at_least: int | None = None, at_most: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in the given range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or (at_least is not None and value < at_least) or (at_most is not None and value > at_most):
            wanted = _range_text(at_least, None, at_most)
            raise argparse.ArgumentTypeError(f"must be a whole number{' ' + wanted if wanted else ''}, got {text!r}")
        return value

    return parse


def add_setting_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    names: tuple[str, ...] | list[str],
    *,
    defaults: dict[str, object] | None = None,
    default_notes: dict[str, str] | None = None,
) -> None:
    """Add one option per JobSettings field in names, as pose_bridge.settings declares it.

    Each option's dest is the field's name (args.guidance_scale for --guidance), so parsed
    values go onto JobSettings by name. Switches become --hands / --no-hands. defaults
    replaces a declared default (None: "not given", for a caller that fills it in itself,
    e.g. from the add-on's preferences); default_notes says in the help what that default is.
    """
    from pose_bridge.settings import SETTINGS, default_of

    defaults = defaults or {}
    default_notes = default_notes or {}
    for name in names:
        info = SETTINGS[name]
        flag = "--" + (info.option or name).replace("_", "-")
        default = defaults.get(name, default_of(name))
        note = default_notes.get(name)
        if note is None:
            note = "yes" if default is True else "no" if default is False else f"{default:g}" if isinstance(
                default, float) else str(default)
        help_text = f"{info.help} (default: {note})"
        if isinstance(default_of(name), bool):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        elif info.choices:
            parser.add_argument(flag, dest=name, choices=info.values, default=default, help=help_text)
        elif isinstance(default_of(name), int):
            parser.add_argument(flag, dest=name, metavar="N", default=default, help=help_text,
                                type=whole(at_least=_whole_or_none(info.minimum), at_most=_whole_or_none(info.maximum)))
        elif isinstance(default_of(name), float):
            parser.add_argument(flag, dest=name, metavar="X", default=default, help=help_text,
                                type=number(at_least=info.minimum, above=info.above, at_most=info.maximum))
        else:
            parser.add_argument(flag, dest=name, default=default, help=help_text)


def _whole_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)
