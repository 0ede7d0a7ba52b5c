"""Inline SVG plots of the manifold viewer: activation ratio against the latent.

A 1-D manifold gets a line plot of each grid latent's ratio to the MEI (floor and mean floor as dashed
lines, one clickable point per frame); a 2-D manifold gets a square of cells coloured by ratio that is
also the viewer's latent pad (click or drag to pick a frame). Both are plain SVG markup built here, so
the page needs no plotting library and no extra file. The page's script finds the frame behind an element
through its ``data-index`` and marks the current one with the class ``on``.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

__all__ = ["ratio_line_svg", "ratio_pad_svg", "ratio_colour"]

_LINE_W, _LINE_H = 440, 190  # viewBox of the 1-D plot
_M_LEFT, _M_RIGHT, _M_TOP, _M_BOTTOM = 44, 12, 10, 34
_PAD_CELL = 34  # viewBox side of one pad cell
_PAD_MARGIN = 22


def _f(x: float) -> str:
    """A coordinate with two decimals (short markup, exact enough on screen)."""
    return f"{x:.2f}"


def ratio_colour(r: float, lo: float, hi: float) -> str:
    """A ratio as a colour from pale yellow (``lo``) to dark blue (``hi``), for the pad's cells."""
    t = 0.0 if hi - lo < 1e-12 else min(1.0, max(0.0, (r - lo) / (hi - lo)))
    stops = ((255, 247, 188), (127, 205, 187), (44, 127, 184), (37, 52, 148))
    pos = t * (len(stops) - 1)
    k = min(int(pos), len(stops) - 2)
    a, b, u = stops[k], stops[k + 1], pos - k
    return "#" + "".join(f"{round(a[c] + (b[c] - a[c]) * u):02x}" for c in range(3))


def _y_range(ratios: Sequence[float], floors: Sequence[float]) -> tuple[float, float]:
    lo = min([*ratios, *floors, 1.0])
    hi = max([*ratios, *floors, 1.0])
    pad = max(0.02, 0.08 * (hi - lo))
    return lo - pad, hi + pad


def ratio_line_svg(
    latents: Sequence[float],
    ratios: Sequence[float],
    titles: Sequence[str],
    floor: float | None,
    mean_floor: float | None,
) -> Markup:
    """The ratio to the MEI against a 1-D latent in ``[0, 1)``, one clickable point per frame.

    Parameters
    ----------
    latents, ratios : sequences of float
        Each frame's latent and activation ratio, in frame order.
    titles : sequence of str
        Each point's tooltip.
    floor, mean_floor : float or None
        Drawn as dashed horizontal lines when given.

    Returns
    -------
    Markup
        ``<svg id="ratio-plot">`` markup; points are ``circle.pt[data-index]`` (class ``below`` under the
        floor), the cursor ``#ratio-cursor``.
    """
    floors = [x for x in (floor, mean_floor) if x is not None]
    lo, hi = _y_range(ratios, floors)
    pw, ph = _LINE_W - _M_LEFT - _M_RIGHT, _LINE_H - _M_TOP - _M_BOTTOM

    def px(z: float) -> float:
        return _M_LEFT + z * pw

    def py(r: float) -> float:
        return _M_TOP + (hi - r) / (hi - lo) * ph

    out = [
        f'<svg id="ratio-plot" class="plot" viewBox="0 0 {_LINE_W} {_LINE_H}" role="img" '
        'aria-label="activation ratio to the MEI against the latent">',
        f'<rect x="{_M_LEFT}" y="{_M_TOP}" width="{pw}" height="{ph}" class="frame-box"/>',
    ]
    for r in sorted({1.0, *floors}):
        cls = "ref" if r == 1.0 else "floor"
        label = "MEI" if r == 1.0 else ("floor" if r == floor else "mean floor")
        out.append(
            f'<line class="{cls}" x1="{_M_LEFT}" x2="{_M_LEFT + pw}" y1="{_f(py(r))}" y2="{_f(py(r))}"/>'
        )
        out.append(f'<text class="tick" x="{_M_LEFT - 4}" y="{_f(py(r) + 3)}" text-anchor="end">{r:g}</text>')
        out.append(
            f'<text class="lab" x="{_M_LEFT + pw - 3}" y="{_f(py(r) - 3)}" text-anchor="end">{label}</text>'
        )
    for z in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(
            f'<text class="tick" x="{_f(px(z))}" y="{_M_TOP + ph + 13}" text-anchor="middle">{z:g}</text>'
        )
    out.append(
        f'<text class="axis" x="{_M_LEFT + pw / 2}" y="{_LINE_H - 4}" text-anchor="middle">latent z '
        "(periodic: 1 = 0)</text>"
    )
    pts = [(px(z), py(r)) for z, r in zip(latents, ratios)]
    if pts:
        loop = " ".join(f"{_f(x)},{_f(y)}" for x, y in pts)
        out.append(f'<polyline class="curve" points="{loop}"/>')
        out.append(
            f'<line class="wrap" x1="{_f(pts[-1][0])}" y1="{_f(pts[-1][1])}" x2="{_f(px(1.0))}" '
            f'y2="{_f(pts[0][1])}"/>'
        )  # back to z = 1, the same image as z = 0
        out.append(
            f'<line id="ratio-cursor" x1="{_f(pts[0][0])}" x2="{_f(pts[0][0])}" y1="{_M_TOP}" '
            f'y2="{_M_TOP + ph}"/>'
        )
    for k, ((x, y), title, r) in enumerate(zip(pts, titles, ratios)):
        below = " below" if floor is not None and r < floor else ""
        out.append(
            f'<circle class="pt{below}" data-index="{k}" cx="{_f(x)}" cy="{_f(y)}" r="4">'
            f"<title>{escape(title)}</title></circle>"
        )
    out.append("</svg>")
    return Markup("\n".join(out))


