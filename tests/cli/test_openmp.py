"""The commands' OpenMP spin default: set before torch loads, never over the user's choice."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from detector.cli.openmp import SPIN_COUNT, default_spin_count


def test_sets_the_spin_count_when_nothing_chose_it():
    env: dict[str, str] = {"PATH": "/bin"}
    assert default_spin_count(env, modules={"os", "sys"})
    assert env == {"PATH": "/bin", "GOMP_SPINCOUNT": SPIN_COUNT}


@pytest.mark.parametrize("env", [{"GOMP_SPINCOUNT": "300000"}, {"OMP_WAIT_POLICY": "ACTIVE"}])
def test_the_users_choice_wins(env):
    before = dict(env)
    assert not default_spin_count(env, modules=set())
    assert env == before


def test_too_late_once_torch_is_loaded():
    # libgomp has read the environment already: setting it now would only mislead a reader of the env.
    env: dict[str, str] = {}
    assert not default_spin_count(env, modules={"torch"})
    assert env == {}


def _gnu_openmp() -> bool:
    import torch

    return sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info()


@pytest.mark.skipif(not _gnu_openmp(), reason="the setting is for GNU OpenMP (PyTorch's Linux wheels)")
def test_libgomp_reads_it_through_the_train_command():
    # OMP_DISPLAY_ENV makes libgomp print the settings it loaded with: the value must be the one the
    # config layer set, through the real entry point (a torch import added on the way would show 300000).
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    out = subprocess.run([sys.executable, str(root / "tools" / "train.py"), "--help"], capture_output=True,
                         text=True, env=env, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "GOMP_SPINCOUNT = '10000'" in out.stderr + out.stdout
