"""The command line sets the OpenMP, BLAS and allocator environment before polars/lightgbm load.

Only the batch's entry point (``cli``) does so: the Redis contract module and the API leave
the process as they find it, and load none of the engine's heavy libraries (issue #15).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

SET_BY_CLI = ("OMP_WAIT_POLICY", "_RJEM_MALLOC_CONF", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

PROBE = (
    "import json, os, cli, polars, numpy, scipy.sparse;"
    "from threadpoolctl import threadpool_info;"
    f"seen = {{k: os.environ.get(k) for k in {SET_BY_CLI!r}}};"
    "blas = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'];"
    "seen['blas_threads'] = blas;"
    "print(json.dumps(seen))"
)


def _probe(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in SET_BY_CLI}


def test_cli_import_sets_passive_openmp_and_prompt_page_return() -> None:
    seen = _probe(_clean_env())
    assert seen["OMP_WAIT_POLICY"] == "PASSIVE"
    # polars prepends its own defaults when it loads; jemalloc lets the later options win.
    assert seen["_RJEM_MALLOC_CONF"].endswith("dirty_decay_ms:2000,muzzy_decay_ms:0")


def test_cli_import_gives_numpy_and_scipy_one_blas_thread() -> None:
    """Set before numpy loads its OpenBLAS (read once, at load): every BLAS library of the
    process runs one thread. Mutation caught: the variable set after numpy is imported, or
    not at all (2 threads on a 2-core host)."""
    seen = _probe(_clean_env())
    assert seen["OPENBLAS_NUM_THREADS"] == "1"
    assert seen["blas_threads"]  # numpy's and scipy's OpenBLAS
    assert set(seen["blas_threads"]) == {1}


@pytest.mark.parametrize("name", SET_BY_CLI)
def test_an_explicit_setting_wins(name: str) -> None:
    seen = _probe({**_clean_env(), name: "user-choice"})
    assert seen[name].endswith("user-choice")
    assert "dirty_decay_ms:2000" not in seen[name]


QUIET_PROBE = (
    "import importlib, json, os, sys; before = dict(os.environ);"
    "importlib.import_module(sys.argv[1]);"
    "keys = before.keys() | os.environ.keys();"
    "changed = sorted(k for k in keys if before.get(k) != os.environ.get(k));"
    "heavy = sorted(m for m in ('polars', 'numpy', 'lightgbm', 'implicit') if m in sys.modules);"
    "print(json.dumps({'changed': changed, 'heavy': heavy}))"
)


@pytest.mark.parametrize("module", ["recsys_batch.publish.keys", "api.main"])
def test_import_leaves_environment_and_heavy_libraries_alone(module: str) -> None:
    """The API image imports these: no env change, none of polars, numpy, lightgbm, implicit."""
    out = subprocess.run(
        [sys.executable, "-c", QUIET_PROBE, module],
        env=_clean_env(),  # else a default set by this process's own ``import cli`` hides one
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == {"changed": [], "heavy": []}
