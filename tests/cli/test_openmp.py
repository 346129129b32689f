"""The commands' OpenMP spin default: set before torch loads, never over the user's choice."""

import os
import subprocess
import sys

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


def test_the_config_layer_sets_it_before_torch_loads():
    code = ("import os, sys; import detector.cli; "
            "print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == [SPIN_COUNT, "False"]
