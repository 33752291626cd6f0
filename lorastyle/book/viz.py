"""One consistent look for every figure of the book.

Style
    :func:`use_style` (a context manager) and :func:`set_style` apply the
    project's matplotlib rcParams (:data:`RC_PARAMS`): sizes readable in the
    rendered HTML, no top/right spines, a light grid, left-aligned titles and
    the colour-blind-safe Okabe-Ito colour cycle.

Colours
    :func:`genre_palette` gives every genre one colour-blind-safe base colour
    (Okabe-Ito, then Paul Tol's "bright" scheme), :func:`artist_colors` gives
    every artist a shade of its genre's colour (same hue, varied lightness).
    Both are deterministic functions of the sorted names.

Figures
    :func:`style_map` draws the Figure-1-style map of an embedding (genres as
    shaded convex hulls, points coloured by artist, artist centroids as
    stars), :func:`style_maps` several maps side by side with one legend and
    :func:`interactive_style_map` the same map as a self-contained plotly
    HTML page. :func:`curve_plot` (mean curves with ±std bands),
    :func:`image_grid` (labelled rows of images), :func:`loss_plot` (loss
    curves with a moving average), :func:`bar_table` (grouped bar chart of
    a metric table) and :func:`similarity_heatmap` (an annotated square matrix
    of similarities) cover the other figures.

Nothing here draws at random: every function is deterministic, so no
``random_state`` is needed. Titles are always the caller's: a function never
writes its own title over the one it is given (and writes none when given
``None``).
"""

from __future__ import annotations

import colorsys
import hashlib
import html
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.colors import to_hex, to_rgb, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Polygon
from numpy.typing import ArrayLike
from scipy.spatial import ConvexHull, QhullError

__all__ = [
    "OKABE_ITO",
    "TOL_BRIGHT",
    "RC_PARAMS",
    "use_style",
    "set_style",
    "genre_palette",
    "artist_colors",
    "style_map",
    "style_maps",
    "interactive_style_map",
    "curve_plot",
    "overlay_plot",
    "image_grid",
    "loss_plot",
    "bar_table",
    "interval_plot",
    "similarity_heatmap",
]

# --------------------------------------------------------------------------- #
# Colours and style
# --------------------------------------------------------------------------- #

#: Okabe & Ito's colour-blind-safe palette, ordered so that the first colours
#: are far apart in hue (black, which has no hue to shade, is left out).
OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#D55E00",  # vermillion
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
)

#: Paul Tol's "bright" qualitative scheme, used after :data:`OKABE_ITO`.
TOL_BRIGHT: tuple[str, ...] = (
    "#4477AA",  # blue
    "#EE6677",  # red
    "#228833",  # green
    "#CCBB44",  # yellow
    "#66CCEE",  # cyan
    "#AA3377",  # purple
    "#BBBBBB",  # grey
)

_DARK = "#1a1a1a"
_TEXT = "#222222"
_SPINE = "#555555"
_GRID = "#e6e6e6"

#: The rcParams applied by :func:`use_style` and :func:`set_style`.
RC_PARAMS: dict[str, Any] = {
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.05,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
    "figure.figsize": (6.4, 4.2),
    "figure.constrained_layout.use": True,
    "figure.titlesize": 12,
    "figure.titleweight": "bold",
    "font.size": 10.5,
    "axes.titlesize": 12,
    "axes.titlelocation": "left",
    "axes.titlepad": 8.0,
    "axes.labelsize": 10.5,
    "axes.labelcolor": _TEXT,
    "axes.edgecolor": _SPINE,
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "axes.prop_cycle": cycler(color=list(OKABE_ITO) + ["#000000"]),
    "grid.color": _GRID,
    "grid.linewidth": 0.7,
    "grid.linestyle": "-",
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "xtick.color": _SPINE,
    "ytick.color": _SPINE,
    "legend.fontsize": 9.5,
    "legend.title_fontsize": 10,
    "legend.frameon": False,
    "lines.linewidth": 1.8,
    "lines.markersize": 5,
    "image.cmap": "viridis",
}


@contextmanager
def use_style() -> Iterator[None]:
    """Apply the project's matplotlib style inside a ``with`` block.

    The rcParams of :data:`RC_PARAMS` are set on entry and the previous values
    restored on exit; create figures inside the block so they take the style.

    Yields
    ------
    None

    See Also
    --------
    set_style : the same style, applied globally (for a notebook's first cell).

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> with use_style():
    ...     fig, ax = plt.subplots()
    """
    with mpl.rc_context(RC_PARAMS):
        yield


def set_style() -> None:
    """Apply the project's matplotlib style globally (``rcParams.update``).

    Meant for the first cell of a notebook; library code uses
    :func:`use_style` instead, which restores the previous state.
    """
    mpl.rcParams.update(RC_PARAMS)


def _unique_sorted(names: Iterable[Any], what: str) -> list[str]:
    if isinstance(names, str):
        raise ValueError(f"{what} must be a collection of names, not the single string {names!r}")
    out = sorted({str(n) for n in names})
    if not out:
        raise ValueError(f"{what} is empty: nothing to colour")
    return out


