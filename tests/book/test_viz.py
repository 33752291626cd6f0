"""Tests for lorastyle.book.viz: palettes, the style map and the other figures.

Geometry is checked against independent references (numpy means, scipy's
ConvexHull), colours in HLS space with colorsys.
"""

import colorsys
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Polygon  # noqa: E402
from matplotlib.path import Path  # noqa: E402

from lorastyle.book import viz  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def degenerate_map():
    """4 genres: two regular, one with only 2 points, one with collinear points."""
    rng = np.random.default_rng(0)
    pts, artists, genres, ids = [], [], [], []

    def add(p, artist, genre):
        pts.append(np.asarray(p, dtype=float))
        artists.append(artist)
        genres.append(genre)
        ids.append(f"lora-{len(ids):03d}")

    for genre, centre, names in (
        ("baroque", (0.0, 0.0), ("Rembrandt", "Rubens", "Vermeer")),
        ("ukiyo_e", (6.0, 1.0), ("Hokusai", "Hiroshige")),
    ):
        for name in names:
            c = np.asarray(centre) + rng.normal(0, 0.8, 2)
            for _ in range(4):
                add(c + rng.normal(0, 0.3, 2), name, genre)
    add((-4.0, 5.0), "Raphael", "renaissance")  # only 2 points
    add((-3.0, 5.5), "Titian", "renaissance")
    for t in (0.0, 1.0, 2.0, 3.5):  # collinear points, 2 artists
        add((2.0 + t, -5.0 + 0.5 * t), "Klimt" if t < 1.5 else "Mucha", "art_nouveau")
    return np.stack(pts), artists, genres, ids


def _hulls(ax):
    return {
        p.get_gid().split(":", 1)[1]: p
        for p in ax.patches
        if isinstance(p, Polygon) and (p.get_gid() or "").startswith("hull:")
    }


def _title(ax):
    """The axes title, wherever it is placed (the style puts titles on the left)."""
    return "".join(ax.get_title(loc=loc) for loc in ("left", "center", "right"))


def _collection(ax, gid):
    found = [c for c in ax.collections if c.get_gid() == gid]
    assert len(found) == 1, f"expected one collection with gid {gid!r}, found {len(found)}"
    return found[0]


# --------------------------------------------------------------------------- #
# Style and palettes
# --------------------------------------------------------------------------- #


def test_use_style_is_scoped():
    before = dict(matplotlib.rcParams)
    with viz.use_style():
        assert matplotlib.rcParams["figure.dpi"] == 110
        assert matplotlib.rcParams["axes.spines.top"] is False
        assert matplotlib.rcParams["axes.spines.right"] is False
        assert 10 <= matplotlib.rcParams["font.size"] <= 11
        assert matplotlib.rcParams["axes.titlesize"] == 12
        cycle = [c.upper() for c in matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]]
        assert cycle[: len(viz.OKABE_ITO)] == [c.upper() for c in viz.OKABE_ITO]
    after = dict(matplotlib.rcParams)
    assert {k: v for k, v in after.items() if str(v) != str(before[k])} == {}


def test_set_style_applies_rcparams():
    with matplotlib.rc_context():
        viz.set_style()
        assert matplotlib.rcParams["figure.dpi"] == 110
        assert matplotlib.rcParams["axes.grid"] is True


def test_genre_palette_deterministic_and_distinct():
    names = ["ukiyo_e", "baroque", "renaissance", "art_nouveau", "post_impressionism"]
    pal = viz.genre_palette(names)
    assert list(pal) == sorted(names)
    assert pal == viz.genre_palette(list(reversed(names)) + names)  # order and repeats don't matter
    assert pal["art_nouveau"] == viz.OKABE_ITO[0]  # first sorted name, first colour
    assert len(set(pal.values())) == len(pal)
    big = viz.genre_palette([f"g{i:02d}" for i in range(30)])
    assert len(set(big.values())) == 30  # Okabe-Ito, then Tol bright, then generated
    assert list(big.values())[7] == viz.TOL_BRIGHT[0]


@pytest.mark.parametrize("bad", ["baroque", []])
def test_genre_palette_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="genres"):
        viz.genre_palette(bad)


