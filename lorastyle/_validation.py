"""Parameter checks shared by every module: one message per kind of mistake.

Each check raises ``ValueError`` naming the parameter and the value received,
and returns the value in the form the caller needs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from numbers import Integral, Real

import numpy as np

__all__ = [
    "RandomState",
    "check_positive_int",
    "check_non_negative_int",
    "check_int_at_least",
    "check_positive_float",
    "check_option",
    "check_options",
    "check_random_state",
    "check_embedding_state",
    "check_streamed_pca_state",
    "STREAMED_PCA_STATE",
    "EMBEDDING_STATE",
    "sklearn_seed",
]

RandomState = int | np.random.Generator | None


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_int_at_least(value, name: str, minimum: int) -> int:
    """``value`` as an int, if it is an integer (not a bool) of at least ``minimum``.

    Parameters
    ----------
    value : object
        What the caller received.
    name : str
        The parameter's name, for the message.
    minimum : int

    Returns
    -------
    int
    """
    if not _is_int(value) or value < minimum:
        what = (
            "a positive integer"
            if minimum == 1
            else ("a non-negative integer" if minimum == 0 else f"an integer of at least {minimum}")
        )
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_positive_int(value, name: str) -> int:
    """``value`` as an int, if it is an integer >= 1 (``2.5``, ``True`` and ``"3"`` are refused).

    Parameters
    ----------
    value : object
    name : str
        The parameter's name, for the message.

    Returns
    -------
    int
    """
    return check_int_at_least(value, name, 1)


def check_non_negative_int(value, name: str) -> int:
    """``value`` as an int, if it is an integer >= 0.

    Parameters
    ----------
    value : object
    name : str
        The parameter's name, for the message.

    Returns
    -------
    int
    """
    return check_int_at_least(value, name, 0)


def check_positive_float(value, name: str) -> float:
    """``value`` as a float, if it is a finite real number > 0.

    Parameters
    ----------
    value : object
    name : str
        The parameter's name, for the message.

    Returns
    -------
    float
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_option(value, name: str, allowed: Collection[str]) -> str:
    """``value`` if it is one of ``allowed``; the message lists them.

    Parameters
    ----------
    value : object
    name : str
        What the option is (``descriptor``, ``solver``), for the message.
    allowed : collection of str

    Returns
    -------
    str
    """
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose from {', '.join(repr(a) for a in allowed)}")
    return value


def check_options(values, name: str, allowed: Collection[str]) -> tuple[str, ...]:
    """A collection of options (a single string counts as one, never as its letters), sorted and unique.

    Parameters
    ----------
    values : str or iterable of str
    name : str
        What the options are (``layers``, ``parts``), for the message.
    allowed : collection of str

    Returns
    -------
    tuple of str
    """
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a string or a collection of strings, got {values!r}")
    values = list(values)
    bad = sorted({repr(v) for v in values if not isinstance(v, str) or v not in allowed})
    if bad:
        raise ValueError(f"unknown {name} {', '.join(bad)}; choose from {', '.join(repr(a) for a in allowed)}")
    return tuple(sorted(set(values)))


def check_random_state(random_state: RandomState) -> np.random.Generator:
    """A numpy ``Generator`` from an int seed, a ``Generator`` (used as is) or None (fresh entropy).

    Parameters
    ----------
    random_state : int, numpy.random.Generator or None

    Returns
    -------
    numpy.random.Generator
    """
    if random_state is None or _is_int(random_state):
        if random_state is not None and random_state < 0:
            raise ValueError(f"random_state must be a non-negative integer, got {random_state!r}")
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.Generator):
        return random_state
    raise ValueError(
        f"random_state must be an int, a numpy.random.Generator or None, got {type(random_state).__name__}"
    )


def sklearn_seed(random_state: RandomState) -> int | None:
    """What scikit-learn accepts for ``random_state`` (it rejects Generators): an int or None.

    A Generator gives one draw from it, so results follow the Generator's state.

    Parameters
    ----------
    random_state : int, numpy.random.Generator or None

    Returns
    -------
    int or None
    """
    check_random_state(random_state)  # the same checks and messages
    if random_state is None or _is_int(random_state):
        return random_state
    return int(check_random_state(random_state).integers(2**31 - 1))


# The fitted state of a ``precomputed`` StyleEmbedding as plain arrays (an index stores it so). Checked
# here, without scikit-learn, so that loading an index checks it without importing scikit-learn.
EMBEDDING_STATE = (
    "embedding_",
    "calibration_",
    "dual_coef_",
    "kernel_col_means_",
    "explained_variance_",
    "explained_variance_ratio_",
)


def check_embedding_state(state: dict) -> tuple[int, int]:
    """Check the arrays of :meth:`lorastyle.embedding.StyleEmbedding.get_state`.

    Parameters
    ----------
    state : dict of str to ndarray

    Returns
    -------
    n : int
        Number of embedded items.
    n_components : int

    Raises
    ------
    ValueError
        When an array is missing, of the wrong shape, or not finite.
    """
    emb = _state_rows(state, EMBEDDING_STATE, "embedding state")
    n, k = emb.shape
    _check_shapes(
        state,
        EMBEDDING_STATE,
        {
            "calibration_": (k,),
            "dual_coef_": (n, k),
            "kernel_col_means_": (n,),
            "explained_variance_": (k,),
            "explained_variance_ratio_": (k,),
        },
    )
    return n, k


# The fitted state of a :class:`lorastyle.embedding.StreamedPCA` (what an index stores for its PCA).
STREAMED_PCA_STATE = (
    "embedding_",
    "calibration_",
    "components_",
    "mean_",
    "explained_variance_",
    "explained_variance_ratio_",
)


def check_streamed_pca_state(state: dict) -> tuple[int, int, int]:
    """Check the arrays of :meth:`lorastyle.embedding.StreamedPCA.get_state`.

    Parameters
    ----------
    state : dict of str to ndarray

    Returns
    -------
    n : int
        Number of embedded items.
    n_components : int
    n_features : int

    Raises
    ------
    ValueError
        When an array is missing, of the wrong shape, or not finite.
    """
    emb, comps = _state_rows(state, STREAMED_PCA_STATE, "PCA state"), state["components_"]
    if comps.ndim != 2 or comps.shape[0] != emb.shape[1]:
        raise ValueError(f"components_ has shape {comps.shape} for {emb.shape[1]} components")
    (n, k), d = emb.shape, comps.shape[1]
    want = {"calibration_": (k,), "mean_": (d,), "explained_variance_": (k,), "explained_variance_ratio_": (k,)}
    _check_shapes(state, STREAMED_PCA_STATE, want)
    return n, k, d


def _state_rows(state: dict, names: tuple, what: str) -> np.ndarray:
    """The fitted scores ``embedding_`` of a state that has every array of ``names``."""
    missing = [name for name in names if name not in state]
    if missing:
        raise ValueError(f"{what} lacks {', '.join(missing)}")
    emb = state["embedding_"]
    if emb.ndim != 2 or emb.shape[0] < 2 or emb.shape[1] < 1:
        raise ValueError(f"embedding_ has shape {emb.shape}")
    return emb


def _check_shapes(state: dict, names: tuple, want: dict) -> None:
    """Each array of ``want`` of its shape; every array of ``names`` finite."""
    for name, shape in want.items():
        if state[name].shape != shape:
            raise ValueError(f"{name} has shape {state[name].shape}, expected {shape}")
    for name in names:
        if not np.all(np.isfinite(state[name])):
            raise ValueError(f"{name} holds NaN or Inf values")