def _extra_colours(n: int, taken: set[str]) -> list[str]:
    """``n`` further distinct colours, evenly spaced in hue (golden-angle steps)."""
    out: list[str] = []
    k = 0
    while len(out) < n:
        h = (0.07 + 0.618033988749895 * k) % 1.0
        lightness = (0.42, 0.55, 0.34)[(k // 7) % 3]
        c = to_hex(colorsys.hls_to_rgb(h, lightness, 0.65)).upper()
        if c not in taken:
            taken.add(c)
            out.append(c)
        k += 1
    return out


def genre_palette(genres: Iterable[str]) -> dict[str, str]:
    """One colour-blind-safe base colour per genre.

    Colours are taken from :data:`OKABE_ITO`, then :data:`TOL_BRIGHT`, then
    (beyond 14 genres) from evenly spaced hues, in the order of the sorted
    genre names, so the same set of genres always gets the same colours.

    Parameters
    ----------
    genres : iterable of str
        Genre names; repeats are allowed (e.g. one entry per LoRA).

    Returns
    -------
    dict of str to str
        Genre name to hex colour ``"#RRGGBB"``, in sorted genre order. No two
        genres share a colour.

    Examples
    --------
    >>> genre_palette(["ukiyo_e", "baroque", "baroque"])
    {'baroque': '#0072B2', 'ukiyo_e': '#E69F00'}
    """
    names = _unique_sorted(genres, "genres")
    base = [c.upper() for c in OKABE_ITO + TOL_BRIGHT]
    if len(names) > len(base):
        base += _extra_colours(len(names) - len(base), set(base))
    return dict(zip(names, base))


def artist_colors(
    artist_genre: Mapping[str, str],
    *,
    palette: Mapping[str, str] | None = None,
    lightness: tuple[float, float] = (0.35, 0.7),
    max_saturation: float = 0.8,
) -> dict[str, tuple[float, float, float]]:
    """Colour every artist with a shade of its genre's colour.

    Within a genre, artists (sorted by name) get the genre colour's hue and
    saturation (capped at ``max_saturation``) with lightness spread evenly
    over ``lightness`` in HLS space, darkest first. A genre's only artist gets
    the genre colour itself.

    Parameters
    ----------
    artist_genre : mapping of str to str
        Artist name to genre name.
    palette : mapping of str to str, optional
        Genre colours; by default :func:`genre_palette` of the genres present.
    lightness : (float, float), default=(0.35, 0.7)
        Range of HLS lightness of the shades, each in ``[0, 1]``.
    max_saturation : float, default=0.8
        Upper bound on the HLS saturation of the shades.

    Returns
    -------
    dict of str to (float, float, float)
        Artist name to RGB colour in ``[0, 1]``, in sorted artist order.
    """
    if not isinstance(artist_genre, Mapping):
        raise ValueError("artist_genre must be a mapping artist -> genre, e.g. {'Hokusai': 'ukiyo_e'}")
    if len(artist_genre) == 0:
        raise ValueError("artist_genre is empty: nothing to colour")
    lo, hi = (float(v) for v in lightness)
    if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0):
        raise ValueError(f"lightness must lie in [0, 1], got {lightness!r}")
    if not 0.0 <= max_saturation <= 1.0:
        raise ValueError(f"max_saturation must lie in [0, 1], got {max_saturation!r}")
    a2g = {str(a): str(g) for a, g in artist_genre.items()}
    pal = dict(palette) if palette is not None else genre_palette(a2g.values())
    missing = sorted(set(a2g.values()) - set(pal))
    if missing:
        raise ValueError(f"palette has no colour for genre(s) {missing}")
    by_genre: dict[str, list[str]] = {}
    for artist in sorted(a2g):
        by_genre.setdefault(a2g[artist], []).append(artist)
    out: dict[str, tuple[float, float, float]] = {}
    for genre, members in by_genre.items():
        rgb = to_rgb(pal[genre])
        if len(members) == 1:
            out[members[0]] = tuple(float(v) for v in rgb)
            continue
        h, _, s = colorsys.rgb_to_hls(*rgb)
        s = min(s, max_saturation)  # fully saturated light shades turn neon
        for artist, lum in zip(members, np.linspace(lo, hi, len(members))):
            out[artist] = tuple(float(v) for v in colorsys.hls_to_rgb(h, float(lum), s))
    return {a: out[a] for a in sorted(out)}


# --------------------------------------------------------------------------- #
# Style maps
# --------------------------------------------------------------------------- #


def _check_map_inputs(
    points: ArrayLike, artists: Sequence[str], genres: Sequence[str], ids: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, dict[str, str]]:
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (n_samples, 2), got {pts.shape}; project to 2-D first")
    n = pts.shape[0]
    if n == 0:
        raise ValueError("points is empty: nothing to draw")
    if not np.all(np.isfinite(pts)):
        raise ValueError("points contains NaN or infinite values")
    art = np.asarray([str(a) for a in artists], dtype=object)
    gen = np.asarray([str(g) for g in genres], dtype=object)
    if art.shape[0] != n or gen.shape[0] != n:
        raise ValueError(f"artists ({art.shape[0]}) and genres ({gen.shape[0]}) must have one entry per point ({n})")
    idv = None
    if ids is not None:
        idv = np.asarray([str(i) for i in ids], dtype=object)
        if idv.shape[0] != n:
            raise ValueError(f"ids ({idv.shape[0]}) must have one entry per point ({n})")
    a2g: dict[str, str] = {}
    for a, g in zip(art, gen):
        if a2g.setdefault(a, g) != g:
            raise ValueError(f"artist {a!r} appears in two genres ({a2g[a]!r} and {g!r}); one genre per artist")
    return pts, art, gen, idv, a2g


def _map_pad(pts: np.ndarray) -> float:
    span = float(np.ptp(pts, axis=0).max()) if len(pts) > 1 else 0.0
    return 0.03 * span if span > 0 else 0.05


def _genre_shape(pts: np.ndarray, pad: float) -> tuple[str, np.ndarray]:
    """The shape drawn around one genre's points.

    Returns ``("hull", vertices)`` (a convex hull rounded by ``pad``),
    ``("line", ends)`` (collinear points: the two extreme points) or
    ``("dot", point)`` (one distinct point).
    """
    uniq = np.unique(pts, axis=0)
    if len(uniq) == 1:
        return "dot", uniq[0]
    centred = uniq - uniq.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    collinear = len(uniq) < 3 or sv[-1] <= 1e-9 * max(sv[0], 1e-300)
    if not collinear:
        try:
            hull = ConvexHull(uniq)
        except QhullError:
            collinear = True
    if collinear:
        proj = centred @ vt[0]
        return "line", np.stack([uniq[np.argmin(proj)], uniq[np.argmax(proj)]])
    # Minkowski sum of the hull with a small disc: a hull with rounded corners
    # that leaves a margin around the outermost points.
    corners = uniq[hull.vertices]
    theta = np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)
    disc = pad * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    cloud = (corners[:, None, :] + disc[None, :, :]).reshape(-1, 2)
    rounded = ConvexHull(cloud)
    return "hull", cloud[rounded.vertices]


