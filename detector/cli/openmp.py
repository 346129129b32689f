"""How long an idle OpenMP thread keeps its core: set for the commands before PyTorch loads.

PyTorch's CPU wheels run their intra-op threads on GNU OpenMP (libgomp). After each parallel
operator, libgomp's idle threads spin on their cores before they sleep, 300,000 rounds of a pause
instruction by default (``GOMP_SPINCOUNT``), which on the 2-core machines of docs/speed.md is several
milliseconds. The framework runs work of its own on Python threads beside that pool: the RPN's NMS,
one image per core (:mod:`detector.ops.nms`). Right after the RPN head's convolution the spinning
OpenMP thread holds the second core, so inside the training step the four NMS calls took as long on
two threads as on one (10.5 against 9.5 ms a step), against 6 ms when the pool sleeps sooner.
``GOMP_SPINCOUNT=10000`` (a fraction of a millisecond) gives that back without slowing the
convolutions, whose operators follow each other closely enough to find the threads still awake;
``OMP_WAIT_POLICY=PASSIVE`` (no spinning at all) made the whole step 10-53 % slower. docs/speed.md
has the measurements.

libgomp reads the variable once, when it is loaded, so this must run before ``import torch``: the
config layer's package does it on import, which is first for ``roilens`` and ``tools/*.py``, and for
``detector.load/train/evaluate`` in a program that has not imported torch yet (the variable then stays
in that process's environment and its children's). A value the user set wins, and a program that
imported torch before ``detector.cli`` keeps libgomp's default. PyTorch's Linux wheels use libgomp;
where torch runs on another OpenMP the variable does nothing.
Written here because neither PyTorch nor libgomp offers a way to change the spin once loaded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Container, MutableMapping

SPIN_COUNT = "10000"


def default_spin_count(environ: MutableMapping[str, str] | None = None, modules: Container[str] | None = None) -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` unless the user chose how OpenMP waits or torch is loaded.

    Args:
        environ: the environment to change (default ``os.environ``).
        modules: the names of the loaded modules (default ``sys.modules``).

    Returns:
        Whether it set the variable.
    """
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ or "torch" in modules:
        return False
    environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return True
