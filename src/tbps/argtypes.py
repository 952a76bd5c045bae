"""argparse types that refuse out-of-range numbers at parse time, naming the value.

argparse puts the flag in front of the message (`argument --port: expected ...`), so a bad
`--port 70000` or `--workers -1` stops before any work with the flag and the value named.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable


def int_in_range(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An integer in [minimum, maximum] (no upper bound when maximum is None)."""
    if maximum is not None:
        wanted = f"an integer from {minimum} to {maximum}"
    else:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def float_in_range(low: float, high: float, *, low_inclusive: bool = True) -> Callable[[str], float]:
    """A finite float in [low, high] (or (low, high] with low_inclusive=False)."""
    wanted = f"a number in {'[' if low_inclusive else '('}{low}, {high}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        too_low = value < low if low_inclusive else value <= low
        if not math.isfinite(value) or too_low or value > high:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_in_range(1)
non_negative_int = int_in_range(0)
port_number = int_in_range(1, 65535)
