"""Atomic writes for checkpoints and results.

A run can be killed at any moment (a session limit, Ctrl-C, an OOM). Writing to a temporary file in
the same directory and then ``os.replace``-ing it over the destination means a reader sees either the
old complete file or the new complete file, never a truncated one: nothing already written is lost.

The file gets the permissions an ordinary ``open()`` would give it (``0666`` minus the umask), not
``mkstemp``'s ``0600``. A write that fails (a full disk, an interrupt) removes its temporary file and
raises :class:`~detector.errors.CheckpointError` naming the file and the cause; ``torch.save`` is
given an in-memory buffer first, because its zip writer reports a full disk as an opaque
``RuntimeError: [enforce fail at inline_container.cc]``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from detector.errors import CheckpointError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise CheckpointError(f"cannot write {path}: {err.strerror or err}; the previous file is unchanged") from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return _atomic_write(path, lambda f: f.write(text.encode("utf-8")), "wb")


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Serialise ``obj`` as JSON and write it to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (serialised in memory, then written)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return _atomic_write(path, lambda f: f.write(buffer.getbuffer()), "wb")