def test_artist_colors_share_hue_and_vary_lightness():
    a2g = {
        "Rembrandt": "baroque",
        "Rubens": "baroque",
        "Vermeer": "baroque",
        "Caravaggio": "baroque",
        "Hokusai": "ukiyo_e",
        "Hiroshige": "ukiyo_e",
        "Raphael": "renaissance",
    }
    cols = viz.artist_colors(a2g)
    assert cols == viz.artist_colors(dict(reversed(list(a2g.items()))))
    assert list(cols) == sorted(a2g)
    pal = viz.genre_palette(a2g.values())
    assert len(set(cols.values())) == len(cols)
    for genre in set(a2g.values()):
        members = sorted(a for a, g in a2g.items() if g == genre)
        base_h, _, _ = colorsys.rgb_to_hls(*to_rgb(pal[genre]))
        hls = [colorsys.rgb_to_hls(*cols[a]) for a in members]
        for h, _, _ in hls:
            assert min(abs(h - base_h), 1 - abs(h - base_h)) < 0.01
        lights = [lum for _, lum, _ in hls]
        if len(members) > 1:
            assert np.all(np.diff(lights) > 0.05)  # sorted names get increasing lightness
            assert lights[0] == pytest.approx(0.35, abs=1e-6) and lights[-1] == pytest.approx(0.7, abs=1e-6)
        else:
            assert to_rgb(pal[genre]) == pytest.approx(cols[members[0]])


# --------------------------------------------------------------------------- #
# Static style map
# --------------------------------------------------------------------------- #


def test_style_map_hulls_stars_and_degenerate_genres(degenerate_map, tmp_path):
    pts, artists, genres, ids = degenerate_map
    fig, ax = plt.subplots()
    out = viz.style_map(ax, pts, artists, genres, ids=ids, title="genres separate", artist_legend=True)
    assert out is ax
    assert _title(ax) == "genres separate"
    assert ax.get_xlabel() == "component 1" and ax.get_ylabel() == "component 2"
    assert ax.get_aspect() == 1.0

    genres_a = np.asarray(genres)
    pal = viz.genre_palette(genres)
    hulls = _hulls(ax)
    assert sorted(hulls) == ["baroque", "ukiyo_e"]  # one per genre with >= 3 non-collinear points
    assert len([p for p in ax.patches if isinstance(p, Polygon)]) == 2
    for g, patch in hulls.items():
        assert patch.get_facecolor()[:3] == pytest.approx(to_rgb(pal[g]))
        assert patch.get_facecolor()[3] == pytest.approx(0.15)
        path = Path(patch.get_xy())
        assert np.all(path.contains_points(pts[genres_a == g]))  # the hull holds all its points
    degenerate = {ln.get_gid() for ln in ax.lines if isinstance(ln, Line2D) and ln.get_gid()}
    assert degenerate == {"hull-degenerate:renaissance", "hull-degenerate:art_nouveau"}

    stars = _collection(ax, "stars")
    names = sorted(set(artists))
    artists_a = np.asarray(artists)
    expected = np.stack([pts[artists_a == a].mean(axis=0) for a in names])
    np.testing.assert_allclose(stars.get_offsets(), expected, rtol=0, atol=1e-12)
    cols = viz.artist_colors(dict(zip(artists, genres)))
    np.testing.assert_allclose(stars.get_facecolors()[:, :3], [cols[a] for a in names])
    points = _collection(ax, "points")
    np.testing.assert_allclose(points.get_offsets(), pts)
    np.testing.assert_allclose(points.get_facecolors()[:, :3], [cols[a] for a in artists])
    assert {t.get_text() for t in ax.texts} == set(ids)

    path = tmp_path / "map.png"
    fig.savefig(path)
    assert path.stat().st_size > 1000


def test_style_map_hull_matches_scipy():
    from scipy.spatial import ConvexHull

    rng = np.random.default_rng(1)
    pts = rng.normal(size=(30, 2))
    fig, ax = plt.subplots()
    viz.style_map(ax, pts, ["a"] * 30, ["g"] * 30, show_stars=False, legend=False)
    verts = _hulls(ax)["g"].get_xy()
    hull_pts = pts[ConvexHull(pts).vertices]
    # every reference hull vertex lies inside the drawn (padded) hull, close to its boundary
    assert np.all(Path(verts).contains_points(hull_pts))
    pad = 0.03 * np.ptp(pts, axis=0).max()
    dist = np.min(np.linalg.norm(verts[:, None] - hull_pts[None], axis=2), axis=1)
    assert dist.max() <= pad * 1.0001


@pytest.mark.parametrize(
    "pts, genres",
    [
        (np.zeros((1, 2)), ["g"]),  # one point
        (np.ones((4, 2)), ["g"] * 4),  # identical points
        (np.array([[0, 0], [1, 1], [2, 2], [0, 0]]), ["g"] * 4),  # collinear with a duplicate
        (np.array([[0, 0], [1e-14, 0], [0, 1e-14], [5, 5]]), ["g"] * 4),  # nearly degenerate
    ],
)
def test_style_map_never_crashes_on_degenerate_input(pts, genres):
    fig, ax = plt.subplots()
    artists = [f"a{i % 2}" for i in range(len(pts))]
    viz.style_map(ax, pts, artists, genres)
    fig.canvas.draw()
    assert len(_collection(ax, "stars").get_offsets()) == len(set(artists))


