"""Escaping labels for the formats the report writes: a label (a grid's axis value, a method name, an error
line read from a run folder) is text, never markup, in LaTeX and in Markdown."""
from __future__ import annotations

import re

_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "Δ": r"$\Delta$", "\n": " ", "\r": " "}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX))
# Markdown: the characters that open markup anywhere, and `_` where it can open emphasis (not inside a word).
_MARKDOWN_RE = re.compile(r"([\\`*|<>\[\]#~])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def latex(text: object) -> str:
    """`text` as LaTeX text: every special character escaped, line breaks as spaces."""
    return _LATEX_RE.sub(lambda m: _LATEX[m.group(0)], str(text))


def markdown(text: object) -> str:
    """`text` as Markdown text (also inside a table cell): markup characters backslash-escaped, `|` too,
    line breaks as spaces; `_` inside a word (we_alpha_0.5) is left as it is, as Markdown reads it."""
    flat = str(text).replace("\r", " ").replace("\n", " ")
    return _MARKDOWN_RE.sub(lambda m: "\\" + m.group(0), flat)


def markdown_code(text: object) -> str:
    """`text` as a Markdown code span (literal inside), or escaped text when it holds a backtick."""
    flat = str(text).replace("\r", " ").replace("\n", " ")
    return f"`{flat}`" if "`" not in flat else markdown(flat)
