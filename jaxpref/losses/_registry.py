"""Name -> loss registry for configs and command lines.

Losses are plain functions; this registry only maps the strings a config holds (TRL's
`loss_type` names, kept so TRL users find them) to those functions, together with what each
one needs from the caller. Library code and notebooks should call the functions directly.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

from jaxpref.losses import _pairwise, _reference_free

__all__ = ["LossConfig", "LossInfo", "call", "get", "info", "names", "register", "resolve"]

_LENGTH_ARGS = ("chosen_lengths", "rejected_lengths")


class LossInfo(NamedTuple):
    """What a registered loss needs and accepts.

    Attributes:
      name: registry name (for the DPO family, TRL's `loss_type`).
      fn: the loss function.
      needs_reference: whether `fn` takes `ref_chosen_logps, ref_rejected_logps` after the
        policy log-probs (reference-free losses take only `chosen_logps, rejected_logps`).
      needs_lengths: whether `fn` requires `chosen_lengths` / `rejected_lengths`.
      margin_based: whether the loss depends on the log-ratios only through the margin
        `h = r_w - r_l` of per-response scores, so an f-divergence score `f'(π/π_ref)` can replace
        the log-ratio (TRL applies `f_divergence_type` to exactly these losses).
      hyperparameters: keyword-only hyperparameter names mapped to their defaults.

    Example:
      >>> from jaxpref.losses import info
      >>> info("robust").hyperparameters
      {'beta': 0.1, 'label_smoothing': 0.0}
    """

    name: str
    fn: Callable
    needs_reference: bool
    needs_lengths: bool
    margin_based: bool
    hyperparameters: dict[str, Any]

    def select(self, beta: float, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments of this loss among shared hyperparameters and `beta`.

        Args:
          beta: the shared inverse temperature (passed if the loss takes `beta`).
          hparams: hyperparameters shared by several losses; those this loss does not take
            are left out.

        Returns:
          name -> value for this loss.
        """
        kwargs = {k: v for k, v in hparams.items() if k in self.hyperparameters}
        if "beta" in self.hyperparameters:
            kwargs["beta"] = beta
        return kwargs


_REGISTRY: dict[str, LossInfo] = {}


def _hyperparameters(fn: Callable) -> dict[str, Any]:
    params = inspect.signature(fn).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _LENGTH_ARGS
    }


def _num_positional(fn: Callable) -> int:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds for p in inspect.signature(fn).parameters.values())


