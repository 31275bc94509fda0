"""Slurm on a real one-node local cluster: the sbatch template trains like one process, and a preempted job
checkpoints at a step boundary, requeues itself and resumes exactly.

The ``slurm`` tests are opt-in (``python -m pytest -m slurm``): the module fixture brings a cluster up
with tools/slurm/local_cluster.sh (root, apt-get; slurm-wlm + munge). When it cannot, the tests skip
with its message, except under CI (``CI=true``), where they fail and show the script's output and the
tails of the slurmctld, slurmd and munged logs: `.ci/run` must not pass having run no Slurm job.
Jobs are 2 tasks of CPU DDP (gloo) on SFT with a tiny model, compared with one process on the same
global batch, within 1e-5 (all-reduce sums in another order), like tests/test_ddp.py.
The last tests need no Slurm: RequeueOnSignal outside a job saves at the step boundary and stops, and a
cluster that does not come up fails under CI (a stand-in script) and skips elsewhere.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from lit_align.lightning.callbacks import Preempted
from lit_align.cli import main

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tools" / "slurm" / "local_cluster.sh"
SINGLE_NODE = ROOT / "tools" / "slurm" / "single_node.sbatch"
# What the failure of a cluster that did not come up shows (paths set by local_cluster.sh and Debian's munge).
CLUSTER_LOGS = [Path("/var/log/slurm/slurmctld.log"), Path("/var/log/slurm/slurmd.log"),
                Path("/var/log/munge/munged.log")]
GLOBAL_BATCH, STEPS = 4, 10
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}  # dropout would draw different masks per rank
JOB_TIMEOUT = 600  # seconds; a tiny job takes well under a minute on an idle 2-core machine
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def _config(folder: Path, devices: int, callbacks: list | None = None, auto_requeue: bool | None = None) -> Path:
    trainer = {
        "accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto",
        "precision": "32-true", "max_steps": STEPS, "logger": False, "limit_val_batches": 0,
        "num_sanity_val_steps": 0, "enable_progress_bar": False, "default_root_dir": str(folder),
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
                "dirpath": str(folder / "checkpoints"), "every_n_train_steps": 2, "save_top_k": 0, "save_last": True}},
            {"class_path": "lit_align.lightning.callbacks.HFExport", "init_args": {"dirpath": str(folder / "export")}},
            *(callbacks or []),
        ],
    }
    if auto_requeue is not None:  # as configs/trainer/slurm_multinode.yaml does; else Lightning detects Slurm itself
        trainer["plugins"] = [{"class_path": "lightning.pytorch.plugins.environments.SLURMEnvironment",
                               "init_args": {"auto_requeue": auto_requeue}}]
    config = {
        "seed_everything": 5,
        "trainer": trainer,
        "model": {"class_path": "lit_align.methods.SFT", "init_args": {"model": "tiny:causal-lm", "lora": LORA}},
        "data": {"train": {"class_path": "lit_align.tasks.countdown.CountdownSource", "init_args": {"num_problems": 16}},
                 "batch_size": GLOBAL_BATCH // devices, "max_length": 1024},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml"


class TrainStartStep(L.Callback):
    """On rank 0, print the step training starts at, after any checkpoint restore: a resumed run's marker."""

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            print(f"[test] training starts at step {trainer.global_step}", flush=True)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "export" / "model.safetensors")


