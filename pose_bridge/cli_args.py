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
