"""Model artifacts that cannot execute code when they are read.

``pickle`` and ``joblib`` run whatever a file tells them to: whoever can write ``MODEL_DIR`` would
run code in every worker and server that loads a model. Artifacts are therefore written with skops
(``skops.io``: a zip of JSON schema plus numpy arrays, made for scikit-learn models) and read back
only when every type in the file is trusted: skops's own list (scikit-learn estimators, numpy,
scipy, builtins) plus the exact names a model class lists in ``trusted_types``. A file naming any
other type (``os.system``, ``builtins.eval``, a class with a ``__reduce__`` of its own) is refused
before anything in it is constructed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any
from zipfile import ZIP_DEFLATED

import skops.io as sio

from backend.models.base import ModelError

__all__ = ["dump", "load"]


def dump(obj: Any, path: Path) -> None:
    """Write ``obj`` (an estimator, or a dict/list of them and plain values) to the file ``path``."""
    sio.dump(obj, Path(path), compression=ZIP_DEFLATED)


def load(path: Path, trusted: Iterable[str] = ()) -> Any:
    """Read what :func:`dump` wrote, refusing a file that names a type outside skops's defaults and
    ``trusted`` (full names such as ``"mypkg.models.Tokenizer"``)."""
    path = Path(path)
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # skops raises zipfile/JSON/KeyError for a damaged file
        raise ModelError(f"{path.name} is not a readable model artifact ({type(exc).__name__}: {exc})") from None
    refused = sorted(set(untrusted) - set(trusted))
    if refused:
        raise ModelError(
            f"{path.name} names types that are not trusted: {', '.join(refused)} "
            "(a model class lists the types it saves in trusted_types)"
        )
    try:
        return sio.load(path, trusted=untrusted)
    except Exception as exc:
        raise ModelError(f"{path.name} could not be loaded ({type(exc).__name__}: {exc})") from None
