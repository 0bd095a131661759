"""What every command shares: bad input answered in one line, and the --config flag.

Every `python -m resjax.<command>` answers bad input (a config file that does not exist, does
not compile or defines no `get_config`, an argument its `get_config` rejects, an unknown or
mistyped `--config.key`, a value of the wrong type, hyperparameters that cannot train, a workdir
or file that is not there) with one line on stderr, `error: ...`, and exit status 1, or 2 for a
command line that argparse rejects. `RESJAX_TRACEBACK=1` shows the traceback
instead.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import flags, logging
from ml_collections import config_flags

from resjax import hyperparameters, xla_flags
from resjax.sweeps.points import load_config

TRACEBACK_VARIABLE = "RESJAX_TRACEBACK"  # set to 1: bad input raises, with its traceback
BAD_INPUT = (ValueError, OSError)  # what resjax raises for input it cannot use, worded for users


class CommandError(ValueError):
    """Bad input that a command found itself; the message is the error line."""


def one_line(e: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(e).split())


def error(message: str, status: int = 1) -> int:
    """Prints `error: message` to stderr; returns `status`."""
    print(f"error: {message}", file=sys.stderr)
    return status


def run(
    main: Callable[[], int | None], bad_input: tuple[type[BaseException], ...] = BAD_INPUT
) -> int:
    """`main()`'s exit status (None: 0); a `bad_input` exception becomes one error line and
    status 1 (or its traceback, under RESJAX_TRACEBACK=1). resjax's XLA:CPU defaults are
    applied first: commands set process-wide things, importing resjax does not."""
    xla_flags.apply_defaults()
    try:
        return main() or 0
    except bad_input as e:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        return error(one_line(e))


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line as well: `error: ...; see PROG --help` (2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


# --- absl commands with a --config=FILE[:ARG] flag (resjax.train, resjax.diagnose) ---


def parse_flags(values: flags.FlagValues, argv: Sequence[str], config: str = "config") -> list[str]:
    """`values(argv)`, raising one-line errors for bad input; returns the arguments left.

    The config flag's FILE[:ARG] is built first (a missing file, an ARG that get_config rejects),
    then every flag is parsed: ml_collections type-checks the `--config.key=value` overrides;
    last, hyperparameters that cannot train are refused (resjax.hyperparameters.check).
    """
    spec = _last_value(argv, config)
    if spec:
        load_config(spec)
    try:
        rest = values(list(argv))
    except flags.Error as e:
        raise CommandError(one_line(e)) from None
    except (AttributeError, KeyError) as e:  # ml_collections: no such key, with "did you mean"
        raise CommandError(_unknown_key(e, argv, config)) from None
    if spec:
        overridden = values[config].override_values
        try:
            hyperparameters.check(
                values[config].value, truncated=hyperparameters.truncated_by(overridden)
            )
        except ValueError as e:
            raise CommandError(f"{spec}: {e}") from None
    return rest


def absl_flags_parser(argv: list[str]) -> list[str]:
    """For `absl.app.run(main, flags_parser=...)`: `parse_flags` on absl's global FLAGS, bad
    input answered with one line and exit status 1.

    absl logs at INFO to stderr by default, which puts a dozen lines of Orbax and TFDS
    bookkeeping between the progress lines of every run; resjax commands default to warnings
    (`--verbosity=0` brings INFO back)."""
    try:
        rest = parse_flags(flags.FLAGS, argv)
    except BAD_INPUT as e:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        sys.exit(error(one_line(e)))
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    return rest


def config_overrides(spec: str, override_flags: Sequence[str]) -> dict[str, Any]:
    """{key: value} of `--config.key=value` flags for the config `spec`, parsed and type-checked
    as `python -m resjax.train --config=SPEC` parses them."""
    bad = [f for f in override_flags if not re.match(r"--?config\.", f)]
    if bad:
        raise CommandError(
            f"expected only --config.key=value overrides after the config; got {' '.join(bad)}"
        )
    argv = ["resjax", f"--config={spec}", *override_flags]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "Config file[:ARG].", flag_values=values, lock_config=True, sys_argv=argv
    )
    parse_flags(values, argv)
    return values["config"].override_values


def _last_value(argv: Sequence[str], name: str) -> str | None:
    """The value of the last --name=VALUE or --name VALUE in `argv` (absl's last one wins)."""
    value = None
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":
            break
        match = re.fullmatch(rf"--?{name}(=(.*))?", arg)
        if match:
            value = (
                match.group(2) if match.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
            )
    return value


def _unknown_key(e: BaseException, argv: Sequence[str], config: str) -> str:
    while e.args and isinstance(e.args[0], BaseException):  # AttributeError(KeyError(...))
        e = e.args[0]
    key, _, hint = str(e.args[0] if e.args else e).partition("\n")
    bare = key.strip("'\"")
    flag = next(
        (
            a
            for a in argv
            if re.match(rf"--?(no)?{config}\.", a) and bare in a.split("=", 1)[0].split(".")[1:]
        ),
        None,
    )
    return (
        f"unknown config key {key}"
        + (f" in {flag}" if flag else "")
        + (f". {hint}" if hint else "")
    )
