"""argparse pieces every command shares: the parser class, and value types (a flag's value is
refused in one line naming the flag before any file is read; train's flags are checked by its
Config instead, the one owner of those settings)."""

from __future__ import annotations

import argparse
import math

from resnets.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit 2 (argparse prints usage too), and
    names the subcommand it belongs to."""

    def error(self, message: str):  # noqa: D401 - argparse's signature
        raise UserError(f"{self.prog}: {message} (see `{self.prog} --help`)")

    def parse_known_args(self, args=None, namespace=None):
        # argparse hands a subcommand's unknown arguments up to the top parser, whose error
        # would point to `resnets --help`; the parser that met them reports them instead.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and isinstance(getattr(namespace, "inputs", None), list) \
                and not any(extra.startswith("-") for extra in extras):
            namespace.inputs += extras  # `predict RUN --weights W img.jpg`: files after an option
            extras = []
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def integer(low: int, high: int | None = None):
    """An integer from `low` (to `high`)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


positive_int = integer(1)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def odd_points(text: str) -> int:
    value = integer(3)(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be odd (the trained weights sit at the centre), "
                                         f"got {value}")
    return value


def seed(text: str) -> int:
    from resnets.train.config import MAX_SEED

    return integer(0, MAX_SEED)(text)


def shard(text: str):
    from resnets.study.parallel import parse_shard

    return _from_user_error(parse_shard, text)


def device(text: str) -> str:
    from resnets.train.device import check_device_name

    return _from_user_error(check_device_name, text)


def _from_user_error(parse, text: str):
    """`parse(text)`, its UserError turned into argparse's (which names the flag)."""
    try:
        return parse(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
