"""What an index's records depend on, in one place: the descriptor, the sketch settings, the module selection.

Two indexes (or an index and a cache of records) can share records only where their settings are
equal; the index file, the cache and a re-run all compare and store them through
:class:`IndexSettings`, in one JSON form.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._validation import check_option
from ..descriptors import DESCRIPTORS, ModuleSelection
from ..io.formats import LoRA
from .sketches import Sketcher

__all__ = ["IndexSettings"]

_SELECTION_FIELDS = ("parts", "layers", "blocks", "names")


@dataclass(frozen=True, eq=False)
class IndexSettings:
    """The settings records are made with.

    Parameters
    ----------
    descriptor : {"gram", "delta", "concat"}
    sketcher : Sketcher
    select : ModuleSelection or None
        The sub-network described (None: every module).

    Raises
    ------
    ValueError
        For an unknown descriptor.
    """

    descriptor: str
    sketcher: Sketcher
    select: ModuleSelection | None = None

    def __post_init__(self):
        check_option(self.descriptor, "descriptor", DESCRIPTORS)

    def to_json(self) -> dict:
        """The settings as JSON-able data (what the index file and the cache store).

        Returns
        -------
        dict
            ``descriptor``, ``sketch`` (:attr:`Sketcher.settings`) and ``select`` (each field of the
            selection sorted, or None).
        """
        select = None
        if self.select is not None:
            select = {k: sorted(v) if (v := getattr(self.select, k)) is not None else None for k in _SELECTION_FIELDS}
        return {"descriptor": self.descriptor, "sketch": self.sketcher.settings, "select": select}

    @classmethod
    def from_json(cls, data: dict) -> IndexSettings:
        """Settings from :meth:`to_json`'s data, checked.

        A sketch without ``centre`` was made before centring was the default: it is read as not
        centred, so that an old index keeps scoring as it was sketched.

        Parameters
        ----------
        data : dict

        Returns
        -------
        IndexSettings

        Raises
        ------
        ValueError
            For data that are not settings.
        TypeError
            For a sketch or selection of unknown fields.
        """
        if not isinstance(data, dict) or not isinstance(data.get("sketch"), dict):
            raise ValueError("index settings are not an object with a sketch")
        sketch = {"centre": False, **data["sketch"]}
        select = data.get("select")
        if select is not None and not isinstance(select, dict):
            raise ValueError("the module selection is not an object")
        return cls(
            descriptor=str(data["descriptor"]),
            sketcher=Sketcher(**sketch),
            select=ModuleSelection(**select) if select else None,
        )

    def __eq__(self, other) -> bool:
        return isinstance(other, IndexSettings) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(repr(sorted(self.to_json().items(), key=lambda kv: kv[0])))

    def selected(self, lora: LoRA) -> LoRA:
        """``lora`` with the selection applied in place (its other modules dropped).

        Parameters
        ----------
        lora : LoRA

        Returns
        -------
        LoRA
            The same object.
        """
        if self.select is not None:
            lora.modules = self.select.modules(lora)
        return lora
