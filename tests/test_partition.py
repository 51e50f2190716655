"""The partition check: scontrol's output parsed, and a request that does not fit refused naming its key.

Fast tests use scontrol lines captured from the throwaway cluster (SLURM 22.05) plus a few shapes a real site
has (typed GPUs, several gres, limits); the cluster test shows ``submit`` refusing before sbatch.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import hpcgen, write_job

from hpcgen.errors import ConfigError
from hpcgen.login import partition as part
from hpcgen.spec.loader import load_job

PARTITION_LINE = (
    "PartitionName=gpu AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
    "MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=n[1-2] PriorityJobFactor=1 "
    "PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP "
    "TotalCPUs=8 TotalNodes=2 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED "
    "MaxMemPerNode=UNLIMITED TRES=cpu=8,mem=16000M,node=2,billing=8,gres/gpu=8")
NODE_LINE = (
    "NodeName=n1 Arch=x86_64 CoresPerSocket=4  CPUAlloc=1 CPUEfctv=4 CPUTot=4 CPULoad=0.82 "
    "AvailableFeatures=(null) ActiveFeatures=(null) Gres=gpu:4 NodeAddr=127.0.0.1 NodeHostName=vm "
    "Version=22.05.8 OS=Linux 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=8000 AllocMem=1000 "
    "FreeMem=20041 Sockets=1 Boards=1 State=MIXED ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A "
    "Partitions=gpu  BootTime=2026-11-29T19:54:05 SlurmdStartTime=2026-11-29T19:58:11 CfgTRES=cpu=4,"
    "mem=8000M,billing=4,gres/gpu=4 AllocTRES=cpu=1,mem=1000M,gres/gpu=1 CapWatts=n/a CurrentWatts=0")


def test_scontrol_lines_parse():
    p = part.parse_kv_line(PARTITION_LINE)
    assert p["PartitionName"] == "gpu" and p["MaxTime"] == "UNLIMITED" and p["Default"] == "YES"
    assert p["TRES"] == "cpu=8,mem=16000M,node=2,billing=8,gres/gpu=8"
    n = part.parse_kv_line(NODE_LINE)
    assert n["OS"] == "Linux 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0"  # a value with spaces
    assert (n["CPUTot"], n["RealMemory"], n["Gres"], n["Partitions"]) == ("4", "8000", "gpu:4", "gpu")


@pytest.mark.parametrize("gres,gpus", [("gpu:4", 4), ("gpu:a100:8(S:0-1)", 8), ("gpu:h100:4,shard:16", 4),
                                       ("gpu:a100:2(S:0),gpu:v100:2(S:1)", 4), ("(null)", 0), ("", 0),
                                       ("mps:100", 0)])
def test_gpu_count(gres, gpus):
    assert part.gpu_count(gres) == gpus


@pytest.mark.parametrize("text,mb", [("8000", 8000), ("8000M", 8000), ("32G", 32768), ("1T", 1048576),
                                     ("32gb", 32768), ("lots", None)])
def test_mem_mb(text, mb):
    assert part.mem_mb(text) == mb


def _cluster(**limits) -> part.Cluster:
    nodes = [part.Node("n1", 4, 8000, 4, "IDLE"), part.Node("n2", 4, 8000, 4, "MIXED"),
             part.Node("c1", 64, 256000, 0, "IDLE")]
    gpu = part.Partition("gpu", True, "UP", limits.get("max_time"), limits.get("max_nodes"), None,
                         limits.get("max_mem"), None, nodes[:2])
    cpu = part.Partition("cpu", False, "UP", None, None, None, None, None, nodes[2:])
    return part.Cluster({"gpu": gpu, "cpu": cpu})


def _spec(*overrides: str):
    return load_job(None, list(overrides), data={"defaults": ["cluster/dev"], "data": {"path": "x.parquet"},
                                                "model": {"path": "m"}})


def _refused(cluster, *overrides: str) -> str:
    with pytest.raises(ConfigError) as exc:
        part.check_request(_spec(*overrides), cluster)
    return str(exc.value)


def test_a_fitting_request_passes_and_uses_the_named_partition():
    assert part.check_request(_spec(), _cluster()).name == "gpu"
    assert part.check_request(_spec("slurm.partition=cpu", "slurm.gpus_per_node=0"), _cluster()).name == "cpu"
    assert part.check_request(_spec("slurm.partition=cpu,gpu"), _cluster()).name == "gpu"  # fits the second


def test_each_key_that_does_not_fit_is_named():
    c = _cluster(max_time=60, max_nodes=2, max_mem=6000)
    msg = _refused(c, "slurm.cpus_per_task=8")
    assert msg.startswith("slurm.cpus_per_task=8 does not fit partition gpu") and "at most 4 CPUs" in msg
    msg = _refused(c, "slurm.cpus_per_task=null", "slurm.cpus_per_gpu=8")
    assert msg.startswith("slurm.cpus_per_gpu=8 x 1 GPU(s) = 8 CPUs does not fit") and "at most 4 CPUs" in msg
    msg = _refused(c, "slurm.gpus_per_node=5")
    assert msg.startswith("slurm.gpus_per_node=5 does not fit") and "at most 4 GPUs" in msg
    msg = _refused(c, "rollout.tensor_model_parallel_size=8", "trainer.n_gpus_per_node=8")
    assert msg.startswith("rollout.tensor_model_parallel_size x pipeline_model_parallel_size = 8 GPUs")
    msg = _refused(c, "slurm.mem=16G")
    assert msg.startswith("slurm.mem=16G (16384 MB) does not fit") and "at most 8000 MB" in msg
    assert "MaxMemPerNode" in _refused(c, "slurm.mem=7000M")
    msg = _refused(c, "trainer.nnodes=3", "trainer.n_gpus_per_node=1")
    assert msg.startswith("trainer.nnodes=3 does not fit") and "MaxNodes" in msg
    msg = _refused(c, "slurm.time=02:00:00")
    assert msg.startswith("slurm.time=02:00:00 (120 min) exceeds partition gpu's MaxTime (60 min)")
    assert _refused(c, "slurm.partition=cpu").startswith(
        "rollout.tensor_model_parallel_size x pipeline_model_parallel_size = 1 GPUs does not fit partition "
        "cpu: its nodes have no GPUs")
    assert _refused(c, "slurm.partition=nope") == "slurm.partition=nope is not a partition of this cluster " \
                                                  "(partitions: gpu, cpu)"


def test_per_node_and_per_cpu_limits():
    c = _cluster()
    c.partitions["gpu"].max_cpus_per_node = 2
    assert "it allows at most 2 CPUs per node (MaxCPUsPerNode)" in _refused(c, "slurm.cpus_per_task=3")
    c.partitions["gpu"].max_mem_per_cpu_mb = 1000
    assert "at most 1000 MB per CPU x 2 CPUs (MaxMemPerCPU)" in _refused(c, "slurm.cpus_per_task=2", "slurm.mem=3G")


def test_node_count_and_shapes_together():
    c = _cluster()
    msg = _refused(c, "trainer.nnodes=3", "trainer.n_gpus_per_node=1")
    assert msg.startswith("trainer.nnodes=3 does not fit partition gpu: it has 2 node(s)")
    c.partitions["gpu"].nodes[1] = part.Node("n2", 2, 8000, 4, "IDLE")  # mixed shapes: only n1 has 4 CPUs
    msg = _refused(c, "trainer.nnodes=2", "trainer.n_gpus_per_node=1", "slurm.cpus_per_task=4")
    assert "only 1 of its nodes have 4 CPUs, 1 GPUs together" in msg


def test_no_partition_and_no_default():
    c = _cluster()
    c.partitions["gpu"].default = False
    assert _refused(c, "slurm.partition=null").startswith("slurm.partition is not set and the cluster has no default")


def test_additional_sbatch_options_are_left_to_sbatch():
    assert part.check_request(_spec("slurm.gpus_per_node=5", "+slurm.additional.gres=gpu:2"), _cluster())


def test_submit_check_skips_with_a_note_without_slurm(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol, no sbatch
    note = part.check_before_queueing(_spec("slurm.cpus_per_task=99"))
    assert note and "not on PATH" in note and "not checked" in note


def test_max_array_size_default_without_slurm(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    part.slurm_config.cache_clear()
    try:
        assert part.max_array_size() == part.DEFAULT_MAX_ARRAY_SIZE
    finally:
        part.slurm_config.cache_clear()


# --- on the throwaway cluster -------------------------------------------------------------------------


@pytest.mark.slurm
def test_submit_refuses_before_sbatch_naming_the_key(cluster, tmp_path):
    """More CPUs per task than the nodes have: one line naming slurm.cpus_per_task, exit 2, nothing queued or
    created (sbatch itself would say only 'Requested node configuration is not available')."""
    data = tmp_path / "d.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["hi"] * 4}), data)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    job = write_job(tmp_path / "job.yaml", data=data, model=model)
    run_dir = tmp_path / "run"
    res = hpcgen("submit", str(job), "slurm.cpus_per_task=8", "--run-dir", str(run_dir), env=cluster.env)
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip().splitlines()
    assert err[-1] == ("hpcgen: error: slurm.cpus_per_task=8 does not fit partition gpu: its nodes have at most "
                       "4 CPUs (2 nodes with 4 CPUs, 8000 MB, 4 GPUs)"), err
    assert "Traceback" not in res.stderr and not run_dir.exists()
    # the same request with cpus_per_gpu; a dry run warns and still shows the script (it may be for elsewhere)
    res = hpcgen("submit", str(job), "slurm.cpus_per_task=null", "slurm.cpus_per_gpu=6", "--run-dir", str(run_dir),
                 env=cluster.env)
    assert res.returncode == 2 and "slurm.cpus_per_gpu=6 x 1 GPU(s) = 6 CPUs does not fit" in res.stderr
    res = hpcgen("submit", str(job), "slurm.cpus_per_task=8", "--dry-run", env=cluster.env)
    assert res.returncode == 0 and "#SBATCH --cpus-per-task=8" in res.stdout
    assert ("warning: slurm.cpus_per_task=8 does not fit partition gpu: its nodes have at most 4 CPUs (2 nodes "
            "with 4 CPUs, 8000 MB, 4 GPUs) (submit would refuse it on this cluster)") in res.stderr
    # a fitting request dry-runs; the local executor is never checked against the partition
    assert hpcgen("submit", str(job), "--dry-run", env=cluster.env).returncode == 0
    res = hpcgen("submit", str(job), "slurm.cpus_per_task=8", "--dry-run", "--executor", "local", env=cluster.env)
    assert res.returncode == 0, res.stderr
    assert os.environ.get("SLURM_CONF") == cluster.env["SLURM_CONF"]
    real = part.read_cluster()  # the live cluster's two nodes, as the fast tests assume
    assert real.default == "gpu" and real.partitions["gpu"].shapes() == "2 nodes with 4 CPUs, 8000 MB, 4 GPUs"
    assert Path(cluster.slurm_conf).exists()
