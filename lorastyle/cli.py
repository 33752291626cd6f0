"""The ``lorastyle`` command: inspect LoRA files, index a collection, find similar styles.

Contract (other tools call it exactly so):

* ``lorastyle inspect FILE --json``: one JSON object with ``format``, ``base``,
  ``parts``, ``n_modules``, ``ranks``, ``alphas``, ``dtype``.
* ``lorastyle index DIR -o INDEX [--descriptor concat|delta|gram] [--components N]``:
  embeds every LoRA file under DIR; bad files are skipped and reported; exit 0
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
from .descriptors import BLOCKS, DESCRIPTORS, LAYER_TYPES, PARTS, ModuleSelection
from .errors import LorastyleError
from .io.formats import load_lora

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


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
    lora = load_lora(args.file)
    summary = lora.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        _print(f"{args.file}")
        for key, value in summary.items():
            print(f"  {key:10s} {value}")
        if lora.extras:
            print(f"  {'extras':10s} {len(lora.extras)} tensors that are not LoRA factors")
    return 0


def _index(args) -> int:
    from tqdm.auto import tqdm

    from .index import NotEnoughLorasError, index_folder

    select = None
    if args.layers or args.blocks or args.parts:
        select = ModuleSelection(parts=args.parts, layers=args.layers, blocks=args.blocks)
    # disable=None: no bar where stderr is not a terminal (a log file gets lines, not carriage returns)
    bar = lambda it: tqdm(it, desc="loading", unit="file", file=sys.stderr, disable=None)  # noqa: E731
    try:
        run = index_folder(
            args.dir,
            args.output,
            descriptor=args.descriptor,
            n_components=args.components,
            select=select,
            use_cache=not args.no_cache,
            calibrate=not args.no_calibration,
            progress=bar,
        )
    except NotEnoughLorasError as exc:
        for path, reason in exc.skipped:
            _error(path, reason)
        _error(args.dir, str(exc))
        return EXIT_BAD_INPUT
    except OSError as exc:  # the index, its lock or its folder cannot be written
        _error(exc.filename or args.output, f"cannot write: {exc.strerror or exc}")
        return EXIT_BAD_INPUT
    for path, reason in run.skipped:
        _error(path, reason)
    index = run.index
    cache = f"{run.from_cache} of {run.n_files} files from the cache" if run.cache_dir else "no cache"
    _print(
        f"indexed {len(index.paths)} files ({args.descriptor}, {index.embedding.n_components} components, "
        f"base {index.base}); skipped {len(run.skipped)}; {cache}; wrote {args.output}",
        sys.stderr,
    )
    return 0


def _similar(args) -> int:
    from .index import LoraIndex

    index = LoraIndex.load(args.index)
    query = load_lora(args.query)
    results = index.similar(query, k=args.k)
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            _print(f"{r['score']:+.4f}  {r['path']}")
    return 0


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

    p = sub.add_parser("inspect", help="describe one LoRA file: layout, base model, ranks, alphas")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_inspect)

    p = sub.add_parser("index", help="embed every LoRA file under a folder into an index")
    p.add_argument("dir")
    p.add_argument("-o", "--output", required=True, help="index file to write")
    p.add_argument(
        "--descriptor",
        choices=DESCRIPTORS,
        default="concat",
        help="concat: the paper's flattened A,B; delta: delta-W inner products; "
        "gram: delta-W delta-W^T (default: concat)",
    )
    p.add_argument("--components", type=_positive_int, default=8, help="embedding dimension (default: 8)")
    p.add_argument("--parts", nargs="+", choices=PARTS, help="only these model parts")
    p.add_argument("--layers", nargs="+", choices=LAYER_TYPES, help="only these layer types")
    p.add_argument("--blocks", nargs="+", choices=BLOCKS, help="only these U-Net stages")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="read every file again and keep no INDEX.cache/ (default: reuse and update it)",
    )
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="skip the out-of-sample calibration, whose cost grows as n^3: for thousands of files",
    )
    p.set_defaults(run=_index)

    p = sub.add_parser("similar", help="the indexed LoRAs closest in style to a query LoRA")
    p.add_argument("index")
    p.add_argument("query", help="a LoRA file, in the index or not")
    p.add_argument("-k", type=_positive_int, default=10, help="number of results (default: 10)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {path, score}")
    p.set_defaults(run=_similar)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
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


if __name__ == "__main__":
    sys.exit(main())