def _accepts(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def _unknown_name_error(name: str) -> KeyError:
    valid = tuple(_REGISTRY)
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return KeyError(f"Unknown loss {name!r}.{hint} Registered losses: {', '.join(valid)}.")


def names() -> tuple[str, ...]:
    """Returns the registered loss names in registration order.

    Returns:
      Tuple of names; the 15 TRL `loss_type`s come first, then `"cdpo"`, then losses registered
      by other modules.

    Example:
      >>> from jaxpref.losses import names
      >>> names()[:3]
      ('sigmoid', 'hinge', 'ipo')
    """
    return tuple(_REGISTRY)


def info(name: str) -> LossInfo:
    """Returns the `LossInfo` registered under `name`.

    Args:
      name: registry name.

    Returns:
      The `LossInfo` record.

    Raises:
      KeyError: unknown name (the message suggests the closest registered name).

    Example:
      >>> from jaxpref.losses import info
      >>> info("ipo").needs_lengths
      True
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise _unknown_name_error(name) from None


def get(name: str) -> Callable:
    """Returns the loss function registered under `name`.

    Args:
      name: registry name.

    Returns:
      The loss function.

    Raises:
      KeyError: unknown name (the message suggests the closest registered name).

    Example:
      >>> from jaxpref.losses import get
      >>> get("sigmoid").__name__
      'dpo_loss'
    """
    return info(name).fn


def register(
    name: str,
    fn: Callable,
    *,
    needs_reference: bool = True,
    needs_lengths: bool = False,
    margin_based: bool = False,
) -> LossInfo:
    """Registers a per-example loss under `name`.

    A reference-based loss has the signature
    `fn(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *, **hparams)`, a
    reference-free one `fn(chosen_logps, rejected_logps, *, **hparams)`; either may take
    keyword-only `chosen_lengths` / `rejected_lengths`. Keyword-only arguments other than the
    lengths are its hyperparameters.

    Args:
      name: registry name; must not be taken.
      fn: the loss function, returning `[B]` per-example losses.
      needs_reference: whether `fn` takes the two reference log-prob arrays.
      needs_lengths: whether `fn` requires completion lengths.
      margin_based: whether `fn` depends on the log-ratios only through their difference.

    Returns:
      The new `LossInfo`.

    Raises:
      ValueError: the name is already registered, or the signature does not match
        `needs_reference` / `needs_lengths`.

    Example:
      >>> from jaxpref.losses import dpo_loss, register
      >>> register("sigmoid", dpo_loss)
      Traceback (most recent call last):
      ...
      ValueError: register: a loss named 'sigmoid' is already registered (dpo_loss).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register: `name` must be a non-empty string, got {name!r}.")
    if name in _REGISTRY:
        raise ValueError(
            f"register: a loss named {name!r} is already registered "
            f"({getattr(_REGISTRY[name].fn, '__qualname__', _REGISTRY[name].fn)})."
        )
    if not callable(fn):
        raise ValueError(f"register: `fn` for {name!r} must be callable, got {fn!r}.")
    wanted = 4 if needs_reference else 2
    if _num_positional(fn) < wanted:
        raise ValueError(
            f"register: {name!r} has needs_reference={needs_reference}, so `fn` must take "
            f"{wanted} positional log-prob arrays; "
            f"{getattr(fn, '__qualname__', fn)} takes {_num_positional(fn)}."
        )
    if needs_lengths and not any(_accepts(fn, a) for a in _LENGTH_ARGS):
        raise ValueError(
            f"register: {name!r} has needs_lengths=True but `fn` takes neither "
            "`chosen_lengths` nor `rejected_lengths`."
        )
    record = LossInfo(
        name=name,
        fn=fn,
        needs_reference=bool(needs_reference),
        needs_lengths=bool(needs_lengths),
        margin_based=bool(margin_based),
        hyperparameters=_hyperparameters(fn),
    )
    _REGISTRY[name] = record
    return record


def resolve(loss: str | Callable | LossInfo) -> LossInfo:
    """The `LossInfo` of a registry name, a registered function, or any loss function.

    For an unregistered function it is inferred from the signature: it needs reference
    log-probs if it takes at least four positional arguments, and its keyword-only parameters
    are its hyperparameters.

    Args:
      loss: a registry name, a loss function, or a `LossInfo` (returned as is).

    Returns:
      The `LossInfo`.

    Raises:
      KeyError: an unknown name (with the closest registered one).
      TypeError: `loss` is neither a name nor a callable.

    Example:
      >>> from jaxpref.losses import resolve
      >>> resolve(lambda c, r, *, beta=0.1: c - r).needs_reference
      False
    """
    if isinstance(loss, LossInfo):
        return loss
    if isinstance(loss, str):
        return info(loss)
    if not callable(loss):
        raise TypeError(f"A loss must be a registered name or a callable, got {loss!r}.")
    for record in _REGISTRY.values():
        if record.fn is loss:
            return record
    return LossInfo(
        name=getattr(loss, "__name__", repr(loss)),
        fn=loss,
        needs_reference=_num_positional(loss) >= 4,
        needs_lengths=False,
        margin_based=False,
        hyperparameters=_hyperparameters(loss),
    )


def call(
    name: str | Callable | LossInfo,
    chosen_logps,
    rejected_logps,
    ref_chosen_logps=None,
    ref_rejected_logps=None,
    *,
    chosen_lengths=None,
    rejected_lengths=None,
    **hparams,
) -> jax.Array:
    """Calls the loss registered under `name` with whatever of the inputs it accepts.

    Reference log-probs are passed only to losses that take them; lengths only to losses whose
    signature has them. Hyperparameters not given keep the function's defaults.

    Args:
      name: registry name (or, as `resolve` takes them, a loss function or a `LossInfo`).
      chosen_logps: `[B]` summed log-probs of the chosen completions under the policy.
      rejected_logps: `[B]` summed log-probs of the rejected completions under the policy.
      ref_chosen_logps: `[B]` summed reference log-probs of the chosen completions, or None.
      ref_rejected_logps: `[B]` summed reference log-probs of the rejected completions, or None.
      chosen_lengths: `[B]` completion-token counts of the chosen completions, or None.
      rejected_lengths: `[B]` completion-token counts of the rejected completions, or None.
      **hparams: keyword-only hyperparameters of the loss (see `info(name).hyperparameters`).

    Returns:
      `[B]` per-example losses.

    Raises:
      KeyError: unknown name.
      TypeError: a hyperparameter the loss does not take (the message lists the valid ones).
      ValueError: the loss needs reference log-probs or lengths that were not given.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxpref.losses import call
      >>> loss = call("sigmoid", jnp.array([-5.0]), jnp.array([-7.0]), jnp.array([-6.0]),
      ...             jnp.array([-6.0]), beta=0.5)
      >>> print(round(float(loss[0]), 4))
      0.3133
    """
    record = resolve(name)
    unknown = sorted(set(hparams) - set(record.hyperparameters))
    if unknown:
        valid = ", ".join(record.hyperparameters) or "none"
        raise TypeError(
            f"Loss {record.name!r} got unknown hyperparameter(s) {', '.join(unknown)}; "
            f"valid hyperparameters: {valid}."
        )
    required = sorted(k for k, v in record.hyperparameters.items() if v is inspect.Parameter.empty)
    absent = [k for k in required if k not in hparams]
    if absent:
        raise TypeError(
            f"Loss {record.name!r} needs hyperparameter(s) {', '.join(absent)} (no default)."
        )
    args = [chosen_logps, rejected_logps]
    if record.needs_reference:
        missing = [
            n
            for n, v in (
                ("ref_chosen_logps", ref_chosen_logps),
                ("ref_rejected_logps", ref_rejected_logps),
            )
            if v is None
        ]
        if missing:
            raise ValueError(
                f"Loss {record.name!r} needs reference log-probs; missing {', '.join(missing)}."
            )
        args += [ref_chosen_logps, ref_rejected_logps]
    if record.needs_lengths:
        given = dict(zip(_LENGTH_ARGS, (chosen_lengths, rejected_lengths), strict=True))
        missing = [a for a in _LENGTH_ARGS if _accepts(record.fn, a) and given[a] is None]
        if missing:
            raise ValueError(
                f"Loss {record.name!r} needs {' and '.join(f'`{m}`' for m in missing)} "
                "([B] completion-token counts)."
            )
    kwargs = dict(hparams)
    for arg, value in zip(_LENGTH_ARGS, (chosen_lengths, rejected_lengths), strict=True):
        if value is not None and _accepts(record.fn, arg):
            kwargs[arg] = value
    return record.fn(*args, **kwargs)


def _register_builtins() -> None:
    p = _pairwise
    table = (
        # name, fn, needs_lengths, margin_based
        ("sigmoid", p.dpo_loss, False, True),
        ("hinge", p.hinge_loss, False, True),
        ("ipo", p.ipo_loss, True, True),
        ("exo_pair", p.exo_pair_loss, False, True),
        ("nca_pair", p.nca_pair_loss, False, False),
        ("robust", p.robust_dpo_loss, False, True),
        ("bco_pair", p.bco_pair_loss, False, False),
        ("sppo_hard", p.sppo_hard_loss, False, False),
        ("aot", p.aot_loss, False, False),
        ("aot_unpaired", p.aot_unpaired_loss, False, False),
        ("apo_zero", p.apo_zero_loss, False, False),
        ("apo_down", p.apo_down_loss, False, False),
        ("discopop", p.discopop_loss, False, True),
        ("sft", p.sft_loss, True, False),
        ("sigmoid_norm", p.sigmoid_norm_loss, True, True),
        ("cdpo", p.cdpo_loss, False, True),
    )
    for name, fn, needs_lengths, margin_based in table:
        register(
            name,
            fn,
            needs_reference=name != "sft",
            needs_lengths=needs_lengths,
            margin_based=margin_based,
        )
    rf = _reference_free
    # Reference-free losses beyond TRL's DPO `loss_type`s (TRL's CPO / ORPO trainers).
    for name, fn in (
        ("simpo", rf.simpo_loss),
        ("alphapo", rf.alphapo_loss),
        ("cpo", rf.cpo_loss),
        ("orpo", rf.orpo_sft_loss),
    ):
        register(name, fn, needs_reference=False, needs_lengths=True)


_register_builtins()


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """A registered pairwise loss and its hyperparameters, as a config or command line holds it.

    One field per keyword hyperparameter of the registered losses (the union of
    `info(name).hyperparameters` over `names()`, scalar ones only); a field left at None keeps
    the loss's own default, and setting one the chosen loss does not take is an error. A loss
    registered later with a hyperparameter outside these fields is called directly or through
    `call`.

    Args:
      name: registry name ("sigmoid" is DPO; "ipo", "hinge", "simpo", ...).
      beta: inverse temperature (passed to every loss that takes one; scales implicit rewards).
      label_smoothing: label noise of cDPO / robust / EXO / AOT / SimPO / CPO.
      discopop_tau: temperature of DiscoPOP's mixing of logistic and exponential losses.
      simpo_gamma: SimPO / AlphaPO target reward margin.
      alpha: AlphaPO's reward-shape exponent (required by alphapo), CPO's NLL weight.
      cpo_alpha: weight of CPO's NLL term on the chosen completion.

    Example:
      >>> from jaxpref.losses import LossConfig
      >>> LossConfig("robust", beta=0.2, label_smoothing=0.1).hyperparameters()
      {'label_smoothing': 0.1, 'beta': 0.2}
      >>> LossConfig("ipo", simpo_gamma=1.0).hyperparameters()
      Traceback (most recent call last):
      ...
      ValueError: loss 'ipo' has no hyperparameter 'simpo_gamma'; it takes ['beta'].
    """

    name: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float | None = None
    discopop_tau: float | None = None
    simpo_gamma: float | None = None
    alpha: float | None = None
    cpo_alpha: float | None = None

    @property
    def info(self) -> LossInfo:
        """The registry's `LossInfo` of `name` (KeyError with a suggestion if unknown)."""
        return info(self.name)

    def hyperparameters(self) -> dict[str, Any]:
        """The keyword arguments of the loss: every field set (not None), and `beta`.

        Returns:
          name -> value, ready for `call(name, ..., **kwargs)`.

        Raises:
          KeyError: unknown loss name.
          ValueError: a set field the loss does not take, a non-positive `beta`, or a
            required hyperparameter left unset.
        """
        record = self.info
        takes = record.hyperparameters
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ("name", "beta") or value is None:
                continue
            if field.name not in takes:
                known = sorted(takes)
                raise ValueError(
                    f"loss {self.name!r} has no hyperparameter {field.name!r}; it takes {known}."
                )
            out[field.name] = value
        if not self.beta > 0:
            raise ValueError(f"loss {self.name!r}: beta must be positive, got {self.beta}.")
        missing = [k for k, v in takes.items() if v is inspect.Parameter.empty and k not in out]
        if missing:
            raise ValueError(f"loss {self.name!r} requires {missing} (no default).")
        return record.select(self.beta, out)
