"""The install the README gives while the package is not on PyPI: a wheel that ``python -m build``
makes from the checkout, installed with its ``serve`` extra into a fresh virtual environment, where
``popi serve --help`` runs. Offline: the extra's requirements resolve against the packages of the
environment running the tests (made visible to the new one by a ``.pth`` file), never an index."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(".git", ".venv*", ".ci-home", "__pycache__", "build", "dist",
                              "*.egg-info", "runs", ".pytest_cache", "*.sqlite*")


def _run(*args: str | os.PathLike, env: dict | None = None) -> subprocess.CompletedProcess:
    # Run from a folder without the package: `python -c` puts the working folder on sys.path.
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env,
                          timeout=900, cwd=Path(__file__).anchor)
    assert done.returncode == 0, f"{' '.join(map(str, args))}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_the_built_wheel_installs_with_serve_into_a_fresh_venv(tmp_path):
    pytest.importorskip("build", reason="python -m build needs the build package (dev extra)")
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=SKIP)  # the build writes into its source tree
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, source)
    (wheel,) = dist.glob("popi_sdk-*.whl")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                   .stdout.strip())
    (purelib / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # The wheel itself, then its serve extra: every requirement must already be satisfied.
    _run(python, "-m", "pip", "install", "--no-index", "--no-deps", "--force-reinstall", wheel, env=env)
    _run(python, "-m", "pip", "install", "--no-index", f"{wheel}[serve]", env=env)

    where = _run(python, "-c", "import popi_sdk, pathlib; print(pathlib.Path(popi_sdk.__file__).parent)",
                 env=env).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's copy, not the checkout
    for data in ("examples_data/demo_users.jsonl", "train/presets", "adapters"):
        assert (Path(where) / data).exists(), data  # package data made it into the wheel
    help_text = _run(venv / "bin" / "popi", "serve", "--help", env=env).stdout
    assert "--generator" in help_text and "--api-key" in help_text
