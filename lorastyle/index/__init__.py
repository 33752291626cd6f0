"""A searchable index of a LoRA collection: one small record per file, grouped by base family.

One module per job:

* :mod:`~lorastyle.index.walk`: finding the files (links followed, no loops);
* :mod:`~lorastyle.index.records`: one read of a file into a fixed-size :class:`Record`;
* :mod:`~lorastyle.index.sketches`: the record's fixed-size sketches of a file's descriptors;
* :mod:`~lorastyle.index.search`: scores (cosine over shared model parts, or the PCA);
* :mod:`~lorastyle.index.calibration`: the tiny model's thresholds, from the wild benchmark's labels;
* :mod:`~lorastyle.index.null`: a family's null from the index's own pairs (p-values, no labels);
* :mod:`~lorastyle.index.thresholds`: a family's near-duplicate and related scores, and why (one rule);
* :mod:`~lorastyle.index.verdicts`: what a result is: same weights, same run, related, nothing close;
* :mod:`~lorastyle.index.settings`: what records depend on (descriptor, sketch, selection), in one JSON form;
* :mod:`~lorastyle.index.store`: :class:`LoraIndex`, its groups, saving and loading;
* :mod:`~lorastyle.index.build`: building an index from files;
* :mod:`~lorastyle.index.cache`: records of an interrupted run;
* :mod:`~lorastyle.index.folder`: the folder driver behind ``lorastyle index`` (lock, resume);
* :mod:`~lorastyle.index.freshness`: whether an index's files are gone or changed (one ``stat`` each);
* :mod:`~lorastyle.index.duplicates`: same weights and near-duplicates;
* :mod:`~lorastyle.index.keep`: which copy of same-weights files to keep, and why (one rule);
* :mod:`~lorastyle.index.duplicates_script`: the shell script that sets the other copies aside.

The comparability rule itself is :mod:`lorastyle.comparability`.
"""

from ..descriptors import DEFAULT_DESCRIPTOR
from ..errors import IndexBusyError, NotEnoughLorasError
from ..io.hashes import file_sha256
from .build import BuildStats, build_index
from .cache import RecordCache
from .folder import IndexRun, index_folder, index_lock
from .records import Record, read_record
from .store import INDEX_FORMAT, Group, LoraIndex
from .walk import find_lora_files

__all__ = [
    "DEFAULT_DESCRIPTOR",
    "INDEX_FORMAT",
    "BuildStats",
    "Group",
    "IndexBusyError",
    "IndexRun",
    "LoraIndex",
    "NotEnoughLorasError",
    "Record",
    "RecordCache",
    "build_index",
    "file_sha256",
    "find_lora_files",
    "index_folder",
    "index_lock",
    "read_record",
]