def _assert_same_weights(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The uninterrupted reference: one process, the whole global batch, STEPS steps."""
    folder = tmp_path_factory.mktemp("one_process")
    main(["fit", "--config", str(_config(folder, devices=1))])
    return _weights(folder)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _text(value) -> str:
    """Captured output as text (a timed-out run hands back bytes or None)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"--- {path}: not readable ({error.strerror})"
    return f"--- {path} (last {lines} lines):\n" + "\n".join(text.splitlines()[-lines:])


def bring_up_cluster(script: Path = CLUSTER, logs: list[Path] = CLUSTER_LOGS, timeout: float = 900) -> None:
    """``script up``; when the cluster does not come up, skip, or under CI fail with the script's output and logs."""
    try:
        up = subprocess.run(["bash", str(script), "up"], check=False, capture_output=True, text=True, timeout=timeout)
        if up.returncode == 0:
            return
        reason, stdout, stderr = f"`{script.name} up` exited {up.returncode}", up.stdout, up.stderr
    except subprocess.TimeoutExpired as error:
        reason, stdout, stderr = f"`{script.name} up` ran past {timeout:.0f}s", _text(error.stdout), _text(error.stderr)
    except OSError as error:
        reason, stdout, stderr = f"could not run {script}: {error}", "", ""
    if not _in_ci():
        pytest.skip(f"local Slurm cluster did not come up: {reason}: {(stderr or stdout).strip()[-1500:]}")
    pytest.fail("\n".join([
        f"local Slurm cluster did not come up under CI ({reason}); the slurm tests ran nothing",
        f"--- {script.name} up, stdout:", stdout.strip()[-4000:],
        f"--- {script.name} up, stderr:", stderr.strip()[-4000:],
        *(_tail(log) for log in logs),
    ]), pytrace=False)


@pytest.fixture(scope="module")
def cluster():
    try:
        bring_up_cluster()
        yield
    finally:  # also after a failed `up`: stop whatever daemons it did start
        subprocess.run(["bash", str(CLUSTER), "down"], check=False, capture_output=True, text=True, timeout=120)


def _submit(folder: Path, config: Path) -> str:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    # The template asks for GPUs on a "gpu" partition; these overrides make it a 2-task CPU job here.
    cmd = ["sbatch", "--parsable", "--partition=debug", "--gres=none", "--nodes=1", "--ntasks-per-node=2",
           "--cpus-per-task=1", "--time=20", f"--chdir={folder}", "--export=ALL", f"--output={folder / 'slurm.out'}",
           str(SINGLE_NODE), str(config)]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def _job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], check=False, capture_output=True, text=True, timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _log(folder: Path) -> str:
    path = folder / "slurm.out"
    return path.read_text(errors="replace") if path.exists() else "(no job output yet)"


def _wait(job_id: str, folder: Path, until, what: str, timeout: float = JOB_TIMEOUT) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _job(job_id)
        if until(job):
            return job
        if job.get("JobState") in DONE:
            pytest.fail(f"job {job_id} ended {job.get('JobState')} before {what}:\n{_log(folder)[-4000:]}")
        time.sleep(1)
    subprocess.run(["scancel", job_id], check=False, timeout=30)
    pytest.fail(f"job {job_id} did not reach {what} within {timeout}s:\n{_log(folder)[-4000:]}")


def _finished(job: dict) -> bool:
    return job.get("JobState") in DONE


@pytest.mark.slurm
def test_two_task_job_trains_like_one_process(cluster, one_process, tmp_path):
    started = time.monotonic()
    job_id = _submit(tmp_path, _config(tmp_path, devices=2))
    job = _wait(job_id, tmp_path, _finished, "the end")
    log = _log(tmp_path)
    assert job["JobState"] == "COMPLETED", log[-4000:]
    assert "Starting with 2 processes" in log, log[-3000:]  # Lightning's DDP start-up line: world size 2
    _assert_same_weights(_weights(tmp_path), one_process)
    print(f"job {job_id}: {time.monotonic() - started:.0f}s")


