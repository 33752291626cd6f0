"""The ``lorastyle`` command: inspect LoRA files, index a collection, find similar styles.

Contract (other tools call it exactly so):

* ``lorastyle inspect FILE --json``: one JSON object with ``format``, ``base``,
  ``parts``, ``n_modules``, ``ranks``, ``alphas``, ``dtype``.
* ``lorastyle index DIR -o INDEX [--descriptor concat|delta|gram] [--components N]
  [--scheduler ADDRESS | --workers N]``: embeds every LoRA file under DIR (reading them on a
  Dask cluster with ``--scheduler`` or ``--workers``); bad files are skipped and reported; exit 0
  when at least two files were embedded together. The last stderr line says
  how many files came from the cache.
* ``lorastyle similar INDEX QUERY [-k K] --json``: ``[{"path", "score"}, ...]``, best first.

Bad input: one line ``error: FILE: reason`` on stderr per file, exit 2.

``index`` is safe to interrupt and to re-run: the index file is replaced
atomically; files already read are kept in ``INDEX.cache/`` (one entry per
file content, see :class:`lorastyle.index.LoraCache`), so a re-run reads only
new or changed files and refits; ``--no-cache`` turns that off. Only one
``index`` run writes a given INDEX at a time: a second one is refused at once
with ``error: INDEX: another lorastyle index is writing it`` and exit 2
(``INDEX.lock``), rather than queued, so that a script sees the conflict.

File names that are not valid UTF-8 are printed with their original bytes on
text output, and as ``\\udcXX`` escapes (Python's ``surrogateescape``, which
``os.fsencode`` turns back into the bytes) in JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import warnings

from . import __version__
from .descriptors import BLOCKS, DEFAULT_DESCRIPTOR, DESCRIPTORS, LAYER_TYPES, PARTS, ModuleSelection
from .errors import LorastyleError
from .io.formats import BASE_FAMILIES, load_lora

# lorastyle.index.search.SCORERS, spelled here so that `lorastyle inspect` does not import the index
# (tests/test_cli.py checks the two are equal)
SCORERS = ("cosine", "pca")

__all__ = ["main", "build_parser", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED"]

EXIT_BAD_INPUT = 2
# similar's default re-ranking: the 10 best-scored files scored exactly, while they add up to at most 1 GiB
RERANK_DEFAULT = 10
RERANK_DEFAULT_BYTES = 1 << 30
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
# Optional dependencies (top-level module) -> the extra of pyproject.toml that installs them: a command
# that needs one says which `pip install 'lorastyle[EXTRA]'` brings it (tests/test_cli.py checks pyproject)
OPTIONAL_EXTRAS = {"plotly": "map", "PIL": "map", "umap": "map", "dask": "cluster", "distributed": "cluster"}


def _error(path, reason: str) -> None:
    _print(f"error: {path}: {reason}", sys.stderr)


def _print(text: str, stream=None) -> None:
    """print(), above any progress bar, and a file name that is not UTF-8 (surrogates) cannot crash it."""
    stream = sys.stdout if stream is None else stream
    tqdm = sys.modules.get("tqdm")
    with tqdm.tqdm.external_write_mode(file=stream) if tqdm is not None else contextlib.nullcontext():
        try:
            print(text, file=stream)
        except UnicodeEncodeError:
            # Write the name's original bytes, as ls does, where the stream has a byte buffer.
            data = (text + "\n").encode(getattr(stream, "encoding", None) or "utf-8", "surrogateescape")
            buffer = getattr(stream, "buffer", None)
            if buffer is not None:
                stream.flush()
                buffer.write(data)
                buffer.flush()
            else:
                print(text.encode("utf-8", "backslashreplace").decode("ascii", "replace"), file=stream)


def _inspect(args) -> int:
    """What the file is, from its header (:func:`lorastyle.io.metadata.describe_file`) and its sidecars.

    The sidecar files LoRA managers keep next to it (:mod:`lorastyle.io.sidecars`) add facts, each
    shown with its source. ``--check`` also loads every tensor as ``index`` does, and so refuses NaN
    or Inf weights; it says what it checked in one line (on stderr with ``--json``).
    """
    from .io.metadata import describe_file, format_description
    from .io.sidecars import describe_sidecars

    info = describe_file(args.file, hashes=not args.no_hashes)
    info.update(describe_sidecars(args.file, info, sha256=info["sha256"]))
    checked = None
    if args.check:
        lora = load_lora(args.file)
        info["check"] = {"passed": True, "tensors": info["n_tensors"], "modules": len(lora.modules)}
        checked = (
            f"check passed: read all {_count(info['n_tensors'], 'tensor')} as index does; the factors of "
            f"{_count(len(lora.modules), 'module')} fit together and hold no NaN or Inf"
        )
    if args.json:
        print(json.dumps(info))
        if checked:
            _print(checked, sys.stderr)
    else:
        for line in format_description(info):
            _print(line)
        if checked:
            _print(checked)
    return 0


def _count(n: int, word: str) -> str:
    """``1 file``, ``2 files``: a count and its noun, singular or plural."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _progress(items, *, desc: str, total: int | None = None):
    """A progress bar on stderr named for its pass; none where stderr is not a terminal (a log gets lines)."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, unit="file", file=sys.stderr, disable=None, leave=False)


def _index(args) -> int:
    from .index import NotEnoughLorasError, index_folder

    select = None
    if args.layers or args.blocks or args.parts:
        select = ModuleSelection(parts=args.parts, layers=args.layers, blocks=args.blocks)
    cluster = contextlib.nullcontext()
    if args.scheduler or args.workers:
        from .index.distributed import cluster_client

        cluster = cluster_client(scheduler=args.scheduler, workers=args.workers)
    try:
        with cluster as client:
            run = index_folder(
                args.dir,
                args.output,
                descriptor=args.descriptor,
                n_components=args.components or 8,
                select=select,
                base=args.base,
                use_cache=not args.no_cache,
                calibrate=not args.no_calibration,
                progress=_progress,
                client=client,
            )
    except NotEnoughLorasError as exc:
        for path, reason in exc.skipped:
            _error(path, reason)
        _error(exc.path, exc.reason)
        return EXIT_BAD_INPUT
    except OSError as exc:  # the index, its lock or its folder cannot be written
        _error(exc.filename or args.output, f"cannot write: {exc.strerror or exc}")
        return EXIT_BAD_INPUT
    _report_walk(run)
    index, stats = run.index, run.stats
    for group in index.groups.values():
        emb = group.embedding
        pca = f"PCA of {_count(emb.n_components, 'component')}" if emb is not None else "no PCA (fewer than 3 files)"
        if group.ann is not None:
            pca += f"; ANN index of {group.ann.centroids_.shape[0]} lists, recall@10 {group.ann.recall_:.3f}"
        _print(f"{group.key}: {len(group.records)} files ({args.descriptor}; {pca})", sys.stderr)
        if args.components and (emb is None or emb.n_components < args.components):
            allowed = emb.n_components if emb is not None else 0
            _print(
                f"warning: {group.key}: {len(group.records)} files allow {allowed} PCA components, "
                f"not --components {args.components}",
                sys.stderr,
            )
    walked = ""
    if run.unlisted:
        walked += f"; {_count(len(run.unlisted), 'folder')} could not be listed"
    if run.repeated:
        walked += f"; {_count(len(run.repeated), 'folder')} reached again through a link, read once"
    _print(
        f"indexed {len(index.paths)} of {_count(run.n_files, 'file')} in {len(index.groups)} base "
        f"famil{'y' if len(index.groups) == 1 else 'ies'}; skipped {len(run.skipped)}{walked}; read {stats.read}, "
        f"{stats.reused} unchanged since the last run, {stats.from_cache} from the cache; "
        + (f"wrote {args.output}" if run.written else f"{args.output} is up to date (not written again)"),
        sys.stderr,
    )
    return 0


def _report_walk(run) -> None:
    """The files a folder's indexing skipped and the folders it could not list (``error:`` lines), and
    the folders it reached again through links (``note:`` lines: not errors, nothing was skipped)."""
    for path, reason in run.skipped + run.unlisted:
        _error(path, reason)
    for link, first in run.repeated:
        _print(
            f"note: {link}: the same folder as {first}, already walked (through a link): its files are read once, "
            "from there",
            sys.stderr,
        )


def _similar(args) -> int:
    import os

    from .index import LoraIndex
    from .index.records import read_query

    for path, what in ((args.index, "INDEX is an index file"), (args.query, "QUERY is one LoRA file")):
        if os.path.isdir(path):  # the reader would only say "not a regular file"
            _error(path, f"is a folder: similar's {what} (to index a folder: lorastyle index {path} -o INDEX)")
            return EXIT_BAD_INPUT
    from .index.freshness import FileChecks

    index = LoraIndex.load(args.index)
    checks = FileChecks()  # the files ranked for this query, not the whole library
    # one read of the query: its record, and the loaded file for the exact re-ranking
    query, query_lora = read_query(
        args.query, sketcher=index.sketcher, descriptor=index.descriptor, select=index.select
    )
    rerank, budget = args.rerank, None
    if rerank is None:  # the default: the best files rescored exactly, within a budget of bytes read again
        rerank, budget = RERANK_DEFAULT, RERANK_DEFAULT_BYTES
    if args.scorer != "cosine" or index.descriptor not in ("gram", "delta"):
        rerank = 0
    results = index.similar(
        query,
        k=args.k,
        scorer=args.scorer,
        rerank=rerank,
        query_lora=query_lora,
        rerank_budget=budget,
        keep=checks.keep,
    )
    fresh = checks.freshness
    _report_stale(args.index, fresh, ranked=True)
    changed = set(fresh.changed)
    for r in results:
        if r["path"] in changed:
            r["stale"] = True
    if args.json:
        print(json.dumps(results))
    else:
        from .index.verdicts import verdict_text

        width = max((len(verdict_text(r)) for r in results), default=0)
        for r in results:
            exact = "  (exact)" if r.get("exact") else ""
            said = f"  {verdict_text(r):<{width}}" if width else ""
            _print(f"{r['score']:+.4f}{said}{exact}  {r['path']}{_STALE if r.get('stale') else ''}")
    return 0


# How a result of a file that changed since it was indexed is marked (its record may be of other weights).
_STALE = "  (changed since indexed)"
# At most this many paths of each kind are listed under a stale index's warning.
_MAX_LISTED = 50


def _list_paths(label: str, paths: list) -> None:
    """``  label: path`` lines on stderr, at most :data:`_MAX_LISTED`, then how many more."""
    for path in paths[:_MAX_LISTED]:
        _print(f"  {label}: {path}", sys.stderr)
    if len(paths) > _MAX_LISTED:
        _print(f"  ... and {len(paths) - _MAX_LISTED} more {label}", sys.stderr)


def _report_stale(index_path, fresh, *, ranked: bool = False) -> None:
    """One warning line for the files of an index that are gone or changed since it was made, then their paths.

    ``ranked``: only the files a query ranked were checked (:class:`lorastyle.index.freshness.FileChecks`).
    """
    if not fresh.stale:
        return
    said = []
    if fresh.gone:
        said.append(f"{len(fresh.gone)} {'is' if len(fresh.gone) == 1 else 'are'} gone (left out of the results)")
    if fresh.changed:
        said.append(
            f"{len(fresh.changed)} changed since indexed (size or mtime; results of "
            f"{'it' if len(fresh.changed) == 1 else 'them'} are marked '{_STALE.strip()}')"
        )
    _print(
        f"warning: {index_path}: of {'the ' if ranked else 'its '}{_count(fresh.n_files, 'file')}"
        f"{' ranked for this query' if ranked else ''}, {' and '.join(said)}; re-run "
        "`lorastyle index` on its folder, or give the folder with --index, to refresh it",
        sys.stderr,
    )
    _list_paths("gone", fresh.gone)
    _list_paths("changed", fresh.changed)


def _report_refresh(index_path, source, refresh) -> None:
    """One note line for what re-indexing a folder into a kept index changed, then the changed and gone paths."""
    if refresh is None or not refresh.any:
        return
    _print(
        f"note: {index_path}: refreshed from {source}: {len(refresh.new)} new, {len(refresh.changed)} changed "
        f"(read again), {len(refresh.gone)} gone (dropped from the index)",
        sys.stderr,
    )
    _list_paths("changed", refresh.changed)
    _list_paths("gone", refresh.gone)


def _duplicates(args) -> int:
    """Same-weights groups and near-duplicate pairs of a folder or an index (:mod:`lorastyle.index.duplicates`).

    Each group names the copy to keep and why (:func:`lorastyle.index.keep.choose_copy`); ``--script``
    writes the shell script that sets the other copies aside (:mod:`lorastyle.index.duplicates_script`).
    """
    import os

    from .index.duplicates import find_duplicates

    if args.script is not None:
        folder = os.path.dirname(os.path.abspath(args.script)) or "."
        if os.path.isdir(args.script):
            _error(args.script, "cannot write the script: it is a folder")
            return EXIT_BAD_INPUT
        if not os.path.isdir(folder):
            _error(args.script, "cannot write the script: its folder does not exist")
            return EXIT_BAD_INPUT
    elif args.to is not None or args.link:
        _error("--to" if args.to is not None else "--link", "only with --script PATH (see lorastyle duplicates --help)")
        return EXIT_BAD_INPUT
    source = _source_index(args)
    if source is None:
        return EXIT_BAD_INPUT
    index, changed, _ = source  # the skipped files were reported as errors already
    report = find_duplicates(index, near_threshold=args.threshold, changed=changed, progress=_progress)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        _print_duplicates(report)
    n_files = sum(len(g["paths"]) for g in report.same_weights)
    extra = n_files - len(report.same_weights)
    _print(
        f"{_count(len(report.same_weights), 'group')} of files with the same weights ({_count(n_files, 'file')}, "
        f"{extra} extra {'copy' if extra == 1 else 'copies'}); "
        f"{_count(len(report.near), 'near-duplicate pair')}; {_count(len(index.records), 'file')} compared",
        sys.stderr,
    )
    _print(
        "near-duplicate threshold: "
        + "; ".join(f"{base} {t['threshold']:.3f} ({t['why']})" for base, t in report.thresholds.items()),
        sys.stderr,
    )
    if args.script is not None:
        from .index.duplicates_script import DEFAULT_FOLDER, duplicates_script
        from .io.atomic import atomic_write

        command = "lorastyle " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["duplicates"] else "lorastyle duplicates"
        to = args.to if args.to is not None else DEFAULT_FOLDER
        text = duplicates_script(index, report, to=to, link=args.link, command=command)
        try:
            atomic_write(args.script, text.encode("utf-8", "surrogateescape"))
        except OSError as exc:
            _error(args.script, f"cannot write the script: {exc.strerror or exc}")
            return EXIT_BAD_INPUT
        moved = sum(len(g["paths"]) - 1 for g in report.same_weights if not g["stale"])
        stale = sum(bool(g["stale"]) for g in report.same_weights)
        _print(
            f"wrote {args.script}: sets aside {moved} {'copy' if moved == 1 else 'copies'} into {os.path.abspath(to)}"
            + (" with a hard link to the kept file in each one's place" if args.link else "")
            + (f"; left out {_count(stale, 'group')} with a file changed since indexed" if stale else "")
            + f"; nothing is changed until you review it and run: sh {args.script}",
            sys.stderr,
        )
    return 0


def _strength_text(pair: dict) -> str:
    """`` (same direction: B is A at strength x0.5)`` for a near-duplicate pair that is one update at
    two strengths (the weaker named first, by file name), else ``""``."""
    import os

    strength = pair.get("strength")
    if not strength:
        return ""
    first, second = (_display(os.path.basename(p)) for p in pair["paths"])
    if strength["relation"] == "same direction":
        f = strength["factor"]
        weaker, stronger, f = (second, first, f) if f <= 1 else (first, second, 1 / f)
        return f" (same direction: {weaker} is {stronger} at strength x{f:.3g})"
    lo, hi = strength["factor_range"]
    return f" (same directions per module: {second} is {first} at strengths x{lo:.3g} to x{hi:.3g} by module)"


def _display(name: str) -> str:
    """A file name as text (undecodable bytes shown as U+FFFD)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _print_duplicates(report) -> None:
    """The report as text: each group with its kept copy first and why, then the near-duplicate pairs."""
    for group in report.same_weights:
        how = "identical files" if group["identical_bytes"] else f"same weights (score {group['score']:.4f})"
        _print(f"{how}, {group['base']}; keep the first ({group['keep_reason']}):")
        stale = set(group["stale"])
        for path in [group["keep"]] + [p for p in group["paths"] if p != group["keep"]]:
            _print(f"  {path}{_STALE if path in stale else ''}")
    for pair in report.near:
        what = _strength_text(pair)
        _print(f"near-duplicates, score {pair['score']:.3f}, {pair['base']}{what}:")
        stale = set(pair["stale"])
        for path in pair["paths"]:
            _print(f"  {path}{_STALE if path in stale else ''}")


