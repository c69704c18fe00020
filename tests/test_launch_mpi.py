"""Starting neuroflood with an MPI launcher (``mpiexec``/``mpirun`` under PBS, Cray PALS, …).

The launcher's rank variables are translated into torch.distributed's
(:func:`neuroflood.distributed.launch_env`): unit tests per launcher family, then 2 CPU ranks
started by hand with MPICH/Open MPI variables, which must train to exactly the weights of
``--nproc-per-node 2`` and segment blockwise to exactly its volume; and the same under a real
``mpiexec -n 2`` when one is installed (CI installs MPICH).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neuroflood.config import ModelConfig
from neuroflood.distributed import free_port, in_launched_job, init_distributed, launch_env, launch_local, mpi_ranks
from neuroflood.errors import ConfigError
from neuroflood.model import build_model, load_model, save_model
from neuroflood.prepare.coordfile import write_coordinates
from neuroflood.synthetic import make_em_volume
from neuroflood.train.checkpoint import checkpoint_dirs
from neuroflood.volume import open_volume, write_volume

TINY = "depth=1,features=4,fov=5,5,5,deltas=2,2,2"
TIMEOUT = 120  # per launch; each finishes in a few seconds when the machine is idle

# ---------------------------------------------------------------- environment parsing


def _nodefile(tmp_path: Path, *hosts: str) -> str:
    path = tmp_path / "nodefile"
    path.write_text("".join(h + "\n" for h in hosts))
    return str(path)


@pytest.mark.parametrize(
    "env, expected",
    [
        pytest.param(  # mpiexec.hydra: MPI_LOCALRANKID; MASTER_ADDR given
            {"PMI_RANK": "3", "PMI_SIZE": "8", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2", "MASTER_ADDR": "h0"},
            {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "h0", "MASTER_PORT": "29500"},
            id="mpich-hydra",
        ),
        pytest.param(  # PMI_LOCAL_RANK, an explicit port
            {"PMI_RANK": "1", "PMI_SIZE": "2", "PMI_LOCAL_RANK": "0", "MASTER_ADDR": "h1", "MASTER_PORT": "4000"},
            {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h1", "MASTER_PORT": "4000"},
            id="mpich-pmi-local-rank",
        ),
        pytest.param(  # Polaris: PALS_* (+ PMI_*), host from the node file, port from the PBS job number
            {
                "PALS_RANKID": "5",
                "PALS_LOCAL_RANKID": "1",
                "PALS_NODEID": "1",
                "PMI_RANK": "5",
                "PMI_SIZE": "8",
                "PMI_LOCAL_RANK": "1",
                "PMI_LOCAL_SIZE": "4",
                "PBS_NODEFILE": "{nodefile}",
                "PBS_JOBID": "123456.polaris-pbs-01",
            },
            {
                "RANK": "5",
                "WORLD_SIZE": "8",
                "LOCAL_RANK": "1",
                "LOCAL_WORLD_SIZE": "4",
                "MASTER_ADDR": "x3006c0s13b0n0.hsn",
                "MASTER_PORT": "29956",
            },
            id="cray-pals",
        ),
        pytest.param(  # Open MPI, all ranks on this node: no host needed
            {
                "OMPI_COMM_WORLD_RANK": "1",
                "OMPI_COMM_WORLD_SIZE": "2",
                "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
            },
            {
                "RANK": "1",
                "WORLD_SIZE": "2",
                "LOCAL_RANK": "1",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29500",
            },
            id="open-mpi-one-node",
        ),
        pytest.param(  # MVAPICH (mpirun_rsh), host from the node file
            {
                "MV2_COMM_WORLD_RANK": "2",
                "MV2_COMM_WORLD_SIZE": "4",
                "MV2_COMM_WORLD_LOCAL_RANK": "0",
                "MV2_COMM_WORLD_LOCAL_SIZE": "2",
                "PBS_NODEFILE": "{nodefile}",
            },
            {
                "RANK": "2",
                "WORLD_SIZE": "4",
                "LOCAL_RANK": "0",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "x3006c0s13b0n0.hsn",
                "MASTER_PORT": "29500",
            },
            id="mvapich",
        ),
        pytest.param(  # torchrun's variables come first: nothing is added
            {"RANK": "0", "WORLD_SIZE": "2", "PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1"},
            {},
            id="torchrun-first",
        ),
        pytest.param(  # srun --mpi=pmi2 also sets PMI_*: the same job, SLURM's rules as before
            {
                "SLURM_PROCID": "1",
                "SLURM_NTASKS": "2",
                "SLURM_LOCALID": "1",
                "SLURM_JOB_NODELIST": "n[07-08]",
                "SLURM_JOB_ID": "42",
                "PMI_RANK": "1",
                "PMI_SIZE": "2",
            },
            {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "n07", "MASTER_PORT": "29542"},
            id="slurm-with-pmi",
        ),
        pytest.param(  # mpiexec inside an sbatch script: SLURM_* are the batch step's, the MPI ranks win
            {
                "SLURM_PROCID": "0",
                "SLURM_NTASKS": "8",
                "SLURM_JOB_NODELIST": "n[07-08]",
                "PMI_RANK": "6",
                "PMI_SIZE": "8",
                "MPI_LOCALRANKID": "2",
                "MASTER_ADDR": "n07",
            },
            {"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "MASTER_ADDR": "n07", "MASTER_PORT": "29500"},
            id="mpiexec-inside-slurm",
        ),
        pytest.param({"PMI_RANK": "0", "PMI_SIZE": "1"}, {}, id="mpiexec-one-rank"),
        pytest.param({"PBS_NODEFILE": "{nodefile}", "PBS_JOBID": "7.server"}, {}, id="pbs-without-mpiexec"),
    ],
)
def test_launch_env(env, expected, tmp_path):
    nodefile = _nodefile(tmp_path, "x3006c0s13b0n0.hsn", "x3006c0s14b0n0.hsn")
    env = {k: v.replace("{nodefile}", nodefile) for k, v in env.items()}
    assert launch_env(env) == expected


def test_mpi_ranks_launcher_names():
    assert mpi_ranks({}) is None
    pals = mpi_ranks({"PALS_RANKID": "1", "PALS_LOCAL_RANKID": "1", "PMI_RANK": "1", "PMI_SIZE": "2"})
    assert pals is not None and (pals.launcher, pals.rank, pals.world_size, pals.local_rank) == ("Cray PALS", 1, 2, 1)
    hydra = mpi_ranks({"PMI_RANK": "0", "PMI_SIZE": "2"})
    assert hydra is not None and hydra.launcher == "MPICH" and hydra.local_rank is None


@pytest.mark.parametrize(
    "env, message",
    [
        pytest.param(
            {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "1"},
            r"MPICH started 2 ranks but rank 0's host is unknown .*set MASTER_ADDR",
            id="no-host",
        ),
        pytest.param(
            {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"},
            r"Open MPI started 4 ranks .*set MASTER_ADDR",
            id="no-host-open-mpi",
        ),
        pytest.param({"PMI_RANK": "one", "PMI_SIZE": "2"}, r"PMI_RANK='one' .*not a whole number", id="rank-not-int"),
        pytest.param({"PMI_RANK": "2", "PMI_SIZE": "2"}, r"PMI_RANK=2 is not a rank of PMI_SIZE=2", id="rank-out-of-range"),
        pytest.param(
            {"PALS_RANKID": "0", "PALS_LOCAL_RANKID": "0"}, r"PALS_RANKID is set \(Cray PALS\) but PMI_SIZE is not", id="pals-no-size"
        ),
        pytest.param(
            {"PMI_RANK": "0", "PMI_SIZE": "2", "MASTER_ADDR": "h0"}, r"MPICH set no local rank .*set LOCAL_RANK", id="no-local-rank"
        ),
        pytest.param(
            {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0", "PBS_NODEFILE": "{missing}"},
            r"cannot read PBS_NODEFILE .*set MASTER_ADDR",
            id="nodefile-missing",
        ),
        pytest.param(
            {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0", "PBS_NODEFILE": "{empty}"},
            r"PBS_NODEFILE .* lists no host",
            id="nodefile-empty",
        ),
        # Rank 0 must run on the node file's first host (it hosts the rendezvous); 192.0.2.1 is
        # a documentation address, never this machine's.
        pytest.param(
            {"PMI_RANK": "0", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0", "PBS_NODEFILE": "{elsewhere}"},
            r"rank 0 runs on .*, not on 192\.0\.2\.1 \(the first host of PBS_NODEFILE\); set MASTER_ADDR",
            id="rank0-not-on-first-host",
        ),
    ],
)
def test_launch_env_refused(env, message, tmp_path):
    files = {
        "{missing}": str(tmp_path / "no-such-nodefile"),
        "{empty}": _nodefile(tmp_path, ""),
        "{elsewhere}": str(tmp_path / "elsewhere"),
    }
    (tmp_path / "elsewhere").write_text("192.0.2.1\n127.0.0.1\n")
    env = {k: files.get(v, v) for k, v in env.items()}
    with pytest.raises(ConfigError, match=message) as e:
        launch_env(env)
    assert "\n" not in str(e.value)


def test_rank0_on_first_host_and_other_ranks_trust_it(tmp_path):
    nodefile = _nodefile(tmp_path, "127.0.0.1", "192.0.2.1")
    assert launch_env({"PMI_RANK": "0", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0", "PBS_NODEFILE": nodefile})["MASTER_ADDR"] == "127.0.0.1"
    elsewhere = _nodefile(tmp_path, "192.0.2.1")  # only rank 0 can tell; rank 1 connects to it
    assert launch_env({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0", "PBS_NODEFILE": elsewhere})["MASTER_ADDR"] == "192.0.2.1"


def test_in_launched_job_and_nproc_refused(train_config, monkeypatch, capsys, tmp_path):
    assert not in_launched_job({}) and not in_launched_job({"PMI_RANK": "0", "PMI_SIZE": "1"})
    assert in_launched_job({"PMI_RANK": "0", "PMI_SIZE": "2"}) and in_launched_job({"RANK": "0"})
    assert in_launched_job({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    for k in [k for k in os.environ if k.startswith(("SLURM_", "PMI_", "OMPI_", "PALS_", "MV2_"))] + ["RANK"]:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(ConfigError, match="multi-rank mpiexec, drop --nproc-per-node"):
        launch_local(2, ["segment"])  # what segment --nproc-per-node calls
    from neuroflood.cli import main

    assert main(["train", "--nproc-per-node", "2", "--config", str(train_config(tmp_path / "run"))]) == 2
    err = capsys.readouterr().err
    assert "drop --nproc-per-node" in err and err.count("error:") == 1
    assert not (tmp_path / "run").exists()


def test_gpu_is_local_rank_modulo_visible_gpus(monkeypatch):
    """One GPU per local rank; a rank that sees one GPU (per-rank CUDA_VISIBLE_DEVICES) takes it."""
    picked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", picked.append)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setenv("PMI_SIZE", "1")  # a single rank: no process group is made
    monkeypatch.setenv("LOCAL_RANK", "5")
    for count, want in ((8, 5), (4, 1), (1, 0)):
        monkeypatch.setattr(torch.cuda, "device_count", lambda count=count: count)
        assert init_distributed("cuda").device == f"cuda:{want}"
    assert picked == [5, 1, 0]


# ---------------------------------------------------------------- 2 ranks, by hand and by mpiexec


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables, 1 thread per rank, plus ``extra``."""
    launcher = ("SLURM_", "TORCHELASTIC_", "PMI_", "MPI_LOCAL", "OMPI_", "PALS_", "MV2_", "PBS_", "HYDRA_")
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher) and k not in names}
    # Should mpiexec be Open MPI's: it refuses root (CI containers) and more ranks than cores unless told.
    return {
        **env,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_rmaps_base_oversubscribe": "1",
        **extra,
    }


