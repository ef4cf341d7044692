"""Argument types of the ``monai-xres`` command: each parses one value or gives argparse a one-line reason."""

from __future__ import annotations

import argparse
import math

__all__ = ["class_value", "finite", "positive", "seed_range", "whole"]


def whole(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is below {low}")
        return value

    parse.__name__ = f"whole number >= {low}"
    return parse


def finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def class_value(text: str) -> int | str:
    """A class: an output channel number (>= 0), or a label name (nnU-Net's dataset.json)."""
    try:
        value = int(text)
    except ValueError:
        return text
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is below 0")
    return value


def positive(text: str) -> float:
    value = finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def seed_range(text: str) -> list[int]:
    """A seed (``2000``) or an inclusive range (``2000-2019``)."""
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high) if sep else int(low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed or a range like 2000-2019") from None
    if first < 0 or last < first:
        raise argparse.ArgumentTypeError(f"{text!r}: seeds are whole numbers >= 0, ranges low-high")
    return list(range(first, last + 1))