def _centroids(pts: np.ndarray, art: np.ndarray) -> tuple[list[str], np.ndarray]:
    names = sorted(set(art))
    return names, np.stack([pts[art == a].mean(axis=0) for a in names])


def _genre_handles(palette: Mapping[str, str], genres: Iterable[str], hull_alpha: float) -> list[Patch]:
    return [
        Patch(facecolor=to_rgba(palette[g], min(1.0, 2.5 * hull_alpha)), edgecolor=palette[g], linewidth=1.0, label=g)
        for g in sorted(set(genres))
    ]


def _star_handle(marker_size: float) -> Line2D:
    return Line2D(
        [],
        [],
        linestyle="",
        marker="*",
        markersize=np.sqrt(marker_size * 5.0),
        markerfacecolor="#9a9a9a",
        markeredgecolor=_DARK,
        markeredgewidth=0.8,
        label="artist centroid",
    )


def style_map(
    ax: Axes,
    points: ArrayLike,
    artists: Sequence[str],
    genres: Sequence[str],
    *,
    ids: Sequence[str] | None = None,
    title: str | None = None,
    show_hulls: bool = True,
    show_stars: bool = True,
    legend: bool = True,
    artist_legend: bool = False,
    marker_size: float = 30.0,
    hull_alpha: float = 0.15,
    xlabel: str = "component 1",
    ylabel: str = "component 2",
    palette: Mapping[str, str] | None = None,
    artist_palette: Mapping[str, Any] | None = None,
) -> Axes:
    """Draw the Figure-1-style map of a 2-D embedding.

    Every genre's points lie inside a shaded convex hull in the genre's
    colour (a genre whose points are collinear gets a thick translucent line,
    a single distinct point a translucent dot), points are coloured by artist
    (shades of the genre colour, :func:`artist_colors`) and each artist's
    centroid is marked by a star with a dark edge. The aspect is equal, so
    distances read the same in both directions.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes to draw into.
    points : array-like of shape (n_samples, 2)
        2-D coordinates, one row per LoRA (or image set).
    artists, genres : sequence of str of length n_samples
        Artist and genre of every point; an artist belongs to one genre.
    ids : sequence of str of length n_samples, optional
        Identifiers (e.g. LoRA ids) written in small grey text by each point.
    title : str, optional
        Axes title, used as given (say what the reader should see).
    show_hulls, show_stars : bool, default=True
        Draw the genre hulls / the artist centroid stars.
    legend : bool, default=True
        Draw a legend by genre, outside the axes on the right.
    artist_legend : bool, default=False
        List the artists too, in small type under their genre.
    marker_size : float, default=30.0
        Area of the point markers in points²; stars are five times larger.
    hull_alpha : float, default=0.15
        Opacity of the hull fill.
    xlabel, ylabel : str, default="component 1", "component 2"
        Axis labels.
    palette : mapping of str to str, optional
        Genre colours; by default :func:`genre_palette` of ``genres``.
    artist_palette : mapping of str to colour, optional
        Artist colours; by default :func:`artist_colors` with ``palette``.
        Pass both to keep colours fixed across several maps.

    Returns
    -------
    matplotlib.axes.Axes
        ``ax``. Its artists carry ``gid`` labels: ``"hull:<genre>"`` (filled
        :class:`~matplotlib.patches.Polygon`), ``"hull-degenerate:<genre>"``
        (:class:`~matplotlib.lines.Line2D`), ``"points"`` and ``"stars"``
        (collections; stars in sorted artist order).
    """
    pts, art, gen, idv, a2g = _check_map_inputs(points, artists, genres, ids)
    if not 0.0 <= hull_alpha <= 1.0:
        raise ValueError(f"hull_alpha must lie in [0, 1], got {hull_alpha}")
    if marker_size <= 0:
        raise ValueError(f"marker_size must be positive, got {marker_size}")
    pal = dict(palette) if palette is not None else genre_palette(gen)
    apal = dict(artist_palette) if artist_palette is not None else artist_colors(a2g, palette=pal)
    for what, names, have in (("palette", set(gen), pal), ("artist_palette", set(art), apal)):
        missing = sorted(names - set(have))
        if missing:
            raise ValueError(f"{what} has no colour for {missing}")

    with use_style():
        pad = _map_pad(pts)
        if show_hulls:
            for g in sorted(set(gen)):
                kind, geom = _genre_shape(pts[gen == g], pad)
                colour = pal[g]
                if kind == "hull":
                    ax.add_patch(
                        Polygon(
                            geom,
                            closed=True,
                            facecolor=to_rgba(colour, hull_alpha),
                            edgecolor=to_rgba(colour, min(1.0, 0.35 + 2 * hull_alpha)),
                            linewidth=1.1,
                            joinstyle="round",
                            zorder=1,
                            gid=f"hull:{g}",
                        )
                    )
                elif kind == "line":
                    ax.plot(
                        geom[:, 0],
                        geom[:, 1],
                        color=colour,
                        alpha=min(1.0, 2 * hull_alpha),
                        linewidth=12,
                        solid_capstyle="round",
                        zorder=1,
                        gid=f"hull-degenerate:{g}",
                    )
                else:
                    ax.plot(
                        [geom[0]],
                        [geom[1]],
                        linestyle="",
                        marker="o",
                        markersize=18,
                        color=colour,
                        alpha=min(1.0, 2 * hull_alpha),
                        markeredgewidth=0,
                        zorder=1,
                        gid=f"hull-degenerate:{g}",
                    )
        ax.scatter(
            pts[:, 0],
            pts[:, 1],
            s=marker_size,
            c=[apal[a] for a in art],
            edgecolors="white",
            linewidths=0.5,
            zorder=2,
            gid="points",
        )
        if show_stars:
            names, cents = _centroids(pts, art)
            ax.scatter(
                cents[:, 0],
                cents[:, 1],
                s=5.0 * marker_size,
                marker="*",
                c=[apal[a] for a in names],
                edgecolors=_DARK,
                linewidths=0.9,
                zorder=3,
                gid="stars",
            )
        if idv is not None:
            for (x, y), label in zip(pts, idv):
                ax.annotate(
                    label, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6, color="#666666", zorder=4
                )
        ax.set_aspect("equal", adjustable="datalim")
        ax.autoscale_view()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, color=_GRID, linewidth=0.6)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if title is not None:
            ax.set_title(title)
        if legend:
            handles: list[Any] = []
            bold: list[int] = []
            for g_handle in _genre_handles(pal, gen, hull_alpha):
                if artist_legend:
                    bold.append(len(handles))
                handles.append(g_handle)
                if artist_legend:
                    for a in sorted(a for a in set(art) if a2g[a] == g_handle.get_label()):
                        handles.append(
                            Line2D(
                                [],
                                [],
                                linestyle="",
                                marker="o",
                                markersize=5,
                                markerfacecolor=apal[a],
                                markeredgecolor="white",
                                markeredgewidth=0.4,
                                label=a,
                            )
                        )
            if show_stars:
                handles.append(_star_handle(marker_size))
            leg = ax.legend(
                handles=handles,
                loc="upper left",
                bbox_to_anchor=(1.02, 1.0),
                borderaxespad=0.0,
                fontsize=7.5 if artist_legend else None,
                ncol=2 if len(handles) > 24 else 1,
                handlelength=1.4,
                handletextpad=0.5,
                labelspacing=0.35 if artist_legend else 0.5,
            )
            for i in bold:
                leg.get_texts()[i].set_fontweight("bold")
    return ax


