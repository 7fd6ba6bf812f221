"""Deprecated name of :mod:`fastalign.backends.reference` (the pure-PyTorch reference
backend; its backend string stays ``"torch"``). Import ``fastalign.backends.reference``."""

import warnings

from . import reference as _reference
from .reference import *  # noqa: F401,F403

warnings.warn(
    "fastalign.backends.torch is deprecated: import fastalign.backends.reference "
    "(the backend string 'torch' is unchanged)",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name):
    return getattr(_reference, name)
