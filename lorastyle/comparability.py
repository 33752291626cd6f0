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

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import IncomparableLorasError
from .io.formats import LoRA, LoraModule

__all__ = ["Reference", "factor_signature", "check_comparable", "comparable_subset"]


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
class Reference:
    """What a LoRA must match to join a descriptor space.

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
        How many files share the reference signature (1 for a single LoRA).
    """

    base: str
    shapes: dict
    signature: tuple
    ranks: list
    holders: dict
    example: str
    count: int = 1

    @classmethod
    def of(cls, lora: LoRA) -> Reference:
        """The reference given by one LoRA."""
        return cls(
            base=lora.base,
            shapes={n: m.shape for n, m in lora.modules.items()},
            signature=factor_signature(lora.modules),
            ranks=lora.ranks,
            holders=dict.fromkeys(lora.modules, lora.path),
            example=lora.path,
        )

    @classmethod
    def majority(cls, loras: Sequence[LoRA]) -> Reference:
        """The reference of most files: majority base, per-module majority shape, majority signature.

        Ties go to the value of the file that comes first.
        """
        base = _majority([lora.base for lora in loras])
        same = [lora for lora in loras if lora.base == base]
        votes: dict[str, Counter] = {}
        for lora in same:
            for name, m in lora.modules.items():
                votes.setdefault(name, Counter())[m.shape] += 1
        shapes = {name: _majority_counted(c) for name, c in votes.items()}
        holders = {}
        for lora in same:
            for name, m in lora.modules.items():
                if m.shape == shapes[name]:
                    holders.setdefault(name, lora.path)
        sigs = [factor_signature(lora.modules) for lora in same]
        sig = _majority(sigs)
        first = same[sigs.index(sig)]
        return cls(
            base=base,
            shapes=shapes,
            signature=sig,
            ranks=first.ranks,
            holders=holders,
            example=first.path,
            count=sigs.count(sig),
        )

    def difference(self, lora: LoRA, descriptor: str) -> str | None:
        """Why ``lora`` cannot join this reference's space (None when it can), in words."""
        if lora.base != self.base:
            return (
                f"base family {lora.base} differs from {self.base} of {self.example}; "
                "LoRAs of different base models cannot be compared"
            )
        for name, m in lora.modules.items():
            want = self.shapes.get(name)
            if want is not None and m.shape != want:
                return f"module {name} has shape {m.shape}, not {want} as in {self.holders.get(name, self.example)}"
        if descriptor == "concat":
            sig = factor_signature(lora.modules)
            if sig != self.signature:
                return (
                    f"concat needs the same modules, factors and ranks as {self.example}: "
                    f"{self._concat_difference(lora, sig)}; --descriptor gram or delta compare "
                    "LoRAs of different ranks"
                )
        return None

    def _concat_difference(self, lora: LoRA, sig: tuple) -> str:
        if lora.ranks != self.ranks:
            return f"its rank is {_listed(lora.ranks)} where theirs is {_listed(self.ranks)}"
        mine = {(n, r): s for n, r, s in sig}
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


def check_comparable(loras: Sequence[LoRA], *, descriptor: str = "delta") -> None:
    """Raise unless every LoRA can share a descriptor space with the first.

    Parameters
    ----------
    loras : sequence of LoRA
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
    loras : sequence of LoRA
    descriptor : {"concat", "delta", "gram"}, default="delta"

    Returns
    -------
    kept : list of LoRA
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
