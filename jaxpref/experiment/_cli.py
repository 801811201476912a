"""The command line of an experiment module: tyro over its config, errors as short messages."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from jaxpref.experiment._errors import RunStopped, UsageError

__all__ = ["EXIT_STOPPED", "EXIT_USAGE", "cli", "parse"]

EXIT_USAGE = 2
"""Exit status of `cli` for a configuration or input error (as argparse/tyro use for bad flags)."""
EXIT_STOPPED = 75
"""Exit status of `cli` when the run stopped early and saved (`EX_TEMPFAIL`): run it again."""

C = TypeVar("C")


def parse(
    config_type: type[C],
    *,
    prog: str,
    description: str | None = None,
    args: Sequence[str] | None = None,
) -> C:
    """The config of a command line (`sys.argv[1:]` when `args` is None), built by tyro.

    `--help` lists every field of the frozen dataclasses with its default and docstring;
    the usage line shows `prog` (e.g. `python -m experiments.dpo`).

    Args:
      config_type: the experiment's frozen dataclass config.
      prog: the command shown in the usage line.
      description: `--help`'s description.
      args: the arguments (default `sys.argv[1:]`).
    """
    import tyro

    return tyro.cli(config_type, args=args, prog=prog, description=description)


def cli(
    config_type: type[C],
    main: Callable[[C], Any],
    *,
    prog: str,
    description: str | None = None,
    args: Sequence[str] | None = None,
) -> int:
    """Parses the command line, runs `main(config)` and returns the process exit status.

    * 0: the run finished.
    * 2: a configuration or input error (`UsageError`): one line `prog: error: ...` naming the
      flag or path, no traceback (tyro reports malformed flags the same way).
    * 75: a stage stopped early (`RunStopped`, e.g. SIGTERM) after saving; run it again.
    * 1: training stopped on non-finite values (`jaxpref.train.NonFiniteError`): its message
      once, no traceback.

    Any other exception propagates with its traceback.

    Args:
      config_type: the experiment's frozen dataclass config.
      main: `main(config)`.
      prog: the command shown in usage and error lines.
      description: `--help`'s description.
      args: the arguments (default `sys.argv[1:]`).

    Example (a module's last lines)::

        if __name__ == "__main__":
            sys.exit(cli(Config, main, prog="python -m experiments.dpo", description=...))
    """
    from jaxpref.train import NonFiniteError

    config = parse(config_type, prog=prog, description=description, args=args)
    try:
        main(config)
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except RunStopped as err:
        print(f"{prog}: {err}", file=sys.stderr, flush=True)
        return EXIT_STOPPED
    except NonFiniteError as err:
        print(f"{prog}: stopped: {err}", file=sys.stderr, flush=True)
        return 1
    return 0