def style_maps(
    panels: Mapping[str, tuple[ArrayLike, Sequence[str], Sequence[str]]],
    *,
    ncols: int = 2,
    suptitle: str | None = None,
    panel_size: tuple[float, float] = (4.2, 3.9),
    show_hulls: bool = True,
    show_stars: bool = True,
    marker_size: float = 24.0,
    hull_alpha: float = 0.15,
) -> Figure:
    """Several style maps side by side (e.g. the LoRA map beside each encoder's).

    Colours are computed once from all panels, so an artist has the same
    colour in every panel; one legend by genre sits under the panels.

    Parameters
    ----------
    panels : mapping of str to (points, artists, genres)
        Panel title to the arguments of :func:`style_map`, in display order.
    ncols : int, default=2
        Panels per row.
    suptitle : str, optional
        Figure title, used as given.
    panel_size : (float, float), default=(4.2, 3.9)
        Width and height of one panel in inches.
    show_hulls, show_stars, marker_size, hull_alpha
        As in :func:`style_map`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(panels, Mapping) or len(panels) == 0:
        raise ValueError("panels must be a non-empty mapping title -> (points, artists, genres)")
    if int(ncols) != ncols or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    checked = {}
    for name, panel in panels.items():
        if len(panel) != 3:
            raise ValueError(f"panel {name!r} must be a tuple (points, artists, genres)")
        checked[name] = _check_map_inputs(*panel, None)
    a2g: dict[str, str] = {}
    for name, (_, _, _, _, m) in checked.items():
        for a, g in m.items():
            if a2g.setdefault(a, g) != g:
                raise ValueError(f"artist {a!r} has genre {a2g[a]!r} in one panel and {g!r} in panel {name!r}")
    pal = genre_palette(a2g.values())
    apal = artist_colors(a2g, palette=pal)
    n = len(checked)
    ncols = int(min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    with use_style():
        fig = plt.figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows + 0.6))
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax, (name, (pts, art, gen, _, _)) in zip(axes.flat, checked.items()):
            style_map(
                ax,
                pts,
                art,
                gen,
                title=name,
                show_hulls=show_hulls,
                show_stars=show_stars,
                legend=False,
                marker_size=marker_size,
                hull_alpha=hull_alpha,
                palette=pal,
                artist_palette=apal,
            )
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        handles: list[Any] = _genre_handles(pal, pal, hull_alpha)
        if show_stars:
            handles.append(_star_handle(marker_size))
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6))
        if suptitle is not None:
            fig.suptitle(suptitle)
    return fig


def _rgb_css(colour: Any, alpha: float | None = None) -> str:
    r, g, b = (int(round(255 * v)) for v in to_rgb(colour))
    return f"rgb({r},{g},{b})" if alpha is None else f"rgba({r},{g},{b},{alpha:.3g})"


def interactive_style_map(
    points: ArrayLike,
    artists: Sequence[str],
    genres: Sequence[str],
    ids: Sequence[str],
    *,
    title: str,
    xlabel: str = "component 1",
    ylabel: str = "component 2",
    hull_alpha: float = 0.15,
    width: int | None = None,
    height: int = 560,
    full_html: bool = True,
) -> str:
    """The style map as a self-contained interactive HTML page (plotly).

    Hovering a point shows its artist, genre and LoRA id; colours, hulls and
    centroid stars are those of :func:`style_map`; clicking a legend entry
    hides an artist, double-clicking isolates it. plotly.js is embedded
    inline, so the page works offline (about 4-5 MB per call: embed one
    interactive map per page). The HTML is deterministic (fixed ``div`` id).

    Parameters
    ----------
    points : array-like of shape (n_samples, 2)
        2-D coordinates.
    artists, genres, ids : sequence of str of length n_samples
        Artist, genre and LoRA id of every point.
    title : str
        Title of the map, used as given.
    xlabel, ylabel : str, default="component 1", "component 2"
        Axis titles.
    hull_alpha : float, default=0.15
        Opacity of the hull fill.
    width : int, optional
        Width in pixels; by default the page width.
    height : int, default=560
        Height in pixels.
    full_html : bool, default=True
        Return a whole ``<html>`` document; ``False`` returns a ``<div>`` (with
        plotly.js still inline) to embed in a page.

    Returns
    -------
    str
        HTML text.
    """
    try:
        import plotly.graph_objects as go
    except ImportError as exc:  # pragma: no cover - plotly is a book dependency
        raise ImportError("interactive_style_map needs plotly: pip install plotly") from exc
    if ids is None:
        raise ValueError("ids is required: the hover text shows every point's LoRA id")
    pts, art, gen, idv, a2g = _check_map_inputs(points, artists, genres, ids)
    pal = genre_palette(gen)
    apal = artist_colors(a2g, palette=pal)
    pad = _map_pad(pts)
    fig = go.Figure()
    for g in sorted(set(gen)):
        kind, geom = _genre_shape(pts[gen == g], pad)
        common = dict(legendgroup=g, legendgrouptitle_text=g, name=f"{g} (hull)", showlegend=False, hoverinfo="skip")
        if kind == "hull":
            closed = np.vstack([geom, geom[:1]])
            fig.add_trace(
                go.Scatter(
                    x=closed[:, 0],
                    y=closed[:, 1],
                    mode="lines",
                    fill="toself",
                    fillcolor=_rgb_css(pal[g], hull_alpha),
                    line=dict(color=_rgb_css(pal[g], min(1.0, 0.35 + 2 * hull_alpha)), width=1),
                    **common,
                )
            )
        elif kind == "line":
            fig.add_trace(
                go.Scatter(
                    x=geom[:, 0],
                    y=geom[:, 1],
                    mode="lines",
                    line=dict(color=_rgb_css(pal[g], min(1.0, 2 * hull_alpha)), width=14),
                    **common,
                )
            )
        else:
            fig.add_trace(
                go.Scatter(
                    x=[geom[0]],
                    y=[geom[1]],
                    mode="markers",
                    marker=dict(size=24, color=_rgb_css(pal[g], min(1.0, 2 * hull_alpha))),
                    **common,
                )
            )
    for a in sorted(set(art)):
        sel = art == a
        g = a2g[a]
        text = [f"artist: {html.escape(a)}<br>genre: {html.escape(g)}<br>LoRA id: {html.escape(i)}" for i in idv[sel]]
        fig.add_trace(
            go.Scatter(
                x=pts[sel, 0],
                y=pts[sel, 1],
                mode="markers",
                name=a,
                legendgroup=g,
                legendgrouptitle_text=g,
                text=text,
                hovertemplate="%{text}<extra></extra>",
                marker=dict(size=8, color=_rgb_css(apal[a]), line=dict(color="white", width=0.6)),
            )
        )
    names, cents = _centroids(pts, art)
    fig.add_trace(
        go.Scatter(
            x=cents[:, 0],
            y=cents[:, 1],
            mode="markers",
            name="artist centroid",
            text=[f"centroid of {html.escape(a)}<br>genre: {html.escape(a2g[a])}" for a in names],
            hovertemplate="%{text}<extra></extra>",
            marker=dict(
                symbol="star", size=17, color=[_rgb_css(apal[a]) for a in names], line=dict(color=_DARK, width=1)
            ),
        )
    )
    axis = dict(
        showgrid=True,
        gridcolor=_GRID,
        zeroline=False,
        showline=True,
        linecolor=_SPINE,
        ticks="outside",
        tickcolor=_SPINE,
    )
    fig.update_layout(
        title=dict(text=html.escape(title), x=0.01, xanchor="left", font=dict(size=16)),
        xaxis=dict(title=xlabel, **axis),
        yaxis=dict(title=ylabel, scaleanchor="x", scaleratio=1, **axis),
        plot_bgcolor="white",
        paper_bgcolor="white",
        hovermode="closest",
        font=dict(family="DejaVu Sans, Arial, sans-serif", size=12, color=_TEXT),
        legend=dict(groupclick="toggleitem", itemsizing="constant", font=dict(size=11)),
        height=int(height),
        width=None if width is None else int(width),
        margin=dict(l=60, r=20, t=60, b=50),
    )
    digest = hashlib.sha1(json.dumps([title, pts.round(6).tolist(), idv.tolist()]).encode()).hexdigest()[:12]
    return fig.to_html(
        include_plotlyjs=True,
        full_html=full_html,
        div_id=f"lorastyle-map-{digest}",
        config={"displaylogo": False, "responsive": True},
    )


# --------------------------------------------------------------------------- #
# Other figures
# --------------------------------------------------------------------------- #


def overlay_plot(
    ax: Axes,
    reference: ArrayLike,
    aligned: ArrayLike,
    artists: Sequence[str],
    genres: Sequence[str],
    *,
    labels: tuple[str, str] = ("weights", "images"),
    title: str | None = None,
) -> Axes:
    """Two maps of the same LoRAs on one axes, each LoRA's two positions joined by a line.

    For maps already aligned (:func:`lorastyle.book.experiments.procrustes_aligned`): filled
    dots are the reference, open circles the aligned map, in the artist's colour
    (:func:`artist_colors`); short lines mean the two maps agree.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    reference, aligned : array-like of shape (n, 2)
    artists, genres : sequence of str
        Each LoRA's artist and genre (for the colours).
    labels : (str, str), default=("weights", "images")
        Legend entries of the two maps.
    title : str, optional

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ValueError
        For maps of different shapes or labels of another length.
    """
    a, b = np.asarray(reference, float), np.asarray(aligned, float)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 2 or len(artists) != len(a) or len(genres) != len(a):
        raise ValueError("reference and aligned must both be (n, 2), with one artist and genre per row")
    colours = artist_colors(dict(zip(artists, genres)))
    c = [colours[x] for x in artists]
    with use_style():
        for (x0, y0), (x1, y1), col in zip(a, b, c):
            ax.plot([x0, x1], [y0, y1], color=col, lw=0.8, alpha=0.6)
        ax.scatter(a[:, 0], a[:, 1], c=c, s=22, zorder=3)
        ax.scatter(b[:, 0], b[:, 1], facecolors="none", edgecolors=c, s=26, zorder=3)
        grey = "0.35"  # the legend tells the two markers apart; colours are artists
        handles = [
            Line2D([], [], ls="", marker="o", color=grey, label=labels[0]),
            Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor=grey, label=labels[1]),
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        _tidy_axes(ax, xlabel=None, ylabel=None, title=title)
        ax.set_xticks([])
        ax.set_yticks([])
    return ax


def curve_plot(
    ax: Axes,
    x: ArrayLike,
    series: Mapping[str, tuple[ArrayLike, ArrayLike | None]],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    band_alpha: float = 0.18,
    marker: str | None = "o",
    legend: bool = True,
    colors: Mapping[str, Any] | None = None,
    chance: float | None = None,
) -> Axes:
    """Mean curves with shaded ±std bands (e.g. accuracy over PCA dimensions).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes to draw into.
    x : array-like of shape (n_points,)
        Shared x values (e.g. numbers of PCA components).
    series : mapping of str to (mean, std)
        Label to mean and standard deviation arrays of shape ``(n_points,)``;
        ``std`` may be ``None`` (no band).
    xlabel, ylabel : str
        Axis labels.
    title : str, optional
        Axes title, used as given.
    band_alpha : float, default=0.18
        Opacity of the bands.
    marker : str or None, default="o"
        Marker at each x value.
    legend : bool, default=True
        Draw a legend.
    colors : mapping of str to colour, optional
        Colour per series; by default the Okabe-Ito cycle in series order.
    chance : float, optional
        Score of a random guess, drawn as a dashed grey line labelled "chance".

    Returns
    -------
    matplotlib.axes.Axes
    """
    xv = np.asarray(x, dtype=float)
    if xv.ndim != 1 or xv.size == 0:
        raise ValueError(f"x must be a non-empty 1-D array, got shape {xv.shape}")
    if not isinstance(series, Mapping) or len(series) == 0:
        raise ValueError("series must be a non-empty mapping label -> (mean, std)")
    cycle = list(OKABE_ITO) + list(TOL_BRIGHT)
    with use_style():
        for k, (label, pair) in enumerate(series.items()):
            if len(pair) != 2:
                raise ValueError(f"series {label!r} must be a pair (mean, std)")
            mean = np.asarray(pair[0], dtype=float)
            if mean.shape != xv.shape:
                raise ValueError(f"mean of series {label!r} has shape {mean.shape}, x has {xv.shape}")
            colour = colors[label] if colors is not None and label in colors else cycle[k % len(cycle)]
            ax.plot(xv, mean, color=colour, marker=marker, markersize=4, label=str(label), zorder=3)
            if pair[1] is not None:
                std = np.asarray(pair[1], dtype=float)
                if std.shape != xv.shape:
                    raise ValueError(f"std of series {label!r} has shape {std.shape}, x has {xv.shape}")
                if np.any(std < 0):
                    raise ValueError(f"std of series {label!r} has negative values")
                ax.fill_between(xv, mean - std, mean + std, color=colour, alpha=band_alpha, linewidth=0, zorder=2)
        if chance is not None:
            ax.axhline(chance, color=_DARK, linestyle="--", linewidth=1, alpha=0.6, label="chance", zorder=1)
        _tidy_axes(ax, xlabel=xlabel, ylabel=ylabel, title=title)
        if legend:
            ax.legend(loc="best")
    return ax


def _tidy_axes(ax: Axes, *, xlabel: str | None, ylabel: str | None, title: str | None) -> None:
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ax.grid(True, color=_GRID, linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _as_image_stack(name: str, images: Any) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4:
        arr = arr[None]  # a single (H, W, 3) image
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)  # (k, H, W) greyscale
    if arr.ndim != 4 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"row {name!r} must have shape (k, H, W, 3), got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (np.nanmin(arr) < 0.0 or np.nanmax(arr) > 1.0):
            raise ValueError(f"row {name!r}: float images must lie in [0, 1] (or pass uint8)")
        return arr
    raise ValueError(f"row {name!r} must be uint8 (or float in [0, 1]), got dtype {arr.dtype}")


def image_grid(
    rows: Mapping[str, ArrayLike],
    *,
    title: str | None = None,
    max_cols: int = 8,
    cell_size: float = 0.95,
) -> Figure:
    """Rows of small images, each row labelled on the left.

    For training images beside generated images: one row per entry, at most
    ``max_cols`` images per row (the first ones). Small images (≤ 64 px) are
    upsampled with nearest-neighbour interpolation so they stay crisp; larger
    ones are antialiased.

    Parameters
    ----------
    rows : mapping of str to ndarray of shape (k, H, W, 3)
        Row label to its images (uint8, or float in ``[0, 1]``), in display
        order.
    title : str, optional
        Figure title, used as given.
    max_cols : int, default=8
        Most images shown per row.
    cell_size : float, default=0.95
        Size of one image in inches.

    Returns
    -------
    matplotlib.figure.Figure
        A figure whose axes form a ``(len(rows), ncols)`` grid.
    """
    if not isinstance(rows, Mapping) or len(rows) == 0:
        raise ValueError("rows must be a non-empty mapping label -> images of shape (k, H, W, 3)")
    if int(max_cols) != max_cols or max_cols < 1:
        raise ValueError(f"max_cols must be a positive integer, got {max_cols!r}")
    stacks = {str(k): _as_image_stack(str(k), v)[: int(max_cols)] for k, v in rows.items()}
    ncols = max(1, max(len(s) for s in stacks.values()))
    nrows = len(stacks)
    label_w = min(2.4, 0.3 + 0.075 * max(len(k) for k in stacks))
    with use_style():
        fig = plt.figure(figsize=(label_w + cell_size * ncols, cell_size * nrows + (0.45 if title else 0.1)))
        axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=dict(wspace=0.02, hspace=0.02))
        for r, (label, stack) in enumerate(stacks.items()):
            for c in range(ncols):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if c < len(stack):
                    img = stack[c]
                    small = max(img.shape[0], img.shape[1]) <= 64
                    ax.imshow(img, interpolation="nearest" if small else "antialiased")
                    ax.set_aspect("equal")
            axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", labelpad=6, fontsize=9.5)
        if title is not None:
            fig.suptitle(title)
    return fig


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values (fewer at the start)."""
    c = np.concatenate([[0.0], np.cumsum(y)])
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def loss_plot(
    ax: Axes,
    curves: Mapping[str, Sequence[float]],
    *,
    smooth: int = 20,
    title: str | None = None,
    xlabel: str = "step",
    ylabel: str = "loss",
    logy: bool = False,
    legend: bool = True,
    reference: Mapping[str, float] | None = None,
) -> Axes:
    """Loss curves: the raw values faint, a trailing moving average bold (from the first full window on).

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes to draw into.
    curves : mapping of str to sequence of float
        Label to the loss at steps 1, 2, ...
    smooth : int, default=20
        Window of the moving average; ``1`` draws the raw curve only.
    title : str, optional
        Axes title, used as given.
    xlabel, ylabel : str, default="step", "loss"
        Axis labels.
    logy : bool, default=False
        Logarithmic y axis.
    legend : bool, default=True
        Draw a legend (when there is more than one line).
    reference : mapping of str to float, optional
        Label to a level drawn as a dashed horizontal line across the steps (e.g. the base
        model's loss on the same images), to read the curves against.

    Returns
    -------
    matplotlib.axes.Axes
    """
    if not isinstance(curves, Mapping) or len(curves) == 0:
        raise ValueError("curves must be a non-empty mapping label -> list of losses")
    reference = dict(reference or {})
    if not all(np.isfinite(float(v)) for v in reference.values()):
        raise ValueError(f"reference levels must be finite numbers, got {reference!r}")
    if int(smooth) != smooth or smooth < 1:
        raise ValueError(f"smooth must be a positive integer, got {smooth!r}")
    cycle = list(OKABE_ITO) + list(TOL_BRIGHT)
    with use_style():
        for k, (label, values) in enumerate(curves.items()):
            y = np.asarray(values, dtype=float)
            if y.ndim != 1 or y.size == 0:
                raise ValueError(f"curve {label!r} must be a non-empty list of numbers")
            steps = np.arange(1, y.size + 1)
            colour = cycle[k % len(cycle)]
            if smooth > 1 and y.size > 1:
                ax.plot(steps, y, color=colour, alpha=0.25, linewidth=0.8)
                # only full windows: a mean over fewer values at the start would bend where the window fills
                window = min(int(smooth), y.size)
                full = slice(window - 1, None)
                average = _moving_average(y, window)[full]
                ax.plot(steps[full], average, color=colour, linewidth=1.8, label=str(label))
            else:
                ax.plot(steps, y, color=colour, linewidth=1.4, label=str(label))
        for label, level in reference.items():
            ax.axhline(float(level), color=_DARK, linestyle="--", linewidth=1, alpha=0.7, label=str(label), zorder=1)
        if logy:
            ax.set_yscale("log")
        _tidy_axes(ax, xlabel=xlabel, ylabel=ylabel, title=title)
        if legend and len(curves) + len(reference) > 1:
            ax.legend(loc="best")
    return ax


