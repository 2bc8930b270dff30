"""A latent's dashboard as static HTML and inline SVG: no script, no network, no file beside it.

What a dashboard shows (after SAE-Vis and Neuronpedia): the texts on which the latent fires most,
each token highlighted by its activation; the latent's activation histogram per condition; the
tokens its decoder direction promotes and suppresses through the unembedding (logit lens); and its
header-sweep curve. Colour is never the only carrier: a firing token is a ``<mark>`` with a dotted
underline, whose ``title`` and ``aria-label`` give its value, and the strongest ones (at least
:data:`STRONG_SHARE` of the dashboard's largest value) are bold with a solid underline; every bar and
point of a figure has a ``<title>`` with its value, and each figure an ``aria-label``.

:func:`render_dashboard` renders one :class:`Dashboard`; :func:`render_page` a list of them under
one heading with a table of contents. The numbers are computed elsewhere
(:mod:`backdoor_sae.dashboards.stage`).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: A firing token at least this share of the dashboard's largest value is bold and underlined too.
STRONG_SHARE = 0.5
#: Bins of the activation histograms.
N_BINS = 12

STYLE = """<style>
.bsd-dash{border:1px solid #ccc;border-radius:6px;padding:0.6em 0.9em;margin:1em 0;}
.bsd-dash h4{margin-top:0.2em;}
.bsd-text{white-space:pre-wrap;font-family:monospace;font-size:0.85em;line-height:1.6;border-left:3px solid #ddd;
  padding:0.2em 0.6em;margin:0.3em 0 0.8em 0;}
.bsd-text mark{color:#000;padding:0 1px;border-radius:2px;text-decoration:underline dotted;}
.bsd-text mark.s{font-weight:bold;text-decoration:underline solid;}
.bsd-text mark.k1{background:rgba(255,140,0,0.36);}
.bsd-text mark.k2{background:rgba(255,140,0,0.52);}
.bsd-text mark.k3{background:rgba(255,140,0,0.68);}
.bsd-text mark.k4{background:rgba(255,140,0,0.84);}
.bsd-text mark.k5{background:rgba(255,140,0,1.00);}
.bsd-figs{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start;}
.bsd-lens{border-collapse:collapse;font-size:0.85em;}
.bsd-lens td,.bsd-lens th{padding:0 0.6em;text-align:left;}
.bsd-note{font-size:0.85em;color:#444;}
</style>"""


@dataclass
class Text:
    """One text on which the latent is read: its tokens, each token's value and whether it fires."""

    label: str
    """What the text is (split, year, header)."""
    tokens: list[str]
    values: list[float]
    fires: list[bool]
    activation: float
    """The latent's activation on the whole text (what ranked it)."""


@dataclass
class Dashboard:
    """Everything one latent's dashboard shows."""

    anchor: str
    title: str
    selections: list[str]
    """Why the book names it (the claims' latent, the paper's pick, the label-free first pick, the
    latent intervened on)."""
    description: str
    """Which dictionary, and how the per-token values were computed."""
    texts: list[Text]
    sweep_texts: list[Text]
    histogram: dict[str, np.ndarray]
    """Per condition label: the latent's activation on each of its samples."""
    sweep: list[tuple[int, float]]
    """(year, mean activation) of the year headers of the sweep; empty without a sweep."""
    trigger_year: int | None
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    facts: dict[str, str] = field(default_factory=dict)
    """Short facts shown under the title (relative decoder norm, BIS, ...)."""


def anchor_id(*parts) -> str:
    """An HTML id from ``parts`` (letters, digits and dashes only)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", "-".join(str(p) for p in parts)).strip("-").lower()


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3g}"


#: Shades of a firing token: its share of the dashboard's largest value, rounded up to fifths.
N_SHADES = 5


def render_text(text: Text, peak: float) -> str:
    """``text`` as a ``<pre>`` in which each firing token is a ``<mark>`` with its value in ``title``
    and ``aria-label`` (``'token': value``), shaded by its share of ``peak`` (class ``k1`` .. ``k5``)
    and underlined (dotted); the strongest (class ``s``) are bold with a solid underline."""
    parts = []
    for token, value, fires in zip(text.tokens, text.values, text.fires):
        shown = html.escape(token)
        if not fires:
            parts.append(shown)
            continue
        share = min(max(value / peak, 0.0), 1.0) if peak > 0 else 1.0
        shade = max(1, math.ceil(share * N_SHADES))
        strong = " s" if share >= STRONG_SHARE else ""
        label = html.escape(f"{token!r}: {_fmt(value)}", quote=True)
        parts.append(f'<mark class="k{shade}{strong}" title="{label}" aria-label="{label}">{shown}</mark>')
    caption = html.escape(f"{text.label}: activation {_fmt(text.activation)}")
    return (f'<div class="bsd-caption">{caption}</div>'
            f'<pre class="bsd-text" aria-label="{caption}; highlighted tokens carry their activation in their title">'
            f'{"".join(parts)}</pre>')


def histogram_svg(groups: dict[str, np.ndarray], title: str, n_bins: int = N_BINS, width: int = 360) -> str:
    """One row of bars per condition over shared bins: the share of that condition's samples in each bin."""
    values = [np.asarray(v, dtype=float) for v in groups.values() if len(v)]
    if not values:
        return ""
    every = np.concatenate(values)
    low, high = float(np.nanmin(every)), float(np.nanmax(every))
    if not high > low:
        high = low + 1.0
    edges = np.linspace(low, high, n_bins + 1)
    row_h, left, top = 34, 150, 22
    plot_w = width - left - 10
    height = top + row_h * len(groups) + 24
    bar_w = plot_w / n_bins
    out = [(f'<svg class="bsd-hist" role="img" aria-label="{html.escape(title)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="sans-serif">'),
           f"<title>{html.escape(title)}</title>",
           f'<text x="0" y="13" font-weight="bold">{html.escape(title)}</text>']
    for r, (name, v) in enumerate(groups.items()):
        v = np.asarray(v, dtype=float)
        y0 = top + r * row_h
        out.append(f'<text x="0" y="{y0 + row_h / 2 + 4:.1f}">{html.escape(name)} (n={len(v)})</text>')
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y0 + row_h - 4}" y2="{y0 + row_h - 4}" stroke="#999"/>')
        if not len(v):
            continue
        counts, _ = np.histogram(np.clip(v, low, high), bins=edges)
        share = counts / len(v)
        for b, s in enumerate(share):
            if s == 0:
                continue
            h = (row_h - 8) * s
            x = left + b * bar_w
            out.append(f'<rect x="{x + 1:.1f}" y="{y0 + row_h - 4 - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                       f'fill="#4c72b0"><title>{html.escape(name)}: {counts[b]} of {len(v)} samples in '
                       f"[{_fmt(edges[b])}, {_fmt(edges[b + 1])}]</title></rect>")
    y = top + row_h * len(groups) + 14
    out.append(f'<text x="{left}" y="{y}">{_fmt(low)}</text>')
    out.append(f'<text x="{left + plot_w}" y="{y}" text-anchor="end">{_fmt(high)}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{y}" text-anchor="middle">activation</text>')
    out.append("</svg>")
    return "".join(out)


def sweep_svg(points: Sequence[tuple[int, float]], trigger_year: int | None, title: str, width: int = 360,
              height: int = 190) -> str:
    """The latent's mean activation per year header, the trigger year marked (a larger, labelled point)."""
    if not points:
        return ""
    years = np.array([p[0] for p in points], dtype=float)
    vals = np.array([p[1] for p in points], dtype=float)
    left, right, top, bottom = 44, 10, 22, 30
    x0, x1 = years.min(), max(years.max(), years.min() + 1)
    y_lo, y_hi = float(np.nanmin(vals)), float(np.nanmax(vals))
    if not y_hi > y_lo:
        y_hi = y_lo + 1.0

    def xy(year, v):
        return (left + (year - x0) / (x1 - x0) * (width - left - right),
                top + (1 - (v - y_lo) / (y_hi - y_lo)) * (height - top - bottom))

    coords = [xy(y, v) for y, v in zip(years, vals)]
    out = [(f'<svg class="bsd-sweep" role="img" aria-label="{html.escape(title)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="sans-serif">'),
           f"<title>{html.escape(title)}</title>",
           f'<text x="0" y="13" font-weight="bold">{html.escape(title)}</text>',
           '<polyline fill="none" stroke="#4c72b0" stroke-width="1.5" points="'
           + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords) + '"/>']
    for (x, y), year, v in zip(coords, years, vals):
        trig = trigger_year is not None and int(year) == int(trigger_year)
        style = 'r="5" fill="#dd8452" stroke="#000"' if trig else 'r="2.5" fill="#4c72b0"'
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" {style}><title>{int(year)}{" (trigger)" if trig else ""}: '
                   f"{_fmt(v)}</title></circle>")
        if trig:
            out.append(f'<text x="{x:.1f}" y="{y - 8:.1f}" text-anchor="middle" font-weight="bold">{int(year)}</text>')
    base_y = height - bottom + 14
    out.append(f'<text x="{left}" y="{base_y}">{int(x0)}</text>')
    out.append(f'<text x="{width - right}" y="{base_y}" text-anchor="end">{int(years.max())}</text>')
    out.append(f'<text x="{(left + width) / 2}" y="{base_y}" text-anchor="middle">year header</text>')
    out.append(f'<text x="0" y="{top + 8}">{_fmt(y_hi)}</text><text x="0" y="{height - bottom}">{_fmt(y_lo)}</text>')
    out.append("</svg>")
    return "".join(out)