def _source_index(args):
    """The index a command works on, its files that changed since indexed, and the files it skipped (path,
    reason): SOURCE loaded if it is an index file, else SOURCE indexed now.

    An index file's files are checked (:func:`lorastyle.index.freshness.check_files`): gone ones are
    left out, and with the changed ones named in a warning. A folder is indexed into ``--index PATH``
    when given (kept, and refreshed: new and changed files read, gone ones dropped, and said so), else
    into a temporary index; bad files are reported as ``index`` reports them. None after an error line.
    """
    import os
    import tempfile

    from .index import LoraIndex, NotEnoughLorasError, index_folder
    from .index.freshness import check_files, without_files

    if not os.path.exists(args.source):
        _error(args.source, "no such file or folder")
        return None
    if not os.path.isdir(args.source):
        if args.index is not None:
            _error("--index", f"only with a folder SOURCE: {args.source} is an index file")
            return None
        index = LoraIndex.load(args.source)
        fresh = check_files(index)
        _report_stale(args.source, fresh)
        return without_files(index, fresh.gone), fresh.changed, [(p, reason) for p, _, reason in index.skipped]
    with contextlib.ExitStack() as stack:
        if args.index is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="lorastyle-"))
            index_path, keep = os.path.join(tmp, "index.safetensors"), False
        else:
            index_path, keep = args.index, True
        try:
            run = index_folder(args.source, index_path, use_cache=keep, calibrate=keep, progress=_progress)
        except NotEnoughLorasError as exc:
            for path, reason in exc.skipped:
                _error(path, reason)
            _error(exc.path, exc.reason)
            return None
        except OSError as exc:  # the kept index, its lock or its folder cannot be written
            _error(exc.filename or index_path, f"cannot write: {exc.strerror or exc}")
            return None
    _report_walk(run)
    if keep:
        _report_refresh(args.index, args.source, run.refresh)
    return run.index, [], run.skipped