def bar_table(
    ax: Axes,
    table: Any,
    *,
    value: str,
    group: str,
    hue: str,
    title: str | None = None,
    errorbars: str | None = None,
    ylabel: str | None = None,
    annotate: bool = False,
    fmt: str = "{:.2f}",
    legend: bool = True,
) -> Axes:
    """Grouped bar chart of a metric table.

    One cluster of bars per ``group`` value (e.g. descriptor or encoder), one
    bar per ``hue`` value inside it (e.g. artist / genre level), both in order
    of first appearance in ``table``.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes to draw into.
    table : list of dict, or pandas.DataFrame
        One row per bar, with the columns ``value``, ``group``, ``hue`` (and
        ``errorbars``); each (group, hue) pair appears at most once
        (aggregate over seeds first).
    value, group, hue : str
        Column names of the bar height, the x clusters and the bar colours.
    title : str, optional
        Axes title, used as given.
    errorbars : str, optional
        Column with the half-length of each error bar (e.g. the std over
        seeds); missing or NaN entries get none.
    ylabel : str, optional
        y label; ``value`` by default.
    annotate : bool, default=False
        Write each value above its bar with ``fmt``.
    fmt : str, default="{:.2f}"
        Format of the annotations.
    legend : bool, default=True
        Draw a legend titled ``hue``.

    Returns
    -------
    matplotlib.axes.Axes
    """
    rows = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
    if len(rows) == 0:
        raise ValueError("table is empty: nothing to draw")
    needed = [value, group, hue] + ([errorbars] if errorbars is not None else [])
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"table row {i} is not a dict")
        missing = [c for c in needed if c not in row]
        if missing and not (missing == [errorbars]):
            raise ValueError(f"table row {i} lacks column(s) {missing}; it has {sorted(row)}")
    groups = list(dict.fromkeys(str(r[group]) for r in rows))
    hues = list(dict.fromkeys(str(r[hue]) for r in rows))
    cells: dict[tuple[str, str], Mapping[str, Any]] = {}
    for r in rows:
        key = (str(r[group]), str(r[hue]))
        if key in cells:
            raise ValueError(f"two rows for {group}={key[0]!r}, {hue}={key[1]!r}: aggregate them first")
        cells[key] = r
    cycle = list(OKABE_ITO) + list(TOL_BRIGHT)
    width = 0.8 / len(hues)
    centres = np.arange(len(groups), dtype=float)
    lowest = 0.0
    with use_style():
        for k, h in enumerate(hues):
            xs, ys, errs = [], [], []
            for gi, g in enumerate(groups):
                r = cells.get((g, h))
                if r is None:
                    continue
                xs.append(centres[gi] - 0.4 + width * (k + 0.5))
                ys.append(float(r[value]))
                e = r.get(errorbars) if errorbars is not None else None
                errs.append(np.nan if e is None else float(e))
            if not xs:
                continue
            ys_a = np.asarray(ys)
            err_a = np.asarray(errs)
            has_err = errorbars is not None and np.any(np.isfinite(err_a))
            bars = ax.bar(xs, ys_a, width=width * 0.92, color=cycle[k % len(cycle)], label=h, zorder=2)
            if has_err:
                ok = np.isfinite(err_a)
                if np.any(err_a[ok] < 0):
                    raise ValueError(f"column {errorbars!r} has negative values; give half-lengths (e.g. std)")
                ax.errorbar(
                    np.asarray(xs)[ok],
                    ys_a[ok],
                    yerr=err_a[ok],
                    fmt="none",
                    ecolor="#333333",
                    elinewidth=1.0,
                    capsize=3,
                    capthick=1.0,
                    zorder=3,
                )
            lowest = min(lowest, float(np.nanmin(ys_a - np.nan_to_num(err_a) if has_err else ys_a)))
            if annotate:
                for rect, y, e in zip(bars, ys_a, err_a):
                    reach = e if has_err and np.isfinite(e) else 0.0
                    end = y + reach if y >= 0 else y - reach  # past the bar and its error bar
                    ax.annotate(
                        fmt.format(y),
                        (rect.get_x() + rect.get_width() / 2, end),
                        xytext=(0, 2 if y >= 0 else -2),
                        textcoords="offset points",
                        ha="center",
                        va="bottom" if y >= 0 else "top",
                        fontsize=7.5,
                        color=_TEXT,
                    )
        ax.set_xticks(centres, groups)
        if lowest < 0:
            ax.axhline(0.0, color=_SPINE, linewidth=0.8, zorder=3)
        _tidy_axes(ax, xlabel=None, ylabel=ylabel if ylabel is not None else value, title=title)
        ax.grid(False, axis="x")
        if legend:
            ax.legend(title=hue, loc="best")
    return ax