@pytest.mark.slurm
def test_preempted_job_checkpoints_requeues_and_resumes_exactly(cluster, one_process, tmp_path):
    started = time.monotonic()
    progress = tmp_path / "step"
    slow = {"class_path": "fault_injection.StepProgress", "init_args": {"path": str(progress), "seconds": 1.0}}
    start = {"class_path": "test_slurm.TrainStartStep"}
    job_id = _submit(tmp_path, _config(tmp_path, devices=2, callbacks=[slow, start], auto_requeue=False))

    def reached_step_3(job: dict) -> bool:
        return progress.exists() and int(progress.read_text() or 0) >= 3

    _wait(job_id, tmp_path, reached_step_3, "step 3")
    # Without --batch/--full, scancel signals the job's steps but not the batch shell: the srun tasks
    # (every rank) get SIGUSR1, as with sbatch --signal=USR1@90 at the time limit.
    signalled = time.monotonic()
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True, timeout=30)
    requeued = _wait(job_id, tmp_path, lambda j: int(j.get("Restarts", 0)) >= 1, "a requeue", timeout=120)
    requeue_s = time.monotonic() - signalled
    job = _wait(job_id, tmp_path, _finished, "the end")
    log = _log(tmp_path)

    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", (requeued, job, log[-4000:])
    assert len(re.findall(rf"\[lit_align\] job {job_id} start", log)) == 2, log[-4000:]
    saved = re.findall(rf"SIGUSR1: saved (\S+) at step (\d+); requeued Slurm job {job_id}\b", log)
    assert len(saved) == 1, log[-4000:]
    path, step = saved[0][0], int(saved[0][1])
    assert 3 <= step < STEPS and path == str(tmp_path / "checkpoints" / "last.ckpt")
    assert re.search(r"Restoring states from the checkpoint path at \S*last\.ckpt", log), log[-4000:]
    # The first run starts at step 0; the requeued one restored the saved step, not a fresh start (which
    # would end with the same weights, so the weights alone cannot tell).
    starts = [int(s) for s in re.findall(r"\[test\] training starts at step (\d+)", log)]
    assert starts == [0, step], log[-4000:]
    # The stopped run exported nothing: one export, by the resumed run, at the end.
    assert log.count("[lit_align] exported the trained model") == 1, log[-4000:]
    _assert_same_weights(_weights(tmp_path), one_process)
    print(f"job {job_id}: requeued {requeue_s:.0f}s after the signal (checkpoint at step {step}), "
          f"{time.monotonic() - started:.0f}s in all")


def test_outside_slurm_the_signal_saves_at_the_step_boundary_and_stops(one_process, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))  # fault_injection
    for name in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    signal_at_3 = {"class_path": "fault_injection.KillAfterStep", "init_args": {"step": 3, "signal_name": "SIGUSR1"}}
    requeue = {"class_path": "lit_align.lightning.callbacks.RequeueOnSignal"}
    with pytest.raises(Preempted):
        main(["fit", "--config", str(_config(tmp_path, devices=1, callbacks=[signal_at_3, requeue]))])
    assert not (tmp_path / "export").exists()  # no export of a partly trained model
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3

    main(["fit", "--config", str(_config(tmp_path, devices=1, callbacks=[requeue])), "--ckpt_path", "last"])
    _assert_same_weights(_weights(tmp_path), one_process)


def test_a_cluster_that_does_not_come_up_fails_under_ci_with_its_logs_and_skips_elsewhere(tmp_path, monkeypatch):
    script = tmp_path / "broken_cluster.sh"
    script.write_text('echo "local_cluster.sh: starting slurmctld"\n'
                      'echo "local_cluster.sh: node is down" >&2\nexit 1\n')
    log = tmp_path / "slurmctld.log"
    log.write_text("".join(f"[t{i}] routine line\n" for i in range(100)) + "error: Node n1 not responding\n")
    logs = [log, tmp_path / "slurmd.log"]  # the second was never written

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as failed:
        bring_up_cluster(script, logs)
    message = str(failed.value)
    assert "broken_cluster.sh up` exited 1" in message and "ran nothing" in message
    assert "starting slurmctld" in message and "node is down" in message  # the script's stdout and stderr
    assert "error: Node n1 not responding" in message and "[t99]" in message and "[t10]" not in message  # a tail
    assert f"{logs[1]}: not readable" in message

    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="exited 1: local_cluster.sh: node is down"):
        bring_up_cluster(script, logs)
