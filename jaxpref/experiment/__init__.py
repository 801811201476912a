"""The experiment kit: what every experiment module stands on.

An experiment module is `Config` (frozen dataclasses) -> `main(config) -> Report` -> a run
directory holding `config.json`, checkpoints, metrics, `report.json`, `report.md` and plots.
This package owns the plumbing so a module holds only its science:

* `open_run_dir` creates or reopens the run directory, saves the config, and refuses a rerun
  whose config differs from the saved one (with a readable diff; `force` to override). Only
  process 0 writes. `RunDir.phase` times phases; `RunDir.finish` writes the report.
* `Report` is the stable `report.json` schema (config, versions, git commit, devices, wall time
  per phase, results); `Markdown` builds `report.md` with escaped table cells; `fmt` and
  `mean_std` format cells (`mean ± std (n seeds)`).
* `run_seeds` runs a whole jitted `train(key)` over many seeds with `vmap`, in chunks when one
  program would not fit in memory.
* `guard_inputs` refuses to resume checkpoints trained on other inputs; `cached_arrays` stores
  derived arrays (e.g. sampled pairs) keyed on what they depend on.
* `stage_config`, `require_completed`, `stage_records` and `mesh_for` run `jaxpref.train`
  stages inside the run directory.
* `jaxpref.experiment.lm` holds the language-model pieces of preference studies: the synthetic
  token task as SFT and pair batches, pairs sampled from a model, gold-reward evaluation against
  the task's exact optimum, and a held-out evaluator for real data.
* `cli` builds the command line with tyro and turns `UsageError` (`ConfigError`, `InputError`)
  into one short message with exit status 2, `RunStopped` into status 75.

The kit lives in the installed package (not in `experiments/`) so that users' own experiment
modules and notebooks import it exactly as the bundled studies do.
"""

from jaxpref.experiment._cli import EXIT_STOPPED, EXIT_USAGE, cli, parse
from jaxpref.experiment._errors import ConfigError, InputError, RunStopped, UsageError
from jaxpref.experiment._plots import Panel, figure, plot_panels, save_figure
from jaxpref.experiment._report import (
    SCHEMA_VERSION,
    Markdown,
    Report,
    environment,
    escape,
    fmt,
    mean_std,
)
from jaxpref.experiment._run_dir import (
    RunDir,
    cached_arrays,
    config_diff,
    file_sha256,
    flag_name,
    guard_inputs,
    is_writer,
    open_run_dir,
)
from jaxpref.experiment._seeds import SeedRuns, fit_chunk_size, run_seeds
from jaxpref.experiment._stages import mesh_for, require_completed, stage_config, stage_records
from jaxpref.experiment._stats import spearman

__all__ = [
    "EXIT_STOPPED",
    "EXIT_USAGE",
    "SCHEMA_VERSION",
    "ConfigError",
    "InputError",
    "Markdown",
    "Panel",
    "Report",
    "RunDir",
    "RunStopped",
    "SeedRuns",
    "UsageError",
    "cached_arrays",
    "cli",
    "config_diff",
    "environment",
    "escape",
    "figure",
    "file_sha256",
    "fit_chunk_size",
    "flag_name",
    "fmt",
    "guard_inputs",
    "is_writer",
    "mean_std",
    "mesh_for",
    "open_run_dir",
    "parse",
    "plot_panels",
    "require_completed",
    "run_seeds",
    "save_figure",
    "spearman",
    "stage_config",
    "stage_records",
]