def interval_plot(
    ax: Axes,
    table: Any,
    *,
    value: str,
    low: str,
    high: str,
    label: str,
    chance: str | None = None,
    group: str | None = None,
    title: str | None = None,
    xlabel: str | None = None,
) -> Axes:
    """Estimates with their intervals, one row each (a forest plot), and the chance level.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Axes to draw into.
    table : list of dict, or pandas.DataFrame
        One row per estimate, drawn top to bottom in table order.
    value, low, high : str
        Columns of the estimate and of its interval's ends.
    label : str
        Column of the row labels (y tick labels).
    chance : str, optional
        Column of the chance level of each row: a dashed grey tick at each row's level.
    group : str, optional
        Column that colours the rows (e.g. weights, image encoders, baselines), with a legend.
    title, xlabel : str, optional
        Axes title and x label (``value`` by default).

    Returns
    -------
    matplotlib.axes.Axes
    """
    rows = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
    if len(rows) == 0:
        raise ValueError("table is empty: nothing to draw")
    needed = [value, low, high, label] + [c for c in (chance, group) if c is not None]
    for i, row in enumerate(rows):
        missing = [c for c in needed if c not in row]
        if missing:
            raise ValueError(f"table row {i} lacks column(s) {missing}; it has {sorted(row)}")
        if not float(row[low]) <= float(row[value]) <= float(row[high]):
            raise ValueError(f"table row {i}: {value}={row[value]} is not inside [{row[low]}, {row[high]}]")
    groups = list(dict.fromkeys(str(r[group]) for r in rows)) if group is not None else [None]
    cycle = list(OKABE_ITO)
    colour = {g: cycle[k % len(cycle)] for k, g in enumerate(groups)}
    y = np.arange(len(rows))[::-1]  # first row on top
    with use_style():
        for g in groups:
            idx = [i for i, r in enumerate(rows) if group is None or str(r[group]) == g]
            v = np.array([float(rows[i][value]) for i in idx])
            lo = np.array([float(rows[i][low]) for i in idx])
            hi = np.array([float(rows[i][high]) for i in idx])
            ax.errorbar(
                v, y[idx], xerr=[v - lo, hi - v], fmt="o", color=colour[g], ecolor=colour[g],
                elinewidth=2, capsize=3, markersize=5, label=g, zorder=3,
            )  # fmt: skip
        if chance is not None:
            for yi, r in zip(y, rows):
                ax.plot([float(r[chance])] * 2, [yi - 0.35, yi + 0.35], color="#666666", linestyle="--", zorder=2)
            ax.plot([], [], color="#666666", linestyle="--", label="chance")
        ax.set_yticks(y, [str(r[label]) for r in rows])
        _tidy_axes(ax, xlabel=xlabel if xlabel is not None else value, ylabel=None, title=title)
        ax.grid(False, axis="y")
        if group is not None or chance is not None:
            ax.legend(loc="best", fontsize=8)
    return ax