def test_style_map_options_and_title_untouched():
    pts = np.array([[0, 0], [1, 0], [0, 1], [1, 1.0]])
    fig, ax = plt.subplots()
    viz.style_map(
        ax, pts, list("abab"), ["g"] * 4, show_hulls=False, show_stars=False, legend=False, xlabel="PC 1", ylabel="PC 2"
    )
    assert _hulls(ax) == {} and ax.get_legend() is None and _title(ax) == ""
    assert not [c for c in ax.collections if c.get_gid() == "stars"]
    assert ax.get_xlabel() == "PC 1"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(points=np.zeros((3, 3))), r"shape \(n_samples, 2\)"),
        (dict(artists=["a", "b"]), "one entry per point"),
        (dict(genres=["g", "h", "h"]), "appears in two genres"),
        (dict(points=np.array([[0, 0], [1, np.nan], [2, 2]])), "NaN"),
        (dict(ids=["x"]), "ids"),
        (dict(hull_alpha=2.0), "hull_alpha"),
    ],
)
def test_style_map_rejects_bad_input(kwargs, match):
    args = dict(points=np.arange(6.0).reshape(3, 2), artists=["a", "a", "b"], genres=["g", "g", "h"])
    args.update(kwargs)
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match=match):
        viz.style_map(ax, args.pop("points"), args.pop("artists"), args.pop("genres"), **args)


def test_style_maps_shared_colours_and_legend(degenerate_map, tmp_path):
    pts, artists, genres, _ = degenerate_map
    keep = np.asarray(genres) != "ukiyo_e"
    fig = viz.style_maps(
        {
            "LoRA": (pts, artists, genres),
            "encoder": (pts[keep] * 2, list(np.asarray(artists)[keep]), list(np.asarray(genres)[keep])),
            "other": (pts[:, ::-1], artists, genres),
        },
        ncols=2,
        suptitle="The maps agree",
    )
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [_title(ax) for ax in visible] == ["LoRA", "encoder", "other"]
    assert fig.get_suptitle() == "The maps agree"
    assert len(fig.legends) == 1
    cols = viz.artist_colors(dict(zip(artists, genres)))
    for ax in visible:  # colours from the union of panels, so equal across panels
        stars = _collection(ax, "stars")
        names = sorted({a for a, k in zip(artists, keep) if k or _title(ax) != "encoder"})
        np.testing.assert_allclose(stars.get_facecolors()[:, :3], [cols[a] for a in names])
    path = tmp_path / "maps.png"
    fig.savefig(path)
    assert path.stat().st_size > 1000


# --------------------------------------------------------------------------- #
# Interactive map
# --------------------------------------------------------------------------- #


def test_interactive_style_map_offline_with_hover(degenerate_map):
    pts, artists, genres, ids = degenerate_map
    page = viz.interactive_style_map(pts, artists, genres, ids, title="Hover a point")
    assert page.lstrip().lower().startswith("<html") or "<!doctype html" in page[:200].lower()
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", page, flags=re.I)
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js inline
    for i, a, g in zip(ids, artists, genres):
        assert f"artist: {a}" in page and f"genre: {g}" in page and f"LoRA id: {i}" in page
    assert '"fill":"toself"' in page.replace(" ", "")
    assert '"symbol":"star"' in page.replace(" ", "")
    assert page == viz.interactive_style_map(pts, artists, genres, ids, title="Hover a point")  # deterministic


# --------------------------------------------------------------------------- #
# Other figures
# --------------------------------------------------------------------------- #


def test_image_grid_rows_and_crisp_small_images(tmp_path):
    rng = np.random.default_rng(0)
    rows = {
        "training images": rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8),
        "generated (T=25, w=3)": rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
        "large": rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8),
    }
    fig = viz.image_grid(rows, title="Generated images copy the style", max_cols=8)
    grid = np.array(fig.axes).reshape(3, -1)
    assert grid.shape == (3, 8)  # one axes row per entry, capped at max_cols
    assert [ax.get_ylabel() for ax in grid[:, 0]] == list(rows)
    assert [sum(len(ax.images) for ax in row) for row in grid] == [5, 8, 2]
    assert grid[0, 0].images[0].get_interpolation() == "nearest"
    np.testing.assert_array_equal(grid[1, 7].images[0].get_array(), rows["generated (T=25, w=3)"][7])
    assert fig.get_suptitle() == "Generated images copy the style"
    path = tmp_path / "grid.png"
    fig.savefig(path)
    assert path.stat().st_size > 1000