def lens_table(promoted: Sequence[tuple[str, float]], suppressed: Sequence[tuple[str, float]]) -> str:
    rows = []
    for i in range(max(len(promoted), len(suppressed))):
        cells = []
        for side in (promoted, suppressed):
            if i < len(side):
                token, logit = side[i]
                cells.append(f"<td><code>{html.escape(repr(token))}</code></td><td>{_fmt(logit)}</td>")
            else:
                cells.append("<td></td><td></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ('<table class="bsd-lens" aria-label="logit lens: tokens the decoder direction promotes and suppresses">'
            "<caption>Logit lens of the decoder direction</caption>"
            "<thead><tr><th>promotes</th><th>logit</th><th>suppresses</th><th>logit</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def render_dashboard(d: Dashboard) -> str:
    """One latent's dashboard as an HTML fragment (a ``<section>`` with id ``d.anchor``)."""
    texts = d.texts + d.sweep_texts
    peak = max((v for t in texts for v, f in zip(t.values, t.fires) if f), default=0.0)
    facts = "; ".join(f"{html.escape(k)}: {html.escape(v)}" for k, v in d.facts.items())
    out = [f'<section class="bsd-dash" id="{d.anchor}" aria-labelledby="{d.anchor}-title">',
           f'<h4 id="{d.anchor}-title">{html.escape(d.title)}</h4>',
           (f'<p class="bsd-note"><b>Named as:</b> {html.escape(", ".join(d.selections))}. '
            f"{html.escape(d.description)}{' ' + facts + '.' if facts else ''}</p>"),
           ('<p class="bsd-note">Highlighted, dotted-underlined tokens are those the latent fires on (hover '
            f"a token for its value); <b><u>bold with a solid underline</u></b>: at least {STRONG_SHARE:.0%} of the "
            "largest value shown.</p>"),
           "<b>Top-activating eval texts</b>"]
    out += [render_text(t, peak) for t in d.texts] or ["<p>none</p>"]
    if d.sweep_texts:
        out.append("<b>Top-activating header-sweep prompts</b>")
        out += [render_text(t, peak) for t in d.sweep_texts]
    out.append('<div class="bsd-figs">')
    out.append(histogram_svg(d.histogram, "Activation by condition"))
    out.append(sweep_svg(d.sweep, d.trigger_year, "Header sweep: mean activation per year"))
    out.append(lens_table(d.promoted, d.suppressed))
    out.append("</div></section>")
    return "\n".join(out)


def render_page(title: str, intro: str, dashboards: Sequence[Dashboard], anchor: str) -> str:
    """A section (one fine-tune) of dashboards with a list of links to each, and the style once."""
    links = "".join(f'<li><a href="#{d.anchor}">{html.escape(d.title)}</a> ({html.escape(", ".join(d.selections))})</li>'
                    for d in dashboards)
    body = "\n".join(render_dashboard(d) for d in dashboards)
    return (f'{STYLE}<div class="bsd-page" id="{anchor}"><h3>{html.escape(title)}</h3>'
            f'<p class="bsd-note">{html.escape(intro)}</p><ul>{links}</ul>{body}</div>')
