"""The reproduction report's structure (:class:`Section`) and its rendering to Markdown and HTML."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Section:
    """One part of the report: text, tables and figures, rendered to Markdown and HTML alike."""

    title: str
    verdict: str | None = None
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[Any]]]] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (relative path, caption)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:.{digits}g}"
    return str(v)


def render_markdown(title: str, intro: list[str], sections: list[Section]) -> str:
    """The report as Markdown (figures as relative image links).

    Parameters
    ----------
    title : str
        The page's heading.
    intro : list of str
        Paragraphs before the first section.
    sections : list of Section

    Returns
    -------
    str
    """
    lines = [f"# {title}", ""]
    for p in intro:
        lines += [p, ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.verdict:
            lines += [f"**Verdict: {s.verdict}.**", ""]
        for p in s.paragraphs:
            lines += [p, ""]
        for head, body in s.tables:
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            for row in body:
                lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
            lines.append("")
        for path, caption in s.figures:
            lines += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def md_inline(text: str) -> Any:
    """HTML for the inline Markdown the report's paragraphs use (``**bold**``, ``*italic*``, ```code```).

    Parameters
    ----------
    text : str
        One paragraph; everything else in it is escaped.

    Returns
    -------
    markupsafe.Markup
    """
    import re

    from markupsafe import Markup, escape

    h = str(escape(text))
    h = re.sub(r"`([^`]+)`", r"<code>\1</code>", h)
    h = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", h)
    h = re.sub(r"\*([^*]+)\*", r"<i>\1</i>", h)
    return Markup(h)


def render_html(title: str, intro: list[str], sections: list[Section]) -> str:
    """The report as one static HTML page (Jinja2 template ``reproduction.html.j2``).

    Parameters
    ----------
    title : str
        The page's title and heading.
    intro : list of str
        Paragraphs before the first section (inline Markdown, see :func:`md_inline`).
    sections : list of Section

    Returns
    -------
    str
    """
    from diversevis.study.report.build import _environment

    env = _environment()
    env.filters["md_inline"] = md_inline
    secs = [
        {**asdict(s), "tables": [(h, [[_fmt(v) for v in row] for row in body]) for h, body in s.tables]}
        for s in sections
    ]
    return env.get_template("reproduction.html.j2").render(title=title, intro=intro, sections=secs)
