"""RAIL's parallel mode: the estimator under ``ceci`` with ``nprocess: 2`` (``mpirun -n 2 ... --mpi``)
writes the same PDFs, in the same order, as with ``nprocess: 1``.

Needs an MPI runtime (``mpirun``), mpi4py and an MPI-enabled h5py (RAIL writes the output with
``driver="mpio"``).  ``.ci/run`` installs them and sets ``PHOTOVAEZ_REQUIRE_MPI=1``, which turns a
missing piece into a failure instead of a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import qp
import tables_io
import yaml

BINDIR = os.path.dirname(sys.executable)
N_ROWS, CHUNK = 250, 40  # 7 chunks: rank 0 takes 4, rank 1 takes 3 (round robin)
MODES = {"amortized": dict(n_b_samples=4), "snis": dict(n_importance=16, n_importance_px=16)}


def _mpi_env() -> dict:
    env = dict(os.environ, PATH=BINDIR + os.pathsep + os.environ.get("PATH", ""), OMP_NUM_THREADS="1")
    # Open MPI in a container: allow root, more ranks than cores, no ssh/rsh agent for a local run
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
               OMPI_MCA_plm_rsh_agent="", OMPI_MCA_btl_vader_single_copy_mechanism="none")
    return env


def _mpi_missing() -> str | None:
    """Why a 2-rank run cannot work here, or None."""
    if shutil.which("mpirun", path=_mpi_env()["PATH"]) is None:
        return "no mpirun (an MPI runtime) on the PATH"
    if shutil.which("ceci", path=BINDIR) is None and shutil.which("ceci") is None:
        return "the ceci command is not installed"
    import h5py

    if not h5py.get_config().mpi:
        return "h5py is not built with MPI (RAIL writes chunked output with driver='mpio')"
    # importing mpi4py.MPI initialises MPI: check it in a child, not in the test process
    r = subprocess.run([sys.executable, "-c", "from mpi4py import MPI; print(MPI.Get_library_version())"],
                       capture_output=True, text=True, timeout=60, env=_mpi_env())
    if r.returncode != 0:
        return "mpi4py cannot load an MPI library: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    return None


@pytest.fixture(scope="module")
def mpi_ready():
    why = _mpi_missing()
    if why is not None:
        if os.environ.get("PHOTOVAEZ_REQUIRE_MPI") == "1":
            pytest.fail(f"MPI test required (PHOTOVAEZ_REQUIRE_MPI=1) but {why}")
        pytest.skip(why)


def _write_pipeline(folder: Path, model: Path, data: Path, nprocess: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stages, config = [], {}
    for mode, extra in MODES.items():
        name = f"estimate_{mode}"
        stages.append(dict(name=name, classname="PhotoVAEzEstimator", nprocess=nprocess,
                           module_name="rail.estimation.algos.photovaez",
                           aliases=dict(input="input_test", model="input_model", output=f"output_{name}")))
        config[name] = dict(name=name, posterior=mode, chunk_size=CHUNK, nzbins=151, seed=5, device="cpu",
                            hdf5_groupname="photometry", **extra)
    cfg = folder / "config.yml"
    cfg.write_text(yaml.safe_dump(config))
    pipe = dict(output_dir=str(folder), log_dir=str(folder), resume=False, config=str(cfg), modules="rail",
                inputs=dict(input_test=str(data), input_model=str(model)), stages=stages,
                site=dict(name="local", max_threads=2, mpi_command="mpirun -n"))
    yml = folder / "pipe.yml"
    yml.write_text(yaml.safe_dump(pipe))
    return yml


def _run(yml: Path) -> subprocess.CompletedProcess:
    ceci = shutil.which("ceci", path=BINDIR) or shutil.which("ceci")
    proc = subprocess.run([ceci, str(yml)], cwd=yml.parent, env=_mpi_env(), capture_output=True, text=True,
                          timeout=600)
    logs = "".join(p.read_text()[-3000:] for p in yml.parent.glob("*.out"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
    return proc


def test_two_ranks_match_one(mpi_ready, tmp_path, dc2_tables):
    from photovaez import api
    from photovaez.io import save_model

    train, test = dc2_tables
    model = api.fit(train, model_config=dict(hidden=[16, 16], dim_a=3, dim_b=3),
                    train_config=dict(epochs=2, batch_size=128, min_epochs=1, seed=1, progress=False, device="cpu",
                                      proposal_steps=0, calibrate_posterior=False))
    save_model(model, str(tmp_path / "model.pkl"))
    rows = {k: np.asarray(v)[:N_ROWS] for k, v in test.items() if k != "redshift"}
    tables_io.write({"photometry": rows}, str(tmp_path / "test.hdf5"))

    one = _run(_write_pipeline(tmp_path / "one", tmp_path / "model.pkl", tmp_path / "test.hdf5", 1))
    two = _run(_write_pipeline(tmp_path / "two", tmp_path / "model.pkl", tmp_path / "test.hdf5", 2))
    assert "--mpi" not in one.stdout
    assert "mpirun -n 2" in two.stdout and "--mpi" in two.stdout  # ceci really launched two ranks
    logs = "".join(p.read_text() for p in (tmp_path / "two").glob("*.out"))
    assert "Process 1 running estimator on chunk" in logs  # and rank 1 took chunks
    assert "Process 1 running" not in "".join(p.read_text() for p in (tmp_path / "one").glob("*.out"))

    for mode in MODES:
        a = qp.read(str(tmp_path / "one" / f"output_estimate_{mode}.hdf5"))
        b = qp.read(str(tmp_path / "two" / f"output_estimate_{mode}.hdf5"))
        assert a.npdf == b.npdf == N_ROWS
        np.testing.assert_array_equal(b.objdata["yvals"], a.objdata["yvals"], err_msg=mode)
        assert set(a.ancil) == set(b.ancil)
        for key in a.ancil:
            np.testing.assert_array_equal(b.ancil[key], a.ancil[key], err_msg=f"{mode}: ancil {key}")
        # and not trivially equal: different galaxies have different PDFs
        assert not np.allclose(a.objdata["yvals"][0], a.objdata["yvals"][1])