def _map(args) -> int:
    """One self-contained HTML page of a folder or an index (:mod:`lorastyle.lora_map`)."""
    import importlib.util
    import os

    from .io.atomic import atomic_write

    out = os.path.abspath(args.output)
    folder = os.path.dirname(out)
    if os.path.isdir(out):
        _error(args.output, "cannot write: it is a folder")
        return EXIT_BAD_INPUT
    if not os.path.isdir(folder):
        _error(args.output, "cannot write: its folder does not exist")
        return EXIT_BAD_INPUT
    if not os.access(folder, os.W_OK | os.X_OK):
        _error(args.output, "cannot write: permission denied in its folder")
        return EXIT_BAD_INPUT
    missing = [
        name for module, name in (("plotly", "plotly"), ("PIL", "pillow")) if not importlib.util.find_spec(module)
    ]
    if missing:  # the command line installs without them (pyproject's "map" extra has them)
        _error("map", f"needs {' and '.join(missing)}: pip install 'lorastyle[map]'")
        return EXIT_BAD_INPUT
    from . import lora_map

    source = _source_index(args)
    if source is None:
        return EXIT_BAD_INPUT
    index, changed, skipped = source
    if not index.groups:
        _error(args.source, "every indexed file is gone: re-run `lorastyle index` on its folder")
        return EXIT_BAD_INPUT
    data = lora_map.map_data(index, threshold=args.threshold, progress=_progress, base_models=args.base_model)
    if not data.groups:
        from .io.sidecars import file_facts

        found = sorted(
            {f["base_model"]["value"] for r in index.records if "base_model" in (f := file_facts(r.path, r.info))}
        )
        _error(
            "--base-model",
            f"no file's base model contains {' or '.join(map(repr, args.base_model))} "
            f"(base models of these files: {', '.join(found) if found else 'none named in their sidecars or headers'})",
        )
        return EXIT_BAD_INPUT
    page = lora_map.map_page(index, mark=args.mark, title=f"LoRA map of {args.source}", data=data, skipped=skipped)
    try:
        atomic_write(out, page)
    except OSError as exc:
        _error(args.output, f"cannot write: {exc.strerror or exc}")
        return EXIT_BAD_INPUT
    result = lora_map.map_json(index, data=data)
    changed = set(changed)
    for member in (m for g in result["groups"] for c in g["clusters"] for m in c["members"]):
        if member["path"] in changed:
            member["stale"] = True
    if args.json:
        print(json.dumps(result))
    n_clusters = sum(c["size"] > 1 for g in result["groups"] for c in g["clusters"])
    _print(
        f"mapped {_count(result['n_files'], 'file')} in {len(result['groups'])} base "
        f"famil{'y' if len(result['groups']) == 1 else 'ies'}: {n_clusters} clusters of 2 or more files at "
        f"score {', '.join(f'{g.threshold:.3f} ({g.key})' for g in data.groups)}; "
        f"{len(data.previews)} preview images; wrote {args.output} "
        f"({os.path.getsize(out) / 2**20:.1f} MiB)",
        sys.stderr,
    )
    return 0


