"""Writes the "Choosing a loss" page from the loss registry, so it cannot drift from the code.

For every name of `jaxpref.losses.names()` the page gives the function, its defining equation
and its one-line summary (both from the function's docstring), its TRL name, its
hyperparameters with defaults (`info(name).hyperparameters`), whether it needs reference
log-probs and completion lengths, and the papers of the docstring's `References:` section with
arXiv ids turned into links.
"""

from __future__ import annotations

import inspect
import pathlib
import re
import textwrap

_ARXIV = re.compile(r"arXiv[: ]\s*(\d{4}\.\d{4,5})")
_URL = re.compile(r"(?<![<`])(https?://[^\s,;)]+[^\s,;.)])")
# `TRL loss_type="x"` or `TRL "x"` in the summary line: a DPOTrainer loss_type.
_TRL_DPO = re.compile(r'TRL (?:`loss_type=)?`?"(\w+)"`')
# `TRL CPOTrainer with loss_type="x"`, `TRL CPOConfig(loss_type="x")`, `TRL's ORPOTrainer`.
_TRL_OTHER = re.compile(
    r"TRL(?:'s)?\s+`(\w+(?:Trainer|Config))(?:\(loss_type=\"(\w+)\"\))?`"
    r"(?:\s+with\s+`loss_type=\"(\w+)\"`)?"
)
_SECTION = re.compile(r"^(Args|Returns|Raises|References|Example|Examples|Note|Notes):\s*$")


def _paragraphs(doc: str) -> list[str]:
    """The docstring's paragraphs before its first Google-style section."""
    body = []
    for line in doc.splitlines():
        if _SECTION.match(line):
            break
        body.append(line)
    return [p.strip("\n") for p in "\n".join(body).split("\n\n") if p.strip()]


def _section(doc: str, name: str) -> str:
    """The dedented text of Google-style section `name` (`References`), or `""`."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f"{name}:":
            out = []
            for nxt in lines[i + 1 :]:
                if nxt.strip() and not nxt.startswith((" ", "\t")):
                    break
                out.append(nxt)
            return textwrap.dedent("\n".join(out)).strip()
    return ""


def equation(doc: str) -> str:
    """The defining equation of a loss docstring.

    Args:
      doc: the cleaned docstring (`inspect.getdoc`).

    Returns:
      The first `.. math::` block (reST), else the first paragraph after the summary.
    """
    paragraphs = _paragraphs(doc)
    for p in paragraphs:
        if p.lstrip().startswith(".. math::"):
            return p
    return paragraphs[1] if len(paragraphs) > 1 else ""


def summary(doc: str) -> str:
    """The first paragraph of a docstring, on one line.

    Args:
      doc: the cleaned docstring.

    Returns:
      The summary.
    """
    return " ".join(_paragraphs(doc)[0].split())


def references(doc: str) -> str:
    """The `References:` section on one line, arXiv ids and URLs as links (reST).

    Args:
      doc: the cleaned docstring.

    Returns:
      The references, or `""` when the docstring has none.
    """
    text = " ".join(_section(doc, "References").split())
    text = _URL.sub(lambda m: f"`{m.group(1)} <{m.group(1)}>`__", text)
    return _ARXIV.sub(
        lambda m: f"`arXiv:{m.group(1)} <https://arxiv.org/abs/{m.group(1)}>`__", text
    )


def trl_name(name: str, doc: str) -> tuple[bool, str]:
    """Whether `name` is a TRL `DPOTrainer` `loss_type`, and the TRL cell of the guide.

    Args:
      name: registry name.
      doc: the cleaned docstring of the registered function.

    Returns:
      `(is_trl_dpo_name, rst_cell)`.
    """
    match = _TRL_DPO.search(summary(doc))
    if match and match.group(1) == name:
        return True, f'``DPOTrainer`` ``loss_type="{name}"``'
    other = _TRL_OTHER.search(doc)
    if other:
        trainer, loss_type = other.group(1), other.group(2) or other.group(3)
        where = f"``{trainer}``" + (f' ``loss_type="{loss_type}"``' if loss_type else "")
        return False, f"jaxpref addition (TRL: {where})"
    return False, "jaxpref addition"


def _default(value) -> str:
    if value is inspect.Parameter.empty:
        return "required"
    return f"``{value!r}``"


def render() -> str:
    """The whole page, as reST.

    Returns:
      The page text.
    """
    import jaxpref.losses as jl

    head = [
        ".. This page is generated from jaxpref.losses at build time (docs/_ext/losses_guide.py).",
        "",
        "Choosing a loss",
        "===============",
        "",
        "Every loss of the registry (``jaxpref.losses.names()``) by its registry name, which is",
        "the ``loss_type`` of TRL's ``DPOTrainer`` for the DPO family so that TRL users find",
        "them; the other names are jaxpref additions. The configuration boundary",
        "(:class:`~jaxpref.losses.LossConfig`, ``--loss.name`` of ``experiments.dpo``) takes these",
        "names; library code and notebooks call the functions directly. Every loss takes the",
        "``[B]`` summed completion log-probs of the chosen and rejected responses under the",
        "policy, then under the reference model when it needs one, and returns ``[B]`` per-pair",
        "losses. :func:`~jaxpref.losses.call` passes only what the loss takes.",
        "",
        "Notation: log-ratios :math:`r_w = \\log\\pi(y_w) - \\log\\pi_{ref}(y_w)`,",
        ":math:`r_l = \\log\\pi(y_l) - \\log\\pi_{ref}(y_l)`, margin :math:`h = r_w - r_l`,",
        ":math:`|y|` the number of completion tokens, :math:`\\sigma` the logistic sigmoid.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 14 22 30 10 10",
        "",
        "   * - name",
        "     - function",
        "     - TRL",
        "     - reference",
        "     - lengths",
    ]
    sections = []
    for name in jl.names():
        info = jl.info(name)
        fn = info.fn
        public = f"jaxpref.losses.{fn.__name__}"
        ref = (
            f":func:`~{public}`"
            if getattr(jl, fn.__name__, None) is fn
            else f"``{fn.__module__}.{fn.__qualname__}``"
        )
        doc = inspect.getdoc(fn) or ""
        _, trl = trl_name(name, doc)
        yes = {True: "yes", False: "no"}
        head += [
            f"   * - :ref:`{name} <loss-{name}>`",
            f"     - {ref}",
            f"     - {trl}",
            f"     - {yes[info.needs_reference]}",
            f"     - {yes[info.needs_lengths]}",
        ]
        hparams = ", ".join(f"``{k}`` = {_default(v)}" for k, v in info.hyperparameters.items())
        papers = references(doc)
        title = f"``{name}``"
        sections += [
            f".. _loss-{name}:",
            "",
            title,
            "-" * len(title),
            "",
            summary(doc),
            "",
            equation(doc),
            "",
            f"* Function: {ref}",
            f"* TRL: {trl}",
            f"* Hyperparameters: {hparams or 'none'}",
            f"* Needs reference log-probs: {yes[info.needs_reference]}; "
            f"completion lengths: {yes[info.needs_lengths]}; "
            f"margin-based (takes an f-divergence link): {yes[info.margin_based]}",
            f"* Paper: {papers or 'none given'}",
            "",
        ]
    return "\n".join([*head, "", *sections]).rstrip() + "\n"


def write(path: pathlib.Path) -> bool:
    """Writes the page to `path` unless it already holds the same text.

    Args:
      path: the `.rst` file to write.

    Returns:
      Whether the file was (re)written.
    """
    text = render()
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True
