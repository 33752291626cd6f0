"""Which LoRAs can share one descriptor space: the one rule, applied two ways.

The rule (:meth:`Reference.difference`): two LoRAs are comparable when they
have the same base family and, for every module both adapt, the same delta-W
shape; the paper's ``concat`` further needs the same modules, factor roles and
factor shapes (so the same ranks), because it compares stored factors entry by
entry. ``delta`` and ``gram`` compare any ranks, alphas and dtypes, and a
module that one LoRA lacks counts as a zero update.

Two policies pick what a LoRA is compared against:

* :func:`check_comparable`: the first LoRA (the descriptor API: a caller's list
  either works or names the odd file);
* :func:`comparable_subset`: the majority (a folder: the odd files are skipped,
  each with the reason and a file of the majority).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from .errors import IncomparableLorasError
from .io.formats import LoRA, LoraModule

__all__ = ["Layout", "Item", "Reference", "factor_signature", "check_comparable", "comparable_subset"]


def factor_signature(modules: dict[str, LoraModule]) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """(module, factor role, factor shape) of every stored factor: what ``concat`` needs to be equal.

    Parameters
    ----------
    modules : dict of str to LoraModule

    Returns
    -------
    tuple of (str, str, tuple of int)
    """
    return tuple((name, role, f.shape) for name, m in modules.items() for role, f in sorted(m.factors.items()))


def _more(items: list, what: str) -> str:
    return f"{what} {items[0]}" + (f" and {len(items) - 1} more" if len(items) > 1 else "")


@dataclass(frozen=True)
class Layout:
    """A file's module shapes and stored factor shapes: all the comparability rule looks at.

    Files of one layout share one :class:`Layout`; an index stores each once, by :attr:`key`.

    Attributes
    ----------
    shapes : dict of str to (int, int)
        delta-W shape per module.
    signature : tuple of (str, str, tuple of int)
        Every stored factor, as :func:`factor_signature`.
    ranks : list of int
    """

    shapes: dict
    signature: tuple
    ranks: list

    @classmethod
    def of(cls, lora: LoRA) -> Layout:
        """The layout of a loaded LoRA.

        Parameters
        ----------
        lora : LoRA

        Returns
        -------
        Layout
        """
        return cls(
            shapes={n: m.shape for n, m in lora.modules.items()},
            signature=factor_signature(lora.modules),
            ranks=lora.ranks,
        )

    @cached_property
    def key(self) -> str:
        """A short hash of the layout (equal layouts, equal keys; made once: an SDXL layout's takes 3 ms)."""
        blob = json.dumps([sorted((k, list(v)) for k, v in self.shapes.items()), self.signature], default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        """The layout as JSON-able lists.

        Returns
        -------
        dict
        """
        return {
            "shapes": {k: list(v) for k, v in self.shapes.items()},
            "signature": [[n, r, list(s)] for n, r, s in self.signature],
            "ranks": list(self.ranks),
        }

    @classmethod
    def from_json(cls, obj: dict) -> Layout:
        """The inverse of :meth:`to_json`.

        Parameters
        ----------
        obj : dict

        Returns
        -------
        Layout
        """
        return cls(
            shapes={str(k): tuple(int(d) for d in v) for k, v in obj["shapes"].items()},
            signature=tuple((str(n), str(r), tuple(int(d) for d in s)) for n, r, s in obj["signature"]),
            ranks=[int(r) for r in obj["ranks"]],
        )


@dataclass(frozen=True)
class Item:
    """What the rule compares: a file's path, base family and :class:`Layout`.

    Attributes
    ----------
    path : str
    base : str
    layout : Layout
    """

    path: str
    base: str
    layout: Layout

    @classmethod
    def of(cls, lora: LoRA) -> Item:
        """The item of a loaded LoRA.

        Parameters
        ----------
        lora : LoRA

        Returns
        -------
        Item
        """
        return cls(path=lora.path, base=lora.base, layout=Layout.of(lora))


def _item(x) -> Item:
    """A LoRA, or anything with ``path``, ``base`` and ``layout`` (an index record), as an :class:`Item`."""
    return Item.of(x) if isinstance(x, LoRA) else x


@dataclass(frozen=True)
class Reference:
    """What a file must match to join a descriptor space.

    Attributes
    ----------
    base : str
        Base family.
    shapes : dict of str to (int, int)
        delta-W shape per module name.
    signature : tuple
        :func:`factor_signature` of the reference (``concat`` only).
    ranks : list of int
    holders : dict of str to str
        A file holding each module at the reference shape (for messages).
    example : str
        A file of the reference.
    count : int
        How many files share the reference signature (1 for a single file).
    """

    base: str
    shapes: dict
    signature: tuple
    ranks: list
    holders: dict
    example: str
    count: int = 1

    @classmethod
    def of(cls, item) -> Reference:
        """The reference given by one file.

        Parameters
        ----------
        item : LoRA or Item

        Returns
        -------
        Reference
        """
        item = _item(item)
        return cls(
            base=item.base,
            shapes=dict(item.layout.shapes),
            signature=item.layout.signature,
            ranks=item.layout.ranks,
            holders=dict.fromkeys(item.layout.shapes, item.path),
            example=item.path,
        )

    @classmethod
    def majority(cls, items: Sequence) -> Reference:
        """The reference of most files: majority base, per-module majority shape, majority signature.

        Ties go to the value of the file that comes first.

        Parameters
        ----------
        items : sequence of LoRA or Item

        Returns
        -------
        Reference
        """
        items = [_item(x) for x in items]
        base = _majority([x.base for x in items])
        same = [x for x in items if x.base == base]
        votes: dict[str, Counter] = {}
        for x in same:
            for name, shape in x.layout.shapes.items():
                votes.setdefault(name, Counter())[shape] += 1
        shapes = {name: _majority_counted(c) for name, c in votes.items()}
        holders = {}
        for x in same:
            for name, shape in x.layout.shapes.items():
                if shape == shapes[name]:
                    holders.setdefault(name, x.path)
        sigs = [x.layout.signature for x in same]
        sig = _majority(sigs)
        first = same[sigs.index(sig)]
        return cls(
            base=base,
            shapes=shapes,
            signature=sig,
            ranks=first.layout.ranks,
            holders=holders,
            example=first.path,
            count=sigs.count(sig),
        )

    def difference(self, item, descriptor: str) -> str | None:
        """Why ``item`` cannot join this reference's space (None when it can), in words.

        Parameters
        ----------
        item : LoRA or Item
        descriptor : {"concat", "delta", "gram"}

        Returns
        -------
        str or None
        """
        item = _item(item)
        if item.base != self.base:
            return (
                f"base family {item.base} differs from {self.base} of {self.example}; "
                "LoRAs of different base models cannot be compared"
            )
        for name, shape in item.layout.shapes.items():
            want = self.shapes.get(name)
            if want is not None and shape != want:
                return f"module {name} has shape {shape}, not {want} as in {self.holders.get(name, self.example)}"
        if descriptor == "concat" and item.layout.signature != self.signature:
            return (
                f"concat needs the same modules, factors and ranks as {self.example}: "
                f"{self._concat_difference(item.layout)}; --descriptor gram or delta compare "
                "LoRAs of different ranks"
            )
        return None

    def _concat_difference(self, layout: Layout) -> str:
        if layout.ranks != self.ranks:
            return f"its rank is {_listed(layout.ranks)} where theirs is {_listed(self.ranks)}"
        mine = {(n, r): s for n, r, s in layout.signature}
        theirs = {(n, r): s for n, r, s in self.signature}
        ours, others = {n for n, _ in mine}, {n for n, _ in theirs}
        if others - ours:
            return "it lacks " + _more(sorted(others - ours), "module")
        if ours - others:
            return "it has " + _more(sorted(ours - others), "module") + " that they lack"
        for key, shape in mine.items():
            if theirs.get(key) != shape:
                return f"module {key[0]} factor {key[1]} has shape {shape} where theirs has {theirs.get(key, 'none')}"
        return "module " + next(n for n, r in theirs if (n, r) not in mine) + " lacks a factor"


def _listed(values: list) -> str:
    return ", ".join(str(v) for v in values)


def _majority(values: Sequence):
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)  # ties: the first file's value


def _majority_counted(counts: Counter):
    best = max(counts.values())
    return next(v for v, c in counts.items() if c == best)  # insertion order: the first file's value


def check_comparable(loras: Sequence, *, descriptor: str = "delta") -> None:
    """Raise unless every LoRA can share a descriptor space with the first.

    Parameters
    ----------
    loras : sequence of LoRA or Item
    descriptor : {"concat", "delta", "gram"}, default="delta"

    Raises
    ------
    IncomparableLorasError
        Whose ``path`` is the first LoRA that differs from the first one, and whose
        reason names the first one and what differs.
    ValueError
        For an empty sequence.
    """
    if len(loras) == 0:
        raise ValueError("no LoRAs given")
    ref = Reference.of(loras[0])
    for lora in loras[1:]:
        reason = ref.difference(lora, descriptor)
        if reason is not None:
            raise IncomparableLorasError(lora.path, reason)


def comparable_subset(loras: Sequence[LoRA], *, descriptor: str = "delta") -> tuple[list[LoRA], list[tuple[str, str]]]:
    """The LoRAs that share a descriptor space with the majority, and why each other one does not.

    Parameters
    ----------
    loras : sequence of LoRA or Item
        Records of an index qualify (they have ``path``, ``base`` and ``layout``).
    descriptor : {"concat", "delta", "gram"}, default="delta"

    Returns
    -------
    kept : list
        In the given order.
    skipped : list of (path, reason)
    """
    if len(loras) == 0:
        return [], []
    ref = Reference.majority(loras)
    kept, skipped = [], []
    for lora in loras:
        reason = ref.difference(lora, descriptor)
        if reason is None:
            kept.append(lora)
        else:
            skipped.append((lora.path, reason))
    return kept, skipped