def _score(text: str) -> float:
    """argparse type: a score (cosine) in [-1, 1], checked when the options are parsed."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not -1.0 <= value <= 1.0:  # False for nan too
        raise argparse.ArgumentTypeError(f"must be a score between -1 and 1, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with the command's error format: one ``error: OPTION: reason`` line, exit status 2."""

    def error(self, message: str):
        match = re.match(r"argument ([^:]+): (.*)", message, re.S)
        where, reason = (match.group(1).split("/")[0], match.group(2)) if match else (self.prog, message)
        _error(where, f"{reason} (see {self.prog} --help)")
        self.exit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lorastyle`` command."""
    parser = _Parser(prog="lorastyle", description="Map, cluster and search LoRA files by style.")
    parser.add_argument("--version", action="version", version=f"lorastyle {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "inspect",
        help="describe one LoRA file from its header and the sidecar files LoRA managers keep next to it: title, "
        "trigger words, base model, training, hashes, layout, ranks, alphas",
        description="Describe one LoRA file NAME.safetensors. Title, trigger words, base model, preferred "
        "weight, tags, notes and description are each shown with their source, the first of: NAME.json "
        "(AUTOMATIC1111's edit dialog), NAME.metadata.json (ComfyUI-Lora-Manager), NAME.civitai.info (Civitai "
        "Helper: the model's Civitai page), the file's header (what the trainer wrote). kohya's "
        "ss_training_comment is shown as a comment. A sidecar that names another sha256 than the file's is "
        "flagged.",
    )
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--no-hashes", action="store_true", help="read only the header and alphas: no sha256, AutoV1/2/3 (faster)"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="also read every tensor, as index does, and refuse NaN or Inf weights (default: header only)",
    )
    p.set_defaults(run=_inspect)

    p = sub.add_parser(
        "index",
        help="describe every LoRA file under a folder into an index (one small record per file)",
        description="Read every LoRA file under DIR once (links to folders are followed) and keep one small "
        "record per file: what it is, and a fixed-size sketch of its style descriptor. Files are grouped by base "
        "family (sd1, sd2, sdxl, flux, ...): each family is searched on its own. Bad files are reported, one "
        "'error: FILE: reason' line each, and the rest are indexed. A re-run reads only new or changed files.",
    )
    p.add_argument("dir")
    p.add_argument("-o", "--output", required=True, help="index file to write (its folder must exist)")
    p.add_argument(
        "--descriptor",
        choices=DESCRIPTORS,
        default=DEFAULT_DESCRIPTOR,
        help="gram (default): delta-W delta-W^T of every module, blind to the random initialisation, for files "
        "made by different people; delta: delta-W itself; concat: the paper's flattened A and B factors, "
        "meaningful only for files trained from one initialisation seed",
    )
    p.add_argument(
        "--base",
        choices=[b for b in BASE_FAMILIES if b != "unknown"],
        help="index only files of this base family (default: every family, each in its own group)",
    )
    p.add_argument(
        "--components",
        type=_positive_int,
        default=None,
        help="dimension of each family's PCA embedding, for maps and --scorer pca (default: 8, or "
        "fewer for a family of fewer than 10 files)",
    )
    p.add_argument("--parts", nargs="+", choices=PARTS, help="only these model parts")
    p.add_argument("--layers", nargs="+", choices=LAYER_TYPES, help="only these layer types")
    p.add_argument("--blocks", nargs="+", choices=BLOCKS, help="only these U-Net stages")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="read every file again and keep no INDEX.cache/ while running (default: files unchanged since the "
        "last run are not read, and a killed run resumes from INDEX.cache/)",
    )
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="skip the PCA's out-of-sample calibration (100 leave-one-out fits; for many thousands of files)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="read the files on the workers of the Dask scheduler at ADDRESS (tcp://host:8786, as `dask scheduler` "
        "prints it); every worker needs lorastyle installed and the files at the same paths",
    )
    where.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="read the files in N local worker processes (a Dask LocalCluster); default: in this process, each "
        "file's modules sketched on one thread per core (at most 4) while the next file is read",
    )
    p.set_defaults(run=_index)

    p = sub.add_parser(
        "similar",
        help="the indexed LoRAs closest in style to a query LoRA",
        description="Score every indexed file of the query's base family against the query. The score (cosine) is "
        "the cosine similarity of the two files' descriptors over the model parts both adapt: 1 for the same "
        "weights, about 0 for unrelated updates and for random ones of any rank, and the same whatever else is "
        "in the index. The 10 best-scored files are read again and scored exactly (marked '(exact)'), as long as "
        "they add up to at most 1 GiB (--rerank). Each result says what it is: 'same weights' (one sha256, or "
        "equal module norms and a score of 0.999 or more), 'same run (near-duplicate)' (a score at or above the "
        "family's near-duplicate threshold, as lorastyle duplicates prints it), 'related (p=...)' (p at most "
        "0.01) or 'nothing close (p=...)'. p is the fraction of pairs of files of the query's family in this "
        "index that score at least as high (1 + that count over 1 + the number of pairs): no labels needed, but "
        "a family of few files cannot reach a small p (15 files are 105 pairs: p >= 0.0094). A query file that "
        "is in the index is left out of its own results; other copies of it are not. The indexed files are "
        "checked (size and mtime): files gone since indexing are left out, and changed ones marked '(changed "
        "since indexed)'.",
    )
    p.add_argument("index")
    p.add_argument("query", help="a LoRA file, in the index or not")
    p.add_argument("-k", type=_positive_int, default=10, help="number of results (default: 10)")
    p.add_argument(
        "--scorer",
        choices=SCORERS,
        default="cosine",
        help="cosine (default): the descriptors' cosine, the same in any folder; pca: the cosine in the family's "
        "calibrated PCA embedding (the paper's method), which depends on what else is indexed (no verdict, "
        "no re-ranking)",
    )
    p.add_argument(
        "--rerank",
        type=_non_negative_int,
        metavar="N",
        help="read the N best-scored files again and score them exactly, not by their sketches (marked "
        "'(exact)'; with --scorer cosine and the gram or delta descriptor): real files of strangers score "
        "0.001-0.03, below the sketches' error. Default: 10, while the files add up to at most 1 GiB; 0: "
        "sketches only",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of {path, score, p_value, verdict, exact}, best first (verdict: same weights, same "
        "run, related or nothing close)",
    )
    p.set_defaults(run=_similar)

    p = sub.add_parser(
        "duplicates",
        help="files with the same weights, and near-duplicates (other versions of one model), apart",
        description="Same weights: every module's delta-W is the same, whatever the file's name, dtype (float16, "
        "bfloat16), key names, layout (kohya, diffusers/PEFT) or factorisation; byte-identical copies are said so. "
        "Near-duplicates: other pairs whose score reaches the threshold (checkpoints of one run, rank-resized "
        "copies, small fine-tunes); two versions of a model are never called the same weights; a pair that is one "
        "update at another strength says so, with the factor. Each group lists first the copy to keep, and why: "
        "the most metadata (sidecar facts, a preview image), then the most precise dtype, then the shallowest "
        "folder, then the oldest modification time, then the path. An index file's files are checked (size and "
        "mtime): gone ones are left out, changed ones marked.",
    )
    p.add_argument("source", help="a folder of LoRA files (indexed now) or an index file")
    p.add_argument(
        "--index",
        help="with a folder: keep its index here (reused next time: new and changed files read, gone dropped)",
    )
    p.add_argument(
        "--threshold",
        type=_score,
        default=None,
        help="near-duplicate score (default: calibrated on the wild benchmark, see `similar --help`)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print {same_weights (each with keep, keep_reason), near_duplicates (each with strength), "
        "near_threshold, thresholds (per family, with why)}",
    )
    p.add_argument(
        "--script",
        metavar="PATH",
        help="write a POSIX shell script to PATH that keeps one copy of each same-weights group and moves the "
        "others aside (never near-duplicates); it is not run: review it, then run it with sh",
    )
    p.add_argument(
        "--to",
        metavar="FOLDER",
        help="with --script: the folder the copies are moved into, under their paths relative to the files' "
        "common folder, with their sidecar files and previews (default: ./lorastyle-duplicates)",
    )
    p.add_argument(
        "--link",
        action="store_true",
        help="with --script: also put a hard link to the kept file at each moved copy's path (every path still "
        "loads the same weights; the space is freed when you delete the folder)",
    )
    p.set_defaults(run=_duplicates)

    p = sub.add_parser(
        "map",
        help="one self-contained HTML page of a folder of LoRAs (or an index): a map, clusters, previews",
        description="Place every file of each base family on a 2-D map (positions from the scores of "
        "`similar`, 1 - score as the distance), cluster near-copies (average linkage: files whose average "
        "score is above the threshold), and write one HTML page that works offline: the map with hover details "
        "and the preview images LoRA managers keep next to the files (NAME.preview.png, NAME.png, ...), and the "
        "cluster list. Titles, trigger words and base models are those `lorastyle inspect` shows: from the "
        "sidecar files LoRA managers keep next to each file, else from its header. SOURCE is an index file or a "
        "folder, which is indexed first (as `index` does).",
    )
    p.add_argument("source", help="an index file (from `lorastyle index`) or a folder of LoRA files")
    p.add_argument("-o", "--output", required=True, help="HTML page to write (its folder must exist)")
    p.add_argument("--json", action="store_true", help="also print the clusters as one JSON object")
    p.add_argument(
        "--threshold",
        type=_score,
        default=None,
        help="cluster files whose average score is at least this (default: each family's score from which "
        "similar calls two files related: calibrated where the family was, else p <= 0.01 under its own null)",
    )
    p.add_argument(
        "--index",
        default=None,
        help="with a folder SOURCE: keep its index in this file (a re-run then reads only new or changed files); "
        "default: a temporary index",
    )
    p.add_argument(
        "--base-model",
        action="append",
        metavar="NAME",
        help="map only the files whose base model contains NAME, ignoring case (repeat for several): the "
        "baseModel of their Civitai or Lora-Manager sidecar (Pony, Illustrious, NoobAI, SDXL 1.0 ...), else what "
        "their header names (ss_sd_model_name); see `lorastyle inspect` for a file's",
    )
    p.add_argument(
        "--mark",
        choices=("base", "kind", "format", "dtype", "none"),
        default="base",
        help="what the marker symbol shows (default: base family)",
    )
    p.set_defaults(run=_map)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lorastyle`` command; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, :data:`EXIT_BAD_INPUT` (2) for bad input of any kind,
        :data:`EXIT_INTERRUPTED` (130) after Ctrl-C.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad option (already reported)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _show_warning  # one readable line each, when it happens
        try:
            return args.run(args)
        except LorastyleError as exc:
            _error(exc.path, exc.reason)
            return EXIT_BAD_INPUT
        except ImportError as exc:
            missing = exc.name or getattr(exc.__cause__, "name", None) or ""
            extra = OPTIONAL_EXTRAS.get(missing.split(".")[0])
            if extra is None:
                raise
            _print(f"error: lorastyle {args.command} needs {missing}: pip install 'lorastyle[{extra}]'", sys.stderr)
            return EXIT_BAD_INPUT
        except MemoryError as exc:  # past the estimates: one line, never a traceback
            what = f" ({exc})" if str(exc) else ""
            _print(f"error: lorastyle {args.command} ran out of memory{what}", sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            _print("interrupted", sys.stderr)
            return EXIT_INTERRUPTED


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _print(f"warning: {message}", sys.stderr)


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1, checked when the options are parsed."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0, checked when the options are parsed."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