@pytest.mark.parametrize(
    "bad, match",
    [
        ({}, "non-empty"),
        ({"x": np.zeros((2, 8, 8, 2), np.uint8)}, "shape"),
        ({"x": np.full((1, 8, 8, 3), 2.0)}, r"\[0, 1\]"),
    ],
)
def test_image_grid_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        viz.image_grid(bad)


def test_curve_plot_bands(tmp_path):
    x = np.array([2, 4, 8, 16])
    mean, std = np.array([0.2, 0.4, 0.6, 0.7]), np.array([0.05, 0.04, 0.03, 0.02])
    fig, ax = plt.subplots()
    viz.curve_plot(
        ax,
        x,
        {"feed-forward": (mean, std), "self-attention": (mean / 2, None)},
        xlabel="PCA dimensions",
        ylabel="accuracy",
        title="Feed-forward wins",
    )
    assert _title(ax) == "Feed-forward wins" and ax.get_xlabel() == "PCA dimensions"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), mean)
    assert len(ax.collections) == 1  # one band: the second series has no std
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx((mean - std).min())
    assert band[:, 1].max() == pytest.approx((mean + std).max())
    fig.savefig(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="shape"):
        viz.curve_plot(ax, x, {"bad": (mean[:2], None)}, xlabel="x", ylabel="y")


def test_curve_plot_chance_line():
    fig, ax = plt.subplots()
    viz.curve_plot(ax, [10, 25, 50], {"w = 3": ([0.1, 0.2, 0.1], None)}, xlabel="T", ylabel="top-1", chance=1 / 27)
    line = [ln for ln in ax.lines if ln.get_label() == "chance"]
    assert len(line) == 1 and np.allclose(line[0].get_ydata(), 1 / 27)
    assert "chance" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)


def test_loss_plot_moving_average(tmp_path):
    rng = np.random.default_rng(0)
    y = list(1.0 / np.arange(1, 201) + rng.normal(0, 0.05, 200))
    fig, ax = plt.subplots()
    viz.loss_plot(ax, {"lora-0": y, "lora-1": y[:100]}, smooth=10, title="Loss falls")
    raw, smooth = ax.lines[0].get_ydata(), ax.lines[1].get_ydata()
    np.testing.assert_allclose(raw, y)
    # brute-force trailing mean over full windows only (steps 10..200): no bend where the window fills
    ref = np.array([np.mean(y[i - 9 : i + 1]) for i in range(9, 200)])
    np.testing.assert_allclose(smooth, ref)
    np.testing.assert_array_equal(ax.lines[1].get_xdata(), np.arange(10, 201))
    assert _title(ax) == "Loss falls" and ax.get_legend() is not None
    fig.savefig(tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="smooth"):
        viz.loss_plot(ax, {"a": y}, smooth=0)


def test_loss_plot_reference_level():
    fig, ax = plt.subplots()
    viz.loss_plot(ax, {"lora": [0.5, 0.4, 0.3]}, smooth=1, reference={"base model": 0.45})
    (curve, level) = ax.lines
    np.testing.assert_allclose(level.get_ydata(), [0.45, 0.45])
    assert level.get_linestyle() == "--"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lora", "base model"]
    with pytest.raises(ValueError, match="reference"):
        viz.loss_plot(ax, {"lora": [0.5]}, reference={"base model": float("nan")})
    plt.close(fig)


def test_bar_table_grouped_with_errorbars(tmp_path):
    rows = [
        dict(descriptor=d, level=lv, ari=v, std=s)
        for d, lv, v, s in [
            ("concat", "artist", 0.5, 0.1),
            ("concat", "genre", 0.3, 0.05),
            ("delta", "artist", 0.6, 0.0),
            ("delta", "genre", -0.1, 0.02),
            ("gram", "artist", 0.7, float("nan")),
        ]
    ]
    fig, ax = plt.subplots()
    viz.bar_table(
        ax,
        rows,
        value="ari",
        group="descriptor",
        hue="level",
        title="Gram clusters best",
        errorbars="std",
        annotate=True,
    )
    bars = [p for p in ax.patches if p.get_height() != 0 or p.get_width() > 0]
    heights = sorted(round(p.get_height(), 6) for p in bars)
    assert heights == sorted([0.5, 0.3, 0.6, -0.1, 0.7])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["concat", "delta", "gram"]
    assert _title(ax) == "Gram clusters best" and ax.get_legend().get_title().get_text() == "level"
    from matplotlib.container import BarContainer, ErrorbarContainer

    assert len([c for c in ax.containers if isinstance(c, BarContainer)]) == 2  # one per hue
    errs = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    # NaN std (gram/artist) gets no error bar: 4 bars with error bars, their segments span value +- std
    segs = np.concatenate([c.lines[2][0].get_segments() for c in errs])
    spans = sorted((round(s[0, 1], 6), round(s[1, 1], 6)) for s in segs)
    assert spans == sorted([(0.4, 0.6), (0.25, 0.35), (0.6, 0.6), (-0.12, -0.08)])
    fig.savefig(tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="aggregate"):
        viz.bar_table(ax, rows + rows[:1], value="ari", group="descriptor", hue="level")
    with pytest.raises(ValueError, match="lacks column"):
        viz.bar_table(ax, rows, value="nmi", group="descriptor", hue="level")


