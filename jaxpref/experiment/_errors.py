"""Errors an experiment's command line reports as one short message."""

from __future__ import annotations

__all__ = ["ConfigError", "InputError", "RunStopped", "UsageError"]


class UsageError(ValueError):
    """A mistake in what the user asked for; the command line prints the message, exit status 2.

    The message names the flag or the path at fault and says what would be accepted. Raise the
    subclasses: `ConfigError` for a setting, `InputError` for a file or directory.
    """


class ConfigError(UsageError):
    """A configuration value is invalid (the message names the flag, e.g. `--loss.beta`)."""


class InputError(UsageError):
    """An input or output path is missing, unreadable, unwritable or malformed (names the path)."""


class RunStopped(RuntimeError):
    """A stage stopped before its last step (e.g. preemption); the run directory can be resumed.

    The command line prints the message and exits with status 75 (EX_TEMPFAIL: run the same
    command again to continue).

    Args:
      stage: the stage that stopped ("sft", "dpo", ...).
      step: the step its last checkpoint holds.
      reason: why it stopped (a `jaxpref.train` stop reason).
      out: the run directory to resume.
    """

    def __init__(self, stage: str, step: int, reason: str, out):
        self.stage, self.step, self.reason, self.out = stage, step, str(reason), out
        super().__init__(
            f"the {stage} stage stopped at step {step} ({self.reason}); its checkpoint is saved. "
            f"Run the same command again (--out {out}) to resume."
        )