def _mpich_rank(rank: int, port: int) -> dict[str, str]:
    return _clean_env(PMI_RANK=str(rank), PMI_SIZE="2", MPI_LOCALRANKID=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _ompi_rank(rank: int, port: int) -> dict[str, str]:
    return _clean_env(
        OMPI_COMM_WORLD_RANK=str(rank),
        OMPI_COMM_WORLD_SIZE="2",
        OMPI_COMM_WORLD_LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def _run_ranks(cmd: list[str], envs: list[dict[str, str]]) -> list[tuple[str, str]]:
    """Start one process per environment (as mpiexec would) and wait for all; (stdout, stderr) each."""
    procs = [subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for e in envs]
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(e[-2000:] for _, e in outs)
    return outs


def _mpiexec() -> str:
    path = shutil.which("mpiexec")
    if path is None:
        pytest.skip("no mpiexec on PATH (apt-get install mpich; .ci/run installs it)")
    return path


@pytest.fixture(scope="module")
def train_config(tmp_path_factory):
    """A tiny training configuration: ``config(run_dir)`` writes it for ``run_dir``, returns its path."""
    d = tmp_path_factory.mktemp("mpi-train")
    image, labels = make_em_volume((24, 24, 24), seed=1)
    write_volume(f"{d}/v.h5:image", image)
    write_volume(f"{d}/v.h5:labels", labels)
    write_coordinates(d / "train.bin", np.random.default_rng(0).integers(6, 18, (16, 3)), None, ["synth"])
    options = {
        "images": {"synth": f"{d}/v.h5:image"},
        "labels": {"synth": f"{d}/v.h5:labels"},
        "coords": str(d / "train.bin"),
        "tensorboard": False,
        "progress": False,
        "checkpoint_every_secs": None,
        "summary_every_secs": 1e9,
        "optimizer": "adam",
        "learning_rate": 0.01,
        "batch_size": 2,
        "threads": 1,
        "max_steps": 4,
        "seed": 3,
        "model": ModelConfig.parse_spec(TINY).model_dump(mode="json"),
    }

    def config(run_dir: Path) -> Path:
        path = run_dir.with_suffix(".json")
        path.write_text(json.dumps({**options, "run_dir": str(run_dir)}))
        return path

    return config


@pytest.fixture(scope="module")
def train_job(train_config, tmp_path_factory):
    """The configuration, and the weights ``--nproc-per-node 2`` trains from it."""
    ref = tmp_path_factory.mktemp("mpi-train-ref") / "ref"
    cmd = [sys.executable, "-m", "neuroflood", "train", "--nproc-per-node", "2", "--config", str(train_config(ref))]
    r = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    return train_config, _weights(ref)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_model(checkpoint_dirs(run_dir)[-1] / "model").state_dict()


def _check_train(run_dir: Path, outs: list[tuple[str, str]], reference: dict[str, torch.Tensor]) -> None:
    (launch,) = [json.loads(s) for s in (run_dir / "launches.jsonl").read_text().splitlines()]
    assert launch["world_size"] == 2 and launch["backend"] == "gloo"
    assert [r["rank"] for r in launch["ranks"]] == [0, 1]
    assert "trained to step 4" in outs[0][0] and "trained to step" not in outs[1][0]  # rank 0 reports
    weights = _weights(run_dir)
    assert weights.keys() == reference.keys()
    for k in weights:
        assert torch.equal(weights[k], reference[k]), k


def test_train_mpich_ranks_equal_nproc_per_node(train_job, tmp_path):
    """2 ranks started with MPICH's variables train to exactly the weights of --nproc-per-node 2."""
    config, reference = train_job
    run_dir = tmp_path / "mpi"
    port = free_port()
    cmd = [sys.executable, "-m", "neuroflood", "train", "--config", str(config(run_dir))]
    _check_train(run_dir, _run_ranks(cmd, [_mpich_rank(r, port) for r in range(2)]), reference)


def test_train_real_mpiexec(train_job, tmp_path):
    """``mpiexec -n 2 neuroflood train`` (no MASTER_ADDR: both ranks on this node) == --nproc-per-node 2."""
    mpiexec = _mpiexec()
    config, reference = train_job
    run_dir = tmp_path / "mpiexec"
    cmd = [mpiexec, "-n", "2", sys.executable, "-m", "neuroflood", "train", "--config", str(config(run_dir))]
    r = subprocess.run(cmd, env=_clean_env(MASTER_PORT=str(free_port())), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("trained to step 4") == 1  # rank 0 alone reports
    (launch,) = [json.loads(s) for s in (run_dir / "launches.jsonl").read_text().splitlines()]
    assert launch["world_size"] == 2 and [x["rank"] for x in launch["ranks"]] == [0, 1]
    weights = _weights(run_dir)
    for k in reference:
        assert torch.equal(weights[k], reference[k]), k


@pytest.fixture(scope="module")
def segment_job(tmp_path_factory):
    """A tiny image, an untrained seeded network, and ``segment --block-size`` on --nproc-per-node 2."""
    d = tmp_path_factory.mktemp("mpi-segment")
    image, _ = make_em_volume((24, 24, 24), seed=2)
    write_volume(f"{d}/vol.h5:image", image)
    model = build_model(ModelConfig.parse_spec(TINY), seed=0)
    with torch.no_grad():  # an untrained network moves nowhere; large output weights make it flood
        model.layers.conv_lom.weight.mul_(30)
    save_model(model, d / "model")

    def cmd(out: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "neuroflood",
            "segment",
            "--model",
            str(d / "model"),
            "--image",
            f"{d}/vol.h5:image",
            "--out",
            out,
            "--block-size",
            "12,24,24",
            "--overlap",
            "4,4,4",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--no-progress",
            "--set",
            "options.min_segment_size=5",
            "--set",
            "options.move_threshold=0.5",
            "--set",
            "seed_policy=PolicyGrid3d",
            "--set",
            "seed_policy_args.step=6",
        ]

    ref = f"{d}/ref.zarr/seg"
    r = subprocess.run([*cmd(ref), "--nproc-per-node", "2"], env=_clean_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    reference = open_volume(ref)[...]
    assert len(np.unique(reference)) > 3  # several segments (across blocks) to compare
    return cmd, reference


def _blocks_done(out: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in Path(out).parent.glob(".seg.work/blocks/*.done")]


def _check_segment(out: str, reference: np.ndarray) -> None:
    done = _blocks_done(out)
    assert len(done) == 3 and {d["rank"] for d in done} <= {0, 1}  # 24 = 3 blocks of 12 - 4 overlap
    np.testing.assert_array_equal(open_volume(out)[...], reference)


def test_segment_blockwise_open_mpi_ranks_equal_nproc_per_node(segment_job, tmp_path):
    """2 ranks started with Open MPI's variables segment blockwise to exactly the volume of --nproc-per-node 2."""
    cmd, reference = segment_job
    out = f"{tmp_path}/mpi.zarr/seg"
    port = free_port()
    outs = _run_ranks(cmd(out), [_ompi_rank(r, port) for r in range(2)])
    assert "segments" in outs[0][0] and "segments" not in outs[1][0]  # rank 0 reports
    _check_segment(out, reference)


def test_segment_blockwise_real_mpiexec(segment_job, tmp_path):
    """``mpiexec -n 2 neuroflood segment --block-size …`` == --nproc-per-node 2."""
    mpiexec = _mpiexec()
    cmd, reference = segment_job
    out = f"{tmp_path}/mpiexec.zarr/seg"
    r = subprocess.run(
        [mpiexec, "-n", "2", *cmd(out)], env=_clean_env(MASTER_PORT=str(free_port())), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert r.returncode == 0, r.stderr[-3000:]
    _check_segment(out, reference)
