"""argbench installed from its wheel works outside this checkout: registry, defaults and a tiny tracked run.

The wheel is built from the checkout and unpacked into a folder; a Python started with ``-S`` (no site-packages, so
no editable install of this checkout) sees only that folder and the dependencies' site-packages, and runs from an
empty working directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject():
    """pyproject lists the packages explicitly (the registry is mapped into the wheel); a new subpackage must be
    listed there or the wheel would silently lack it."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "argbench").rglob("__init__.py")}
    assert on_disk <= listed
    assert {"argbench._registry", "argbench._registry.profiles", "argbench._registry.search"} <= listed


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site folder holding the unpacked wheel, environment for ``python -S``) ."""
    build = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(build), str(ROOT)], check=True, capture_output=True)
    wheel, = build.glob("argbench-*.whl")
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for key in ("ARGBENCH_ABLATIONS", "ARGBENCH_PROJECT", "ARGBENCH_DATA", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return site, env


def argbench(args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-S", "-m", "argbench", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_the_wheel_runs_the_registry_and_a_tracked_run_from_an_empty_folder(installed, tmp_path):
    site, env = installed
    where = subprocess.run([sys.executable, "-S", "-c", "import argbench; print(argbench.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the installed copy, not this checkout

    listed = argbench(["ablation", "list", "--names"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    names = set(listed.stdout.split())
    assert {"baseline", "with_layernorm_relu", "learning_recipe_in_batch"} <= names
    assert argbench(["ablation", "defaults"], env, tmp_path).stdout == (ROOT / "ablations" / "base.yaml").read_text()

    run = argbench(["ablation", "run", "with_layernorm_relu", "--data", "sample", "--epochs", "1",
                    "--set", "model.encoder=tiny-random-bert", "--json"], env, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()  # the store lives in the folder it ran in
    assert list((tmp_path / "mlruns" / "runs" / "with_layernorm_relu").glob("seed*/metrics.jsonl"))