def ratio_pad_svg(
    per_dim: int, ratios: Sequence[float], titles: Sequence[str], floor: float | None
) -> Markup:
    """The 2-D latent pad: ``per_dim x per_dim`` cells (row ``i`` = first latent, column ``j`` = second),
    coloured by ratio, cells below the floor outlined; frame ``i * per_dim + j`` is cell ``(i, j)``.

    Returns
    -------
    Markup
        ``<svg id="pad">`` markup (cells are ``rect.cell[data-index]`` with ``data-i``/``data-j``) and a
        one-line colour legend.
    """
    lo = min([*ratios, *([floor] if floor is not None else [])], default=0.0)
    hi = max([*ratios, 1.0], default=1.0)
    side = per_dim * _PAD_CELL
    size = side + _PAD_MARGIN
    show_text = per_dim <= 10
    out = [
        f'<svg id="pad" class="pad" viewBox="0 0 {size} {size}" tabindex="0" role="group" '
        f'aria-label="2-D latent pad: click or drag to pick a frame, arrow keys move" '
        f'data-per-dim="{per_dim}" data-x0="{_PAD_MARGIN}" data-y0="{_PAD_MARGIN}" data-side="{side}">',
        f'<text class="axis" x="{_PAD_MARGIN + side / 2}" y="12" text-anchor="middle">latent z2 (j) &#8594;</text>',
        f'<text class="axis" x="10" y="{_PAD_MARGIN + side / 2}" text-anchor="middle" '
        f'transform="rotate(-90 10 {_PAD_MARGIN + side / 2})">&#8592; latent z1 (i)</text>',
    ]
    for k, (r, title) in enumerate(zip(ratios, titles)):
        i, j = divmod(k, per_dim)
        x, y = _PAD_MARGIN + j * _PAD_CELL, _PAD_MARGIN + i * _PAD_CELL
        below = floor is not None and r < floor
        out.append(
            f'<rect class="cell{" below" if below else ""}" data-index="{k}" data-i="{i}" data-j="{j}" '
            f'x="{x}" y="{y}" width="{_PAD_CELL}" height="{_PAD_CELL}" fill="{ratio_colour(r, lo, hi)}">'
            f"<title>{escape(title)}</title></rect>"
        )
        if show_text:
            dark = (r - lo) / (hi - lo) > 0.55 if hi - lo > 1e-12 else False
            out.append(
                f'<text class="val{" dark" if dark else ""}" x="{x + _PAD_CELL / 2}" '
                f'y="{y + _PAD_CELL / 2 + 3}" text-anchor="middle">{r:.2f}</text>'
            )
    out.append(
        f'<rect id="pad-cursor" x="{_PAD_MARGIN}" y="{_PAD_MARGIN}" width="{_PAD_CELL}" '
        f'height="{_PAD_CELL}"/>'
    )
    out.append("</svg>")
    below = " · red edge: below the floor" if floor is not None else ""
    out.append(f'<p class="small muted legend">colour: ratio {lo:.3g} (pale) to {hi:.3g} (dark){below}</p>')
    return Markup("\n".join(out))
