"""Docstrings and numbers as ``zoo info`` prints them: plain text, whole paragraphs.

Model docstrings are reST written for Sphinx; in a terminal the roles (``:class:`X```), the
double backquotes and float32 noise in the priors (``0.10000000149011612``) only get in the
way, and a story cut after a fixed number of lines stops mid-sentence.
"""

from __future__ import annotations

import re

__all__ = ["plain", "short_numbers", "story"]

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`([^`]*)`")
_LITERAL = re.compile(r"``([^`]*)``")
_DEFAULT_ROLE = re.compile(r"(?<![\w`])`([^`\n]+)`(?![\w`])")
_FLOAT = re.compile(r"(?<![\w.])-?\d+\.\d+(?:[eE][-+]?\d+)?(?![\w.])")


def _role_text(match: re.Match) -> str:
    text = match.group(1)
    explicit = re.fullmatch(r"(.*?)\s*<[^<>]+>", text, flags=re.S)
    if explicit:  # :ref:`words <target>` shows the words
        return explicit.group(1)
    if text.startswith("~"):  # :class:`~a.b.C` shows C
        return text[1:].rsplit(".", 1)[-1]
    return text


def plain(text: str) -> str:
    """``text`` without Sphinx markup: roles, double backquotes, escaped spaces, and ``::``
    (a literal block's marker) shown as ``:``."""
    text = _ROLE.sub(_role_text, text)
    text = _LITERAL.sub(r"\1", text)
    text = _DEFAULT_ROLE.sub(r"\1", text)
    text = text.replace("\\ ", "")
    text = re.sub(r"(?m)^\s*::\s*$\n?", "", text)
    return re.sub(r"(?<=\S)::(?=\s*$)", ":", text, flags=re.M)


def _paragraphs(text: str) -> list[list[str]]:
    """Blank-line separated blocks; a block ending in ``::`` keeps its literal block."""
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip():
            current.append(line.rstrip())
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    groups: list[list[str]] = []
    literal = False  # inside a literal block: indented blocks after a line ending in ``::``
    for block in blocks:
        indented = block[0].startswith((" ", "\t"))
        if groups and indented and literal:
            groups[-1] = [*groups[-1], "", *block]
        else:
            groups.append(block)
            literal = block[-1].endswith("::")
    return groups


def story(doc: str, max_lines: int = 25) -> tuple[str, bool]:
    """The first whole paragraphs of ``doc`` (dedented) that fit in ``max_lines`` (the first
    always), as plain text; and whether any paragraph was left out."""
    groups = _paragraphs(doc)
    kept: list[list[str]] = []
    used = 0
    for group in groups:
        size = len(group) + (1 if kept else 0)
        if kept and used + size > max_lines:
            break
        kept.append(group)
        used += size
    text = "\n\n".join("\n".join(group) for group in kept)
    return plain(text), len(kept) < len(groups)


def short_numbers(text: str) -> str:
    """Floats printed with float32 noise (``0.10000000149011612``) in a short ``:g`` form
    (``0.1``); numbers already short are left as written."""

    def shorten(match: re.Match) -> str:
        digits = re.sub(r"[^0-9]", "", match.group().split("e")[0].split("E")[0]).lstrip("0")
        return f"{float(match.group()):.6g}" if len(digits) > 9 else match.group()

    return _FLOAT.sub(shorten, text)