def test_similarity_heatmap_takes_any_format_and_never_writes_minus_zero():
    import pandas as pd

    from lorastyle.book.viz import similarity_heatmap

    M = np.array([[1.0, -0.001], [-0.001, 0.5]])
    fig, ax = plt.subplots()
    similarity_heatmap(ax, pd.DataFrame(M, index=["a", "b"]), fmt="{:.0%}")
    assert [t.get_text() for t in ax.texts] == ["100%", "0%", "0%", "50%"]
    plt.close(fig)


def test_similarity_heatmap_writes_every_value_and_marks_missing_pairs():
    import pandas as pd

    from lorastyle.book.viz import similarity_heatmap

    M = np.array([[1.0, 0.25, np.nan], [0.25, 1.0, -0.5], [np.nan, -0.5, 1.0]])
    fig, ax = plt.subplots()
    similarity_heatmap(ax, pd.DataFrame(M, index=["a", "b", "c"]), title="t")
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["1.00", "0.25", "n/a", "0.25", "1.00", "-0.50", "n/a", "-0.50", "1.00"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert ax.get_title() == "t"
    data = ax.images[0].get_array()
    assert data.mask[0, 2] and not data.mask[0, 1]  # NaN cells are masked (drawn grey)
    with pytest.raises(ValueError, match="square"):
        similarity_heatmap(ax, np.ones((2, 3)))
    plt.close(fig)


def test_interval_plot_draws_each_interval_and_chance():
    rows = [
        {"name": "LoRA concat", "kind": "weights", "top1": 0.5, "lo": 0.4, "hi": 0.6, "chance": 0.1},
        {"name": "colour", "kind": "baseline", "top1": 0.2, "lo": 0.1, "hi": 0.35, "chance": 0.1},
        {"name": "LoRA gram", "kind": "weights", "top1": 0.45, "lo": 0.3, "hi": 0.5, "chance": 0.05},
    ]
    fig, ax = plt.subplots()
    viz.interval_plot(ax, rows, value="top1", low="lo", high="hi", label="name", chance="chance", group="kind")
    # one horizontal segment per row from lo to hi, at the row's height (first row on top)
    segments = [seg for coll in ax.collections for seg in coll.get_segments()]
    spans = sorted((round(s[0][0], 6), round(s[1][0], 6), round(s[0][1], 6)) for s in segments)
    assert spans == sorted([(0.4, 0.6, 2.0), (0.1, 0.35, 1.0), (0.3, 0.5, 0.0)])
    at = {round(y): t.get_text() for y, t in zip(ax.get_yticks(), ax.get_yticklabels())}
    assert at == {2: "LoRA concat", 1: "colour", 0: "LoRA gram"}
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--" and len(line.get_xdata())]
    assert sorted(line.get_xdata()[0] for line in dashed) == [0.05, 0.1, 0.1]
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"weights", "baseline", "chance"}
    plt.close(fig)
    with pytest.raises(ValueError, match="not inside"):
        viz.interval_plot(plt.subplots()[1], [dict(rows[0], lo=0.55)], value="top1", low="lo", high="hi", label="name")


def test_overlay_plot_draws_both_maps_and_a_line_per_item():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lorastyle.book.viz import overlay_plot

    a = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    fig, ax = plt.subplots()
    overlay_plot(ax, a, a + 0.1, ["x", "y", "y"], ["g1", "g1", "g1"], title="t")
    assert len(ax.lines) == 3 and len(ax.collections) == 2
    np.testing.assert_allclose(ax.collections[1].get_offsets(), a + 0.1)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["weights", "images"]
    with pytest.raises(ValueError, match="one artist"):
        overlay_plot(ax, a, a[:2], ["x"] * 3, ["g"] * 3)
    plt.close(fig)
