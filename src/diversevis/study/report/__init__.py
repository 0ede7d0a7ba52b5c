"""Static, self-contained HTML report of a sweep store (``diversevis report DIR``).

:func:`write_report` renders Jinja2 templates shipped with the package (``study/report/templates/*.html.j2``)
into ``DIR/report/``: ``index.html`` (model, settings, counts, per-layer histograms, a sortable table of
every unit), one page per layer (gallery of MEI, diverse set and shift texture per unit, histograms,
sortable table) and one page per unit (every image and plot the sweep wrote, metrics and run spec).

The pages reference the store's PNGs by relative paths (nothing is copied) and need no server, network
or JavaScript library: they open from ``file://`` offline. Table sorting is a few lines of inline
vanilla JavaScript.

:func:`write_manifold_page` and :func:`write_cluster_page` (``study/report/manifold.py``) write the viewer of an
invariance manifold folder (latent slider or 2-D pad over precomputed frames) and of a manifold-cluster folder;
``diversevis report DIR`` picks them when DIR holds ``manifold.json`` or ``manifold_cluster.json``.
"""

from diversevis.study.report.build import write_report
from diversevis.study.report.manifold import write_cluster_page, write_manifold_page

__all__ = ["write_report", "write_manifold_page", "write_cluster_page"]
