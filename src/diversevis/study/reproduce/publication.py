"""Publishing a finished study: its Markdown report and linked figures copied into the documentation."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from diversevis.core.cache import atomic_write_text
from diversevis.core.errors import DiversevisError


def publish(study: str | Path, dest: str | Path) -> Path:
    """Copy a study's Markdown report and the figures it links into a documentation folder.

    ``dest`` is the Markdown file to write (``docs/reproduction.md``); the figures go to the folder of the
    same name without the suffix (``docs/reproduction/``), keeping their paths inside the study, and the
    links are rewritten to point there. Existing figures of an earlier publication are replaced.

    Parameters
    ----------
    study : str or Path
        A study directory holding ``report.md`` (see :func:`~diversevis.study.reproduce.reproduce`).
    dest : str or Path
        The Markdown file to write.

    Returns
    -------
    Path
        ``dest``.
    """
    study, dest = Path(study), Path(dest)
    md_path = study / "report.md"
    if not md_path.is_file():
        raise DiversevisError(f"{study} holds no report.md; run `diversevis reproduce --out {study}` first")
    md = md_path.read_text()
    fig_dir = dest.with_suffix("")
    links = sorted(set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)))
    missing = [link for link in links if not (study / link).is_file()]
    if missing:
        raise DiversevisError(f"the report links figures that are missing: {', '.join(missing[:5])}")
    if fig_dir.exists():
        shutil.rmtree(fig_dir)
    for link in links:
        target = fig_dir / link
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(study / link, target)
    md = re.sub(r"(!\[[^\]]*\]\()([^)]+)\)", lambda m: f"{m.group(1)}{fig_dir.name}/{m.group(2)})", md)
    atomic_write_text(dest, md)
    return dest
