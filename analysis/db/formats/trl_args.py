"""``training_args.bin`` read without torch, for the TRL reader (:mod:`analysis.db.formats.trl`).

Out of ``trl.py`` so that the reader stays under ~300 lines: turning the pickled ``GRPOConfig``
into plain containers, with no class of the pickle imported or run, is a concern of its own.
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from pathlib import Path

__all__ = ["read_training_args"]

_MAX_ARGS_BYTES = 16 << 20

# -- training_args.bin without torch ---------------------------------------------------
class _Opaque:
    """Stands for any object of the pickle: no code of the pickled class runs."""

    def __init__(self, *args: object) -> None:
        self.args = args
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state


_CONTAINERS = {"set": set, "frozenset": frozenset, "list": list, "tuple": tuple, "dict": dict}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102 - only containers and stand-ins
        if module == "builtins" and name in _CONTAINERS:
            return _CONTAINERS[name]
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "copyreg" and name == "_reconstructor":
            return lambda cls, base, state=None: cls()
        return type(name, (_Opaque,), {"module": module})

    def persistent_load(self, pid: object) -> None:  # a tensor's storage: not needed
        return None


def _plain(value: object, depth: int = 0) -> object:
    """JSON-able form of an unpickled value: an enum member becomes its value, another object
    its fields (or its class name)."""
    if depth > 20:
        return None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, _Opaque):
        if isinstance(value.state, dict):
            return _plain(value.state, depth + 1)
        if len(value.args) == 1:
            return _plain(value.args[0], depth + 1)
        return f"<{type(value).__name__}>"
    return str(value)


def read_training_args(path: Path) -> dict:
    """The ``GRPOConfig`` saved in ``training_args.bin`` as a dict of plain values.

    The file is a torch zip archive around a pickle. No class of the pickle is imported or run:
    every object comes back as its fields. Raises ``ValueError`` for a file that is not one.
    """
    path = Path(path)
    if path.stat().st_size > _MAX_ARGS_BYTES:
        raise ValueError(f"larger than {_MAX_ARGS_BYTES >> 20} MiB; not a training_args.bin")
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("data.pkl")]
            if not names:
                raise ValueError("no data.pkl inside")
            data = z.read(names[0])
    except zipfile.BadZipFile:
        data = path.read_bytes()  # an old, non-zip torch.save
    try:
        value = _Unpickler(io.BytesIO(data)).load()
    except Exception as exc:  # any malformed pickle
        raise ValueError(f"not a readable pickle ({type(exc).__name__}: {exc})") from None
    plain = _plain(value)
    if not isinstance(plain, dict):
        raise ValueError("does not hold a training configuration")
    # As TrainingArguments.to_dict does: a Hub token is a secret, never copied into a log.
    return {k: (f"<{k.upper()}>" if k.endswith("_token") and v is not None else v) for k, v in plain.items()}