def similarity_heatmap(
    ax: Axes,
    matrix: Any,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    vmin: float = -1.0,
    vmax: float = 1.0,
    fmt: str = "{:.2f}",
    cmap: str = "cividis",
    missing: str = "n/a",
) -> Axes:
    """An annotated heatmap of a square similarity matrix (e.g. cosines between LoRAs).

    Every cell is written in figures, so the colour scale (``cividis``, readable
    with every colour-vision deficiency) is a guide, not the only carrier of the
    value. NaN cells (pairs that a descriptor cannot compare) are grey and
    labelled ``missing``.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    matrix : array-like of shape (n, n) or pandas.DataFrame
        A DataFrame's index gives the labels when ``labels`` is None.
    labels : sequence of str, optional
        Row and column names; default ``0 .. n-1``.
    title : str, optional
    vmin, vmax : float, default=-1, 1
        Colour scale limits.
    fmt : str, default="{:.2f}"
    cmap : str, default="cividis"
    missing : str, default="n/a"

    Returns
    -------
    matplotlib.axes.Axes
    """
    if labels is None and hasattr(matrix, "index"):
        labels = [str(i) for i in matrix.index]
    M = np.asarray(matrix, dtype=float)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"matrix must be square, got shape {M.shape}")
    n = M.shape[0]
    labels = [str(i) for i in range(n)] if labels is None else list(labels)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for a {n} x {n} matrix")
    colormap = mpl.colormaps[cmap].with_extremes(bad="#d9d9d9")
    image = ax.imshow(np.ma.masked_invalid(M), cmap=colormap, vmin=vmin, vmax=vmax)
    for i in range(n):
        for j in range(n):
            value = M[i, j]
            if np.isnan(value):
                text, colour = missing, _SPINE
            else:
                # dark text on the light (high) end of cividis, light text on the dark end
                text = fmt.format(value)
                if text.startswith("-") and text[1:] == fmt.format(0.0):
                    text = text[1:]  # no "-0.00" (nor "-0%"): any format, not only floats
                colour = _DARK if (value - vmin) / (vmax - vmin) > 0.55 else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.grid(False)
    ax.figure.colorbar(image, ax=ax, shrink=0.8)
    if title is not None:
        ax.set_title(title)
    return ax
