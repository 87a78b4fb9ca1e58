"""The replicate targets through Slurm, on a real single-node cluster started by scripts/local_slurm.sh:
every row a Slurm job (the table equals the sequential launcher's), a requeued job (`scontrol requeue`)
and a preempted one (USR2, submitit's requeue) resume from last.pt and end with an uninterrupted run's
metrics, and a failed job is reported with its row, seed and error while the table is built from the rest.
The local cluster itself stops when the process that started it is SIGKILLed, and a stale one (its starter
and watchdog both killed) is stopped by the next start in the same folder instead of being reused.

Marked `slurm`; skipped with the reason when slurm-wlm/munge or the [slurm] extra is missing or the
daemons cannot start (ZONEOUT_REQUIRE_SLURM=1 turns that skip into a failure). The joblib multirun
and Makefile checks at the end need no Slurm.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
LOCAL_SLURM = ROOT / "scripts" / "local_slurm.sh"
# Smoke size: 6 epochs of 200 steps (about a second each here): a job interrupted after epoch 1 is still
# mid-run when Slurm kills it (KillWait=2 s after the SIGTERM, which submitit ignores).
EPOCHS = 6
SMOKE = ["model.hidden_size=25", f"trainer.max_epochs={EPOCHS}", "trainer.max_steps_per_epoch=200", "trainer.eval_max_batches=2",
         "trainer.eval_stream=false", "trainer.progress=false", "dataset.eval_batch_size=256", "trainer.threads=1",
         "device=cpu", "dataset.mirror=null"]
TINY = [*SMOKE[:1], "trainer.max_epochs=2", "trainer.max_steps_per_epoch=5", *SMOKE[3:]]
ROWS = {"unregularized": "ptb_char/unregularized", "zoneout": "ptb_char/zoneout"}


DAEMONS = ("munged", "slurmctld", "slurmd")


def skip_or_fail(reason: str):
    """Skip with the reason, or fail where ZONEOUT_REQUIRE_SLURM=1 says Slurm must run here."""
    if os.environ.get("ZONEOUT_REQUIRE_SLURM") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def slurm_missing() -> str | None:
    missing = [tool for tool in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(tool) is None]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing; apt-get install -y slurm-wlm munge)"
    return None


def close(a: float, b: float) -> bool:  # the tolerance of test_sigkill_then_resume_matches_uninterrupted
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


@pytest.fixture(scope="module")
def slurm_env():
    """A running local Slurm for this module: the environment that reaches it (SLURM_CONF, PATH)."""
    reason = slurm_missing()
    if reason is None:
        try:
            import hydra_plugins.hydra_submitit_launcher  # noqa: F401
            import submitit  # noqa: F401
        except ImportError:
            reason = "the [slurm] extra is not installed (make install-slurm, or pip install -e .[slurm])"
    folder = Path(tempfile.mkdtemp(prefix="zoneout-slurm-"))  # short: munge's socket path must fit 108 bytes
    if reason is None:
        started = subprocess.run([str(LOCAL_SLURM), "start", str(folder)], capture_output=True, text=True, timeout=180)
        if started.returncode != 0:
            reason = "local Slurm could not start: " + next(iter(started.stderr.strip().splitlines()), "no output")
    if reason is not None:
        shutil.rmtree(folder, ignore_errors=True)
        skip_or_fail(reason)
    try:
        yield {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"), "PATH": f"{folder / 'bin'}:{os.environ['PATH']}"}
    finally:
        subprocess.run([str(LOCAL_SLURM), "stop", str(folder)], timeout=180)


def running(pid: int) -> bool:
    """The process exists and has not exited (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[1].split()[0] != "Z"


def instance_pids(folder: Path) -> dict[str, int]:
    """The pids in a local Slurm's pidfiles: its daemons', and its watchdog's where it has one."""
    files = {name: folder / f"{name}.pid" for name in (*DAEMONS, "watchdog")}
    return {name: int(file.read_text()) for name, file in files.items() if file.is_file()}


class LocalCluster:
    """A local Slurm of one test's own, in a fresh folder, started from child processes of the test."""

    def __init__(self, folder: Path, logs: Path):
        self.folder, self.logs, self.children = folder, logs, []

    def start_in_child(self, how: str) -> subprocess.Popen:
        """A child (in its own process group) that starts the cluster and then waits; returned once it is up.
        `start`: a Python process that runs `local_slurm.sh start DIR`, as pytest does for slurm_env;
        `run`: `local_slurm.sh run -- sleep`, as .ci/run does."""
        marker, log = self.logs / f"up-{len(self.children)}", self.logs / f"child-{len(self.children)}.err"
        if how == "start":
            command = [sys.executable, "-c", "import pathlib, subprocess, sys, time\n"
                       "sys.exit(1) if subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL).returncode else None\n"
                       "pathlib.Path(sys.argv[1]).touch()\ntime.sleep(600)\n",
                       str(marker), str(LOCAL_SLURM), "start", str(self.folder)]
        else:
            command = [str(LOCAL_SLURM), "run", "--", "sh", "-c", 'touch "$0" && exec sleep 600', str(marker)]
        env = {key: value for key, value in os.environ.items() if key != "ZONEOUT_SLURM_OWNER"}
        with log.open("w") as stderr:
            child = subprocess.Popen(command, env={**env, "ZONEOUT_SLURM_DIR": str(self.folder)}, stdout=subprocess.DEVNULL,
                                     stderr=stderr, start_new_session=True)
        self.children.append(child)
        deadline = time.time() + 180
        while not marker.exists():
            if child.poll() is not None or time.time() > deadline:
                lines = log.read_text().splitlines()
                skip_or_fail("local Slurm could not start: " + next((line for line in lines if "error" in line),
                                                                     lines[0] if lines else "no output"))
            time.sleep(0.2)
        return child

    def wait_gone(self, pids: dict[str, int], seconds: float) -> dict[str, int]:
        """Waits up to `seconds` for these processes to end and the folder to be removed; those still running."""
        deadline = time.time() + seconds
        while (any(map(running, pids.values())) or self.folder.exists()) and time.time() < deadline:
            time.sleep(0.2)
        return {name: pid for name, pid in pids.items() if running(pid)}

    def close(self):
        for child in self.children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        # what a failing test left running (the old script's daemons outlive their starter), by its pidfiles
        subprocess.run([str(LOCAL_SLURM), "stop", str(self.folder)], timeout=180)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def local_cluster(tmp_path):
    reason = slurm_missing()
    if reason is not None:
        skip_or_fail(reason)
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="zoneout-slurm-")), tmp_path)  # short: munge's socket path
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.mark.slurm
@pytest.mark.parametrize("how", ["start", "run"])
def test_the_local_slurm_stops_when_the_process_that_started_it_is_killed(local_cluster, how):
    """SIGKILL the starter (`start`: its Python caller, as a killed pytest; `run`: the script's whole process
    group, as a time limit kills .ci/run): the instance's daemons end and its folder goes within 30 s."""
    child = local_cluster.start_in_child(how)
    pids = instance_pids(local_cluster.folder)
    assert all(running(pids[name]) for name in DAEMONS), pids
    if how == "run":
        os.killpg(child.pid, signal.SIGKILL)  # the script and the command it runs
    else:
        os.kill(child.pid, signal.SIGKILL)
    child.wait()
    left = local_cluster.wait_gone(pids, 30)
    assert not left, f"still running 30 s after the starter was SIGKILLed: {left}"
    assert not local_cluster.folder.exists()


@pytest.mark.slurm
def test_the_next_start_stops_a_stale_local_slurm_instead_of_reusing_it(local_cluster):
    """Starter and watchdog both SIGKILLed (the daemons left up, their owners gone): `start` in the same folder
    stops those daemons and starts its own."""
    child = local_cluster.start_in_child("start")
    stale = instance_pids(local_cluster.folder)
    if "watchdog" in stale:
        os.killpg(stale["watchdog"], signal.SIGKILL)  # its own process group: it and its `sleep`
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert all(running(stale[name]) for name in DAEMONS), stale
    env = {key: value for key, value in os.environ.items() if key != "ZONEOUT_SLURM_OWNER"}
    started = subprocess.run([str(LOCAL_SLURM), "start", str(local_cluster.folder)], env=env, capture_output=True,
                             text=True, timeout=180)
    assert started.returncode == 0, started.stderr
    left = {name: stale[name] for name in DAEMONS if running(stale[name])}
    assert not left, f"the stale daemons were reused or left running: {left}"
    assert "stale instance" in started.stderr, started.stderr
    fresh = instance_pids(local_cluster.folder)
    assert all(name in fresh and running(fresh[name]) and fresh[name] != stale.get(name)
               for name in (*DAEMONS, "watchdog")), (stale, fresh)
    assert subprocess.run([str(LOCAL_SLURM), "status", str(local_cluster.folder)], timeout=60).returncode == 0


def replicate_command(launcher: str, rows: list[str], seeds: list[int], *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "replicate.py"), "table1_ptb_char", *overrides, "--scale", "quick",
            "--logger", "csv", "--launcher", launcher, "--seeds", *map(str, seeds), "--rows", *rows]


def table_env(base: dict, folder: Path) -> dict:
    return {**base, "ZONEOUT_RUNS_DIR": str(folder / "runs"), "ZONEOUT_RESULTS_DIR": str(folder / "results")}


def summary(folder: Path, row: str, seed: int) -> dict:
    return json.loads((folder / "runs" / "quick" / ROWS[row] / f"seed{seed}" / "summary.json").read_text())


def table(folder: Path) -> dict:
    """The table replicate.py built: its overrides change the rows, so it is in an overrides-<hash>/ folder."""
    tables = sorted((folder / "results" / "quick").glob("overrides-*/table1_ptb_char.csv"))
    assert len(tables) == 1 and not (folder / "results" / "quick" / "table1_ptb_char.csv").exists(), tables
    with tables[0].open() as handle:
        return {row["experiment"]: row for row in csv.DictReader(handle)}


def slurm(env: dict, *args: str) -> str:
    done = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr.strip()}"
    return done.stdout.strip()


def job_fields(env: dict, job_id: str) -> dict:
    """The job's `scontrol -o show job` fields (JobState, Reason, ...) by name."""
    line = slurm(env, "scontrol", "-o", "show", "job", job_id)
    return dict(field.split("=", 1) for field in line.split() if "=" in field)


def interrupt_and_release(env: dict, run_dirs: dict, deadline: float) -> dict:
    """For each run (key -> (run dir, how)): once its last.pt exists (epoch 1 done), requeue its Slurm job,
    by `scontrol suspend` + `requeue` (what an admin or a preempting partition does) or by USR2 (the signal
    Slurm sends before a time limit or a preemption: submitit checkpoints the call and requeues itself);
    then, once Slurm holds it as requeued (~2 minutes of BeginTime; a suspended job is also held), start
    it now. Returns key -> job id."""
    job_ids, released = {}, set()
    while len(released) < len(run_dirs):
        assert time.time() < deadline, f"interrupted {job_ids}, released {released}"
        for key, (run_dir, how) in run_dirs.items():
            if key not in job_ids and (run_dir / "last.pt").exists():
                hydra_yaml = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())
                job_id = job_ids[key] = str(hydra_yaml["hydra"]["job"]["id"])  # the launcher sets the Slurm job id
                if how == "requeue":
                    # Suspended first (SIGSTOP): a requeued job gets KillWait (2 s) after its SIGTERM, which
                    # submitit ignores, and on a fast machine its last epochs fit in those 2 s: it finished
                    # before the kill and its rerun only found summary.json (a failed CI run, stop 20).
                    slurm(env, "scontrol", "suspend", job_id)
                    slurm(env, "scontrol", "requeue", job_id)
                else:  # submitit's handler requeues and exits at once: no window to close
                    slurm(env, "scancel", "--signal=USR2", job_id)
            elif key in job_ids and key not in released and (fields := job_fields(env, job_ids[key]))["JobState"] == "PENDING":
                if fields["Reason"].startswith("JobHeld"):  # a suspended job is requeued held
                    slurm(env, "scontrol", "release", job_ids[key])
                slurm(env, "scontrol", "update", f"JobId={job_ids[key]}", "StartTime=now")
                released.add(key)
        time.sleep(0.1)
    return job_ids


@pytest.mark.slurm
def test_table_through_slurm_equals_sequential_and_requeued_jobs_resume(slurm_env, prepared_data_dir, tmp_path, capsys):
    rows, seeds = ["unregularized", "zoneout"], [0, 1]
    overrides = [*SMOKE, f"dataset.data_dir={prepared_data_dir}"]
    sequential, through_slurm = tmp_path / "sequential", tmp_path / "slurm"
    done = subprocess.run(replicate_command("sequential", rows, seeds, *overrides), cwd=ROOT,
                          env=table_env(slurm_env, sequential), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    start = time.time()
    deadline = start + 600
    process = subprocess.Popen(replicate_command("slurm", rows, seeds, *overrides), cwd=ROOT,
                               env=table_env(slurm_env, through_slurm), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)  # its own group: killed whole on failure
    try:
        runs = through_slurm / "runs" / "quick"
        interrupted = {("unregularized", 0): "requeue", ("zoneout", 1): "usr2"}
        job_ids = interrupt_and_release(slurm_env, {(row, seed): (runs / ROWS[row] / f"seed{seed}", how)
                                                    for (row, seed), how in interrupted.items()}, deadline)
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)  # replicate.py and the Hydra driver it started
            process.wait()
    wall = time.time() - start
    assert process.returncode == 0, output[-3000:]

    for row in rows:
        for seed in seeds:
            plain, slurmed = summary(sequential, row, seed), summary(through_slurm, row, seed)
            assert slurmed["status"] == "finished" and slurmed["epochs_run"] == plain["epochs_run"] == EPOCHS
            assert close(slurmed["test"], plain["test"]) and close(slurmed["best_valid"], plain["best_valid"])
            assert slurmed["best_epoch"] == plain["best_epoch"]
            if (row, seed) in interrupted:  # resumed from last.pt, not restarted
                assert 1 <= slurmed["resumed_from_epoch"] < EPOCHS, slurmed
                restarts = slurm(slurm_env, "scontrol", "-o", "show", "job", job_ids[row, seed])
                assert "Restarts=0" not in restarts
                with capsys.disabled():
                    print(f"\n[{interrupted[row, seed]}] {row} seed {seed}: job {job_ids[row, seed]} resumed from epoch "
                          f"{slurmed['resumed_from_epoch']}; test BPC {slurmed['test']!r} (uninterrupted {plain['test']!r}), "
                          f"best valid {slurmed['best_valid']!r} ({plain['best_valid']!r}), best epoch "
                          f"{slurmed['best_epoch']} ({plain['best_epoch']})")
            else:
                assert "resumed_from_epoch" not in slurmed
    # The table built from the Slurm run folders is the sequential launcher's table.
    ours, theirs = table(through_slurm), table(sequential)
    assert ours.keys() == theirs.keys()
    for experiment, row in ours.items():
        for column in ("valid_mean", "test_mean", "test_std", "n_seeds"):
            if theirs[experiment][column] in ("", None):
                assert row[column] in ("", None)
            else:
                assert close(float(row[column]), float(theirs[experiment][column])), (experiment, column)
    with capsys.disabled():
        print(f"[slurm] 2 rows x 2 seeds through Slurm (two jobs requeued) in {wall:.0f} s")


@pytest.mark.slurm
def test_a_failed_slurm_job_is_reported_and_the_table_built_from_the_rest(slurm_env, prepared_data_dir, tmp_path):
    # stochastic depth is valid for the unregularized row but cannot be combined with zoneout
    done = subprocess.run(replicate_command("slurm", ["unregularized", "zoneout"], [0], *TINY,
                                            f"dataset.data_dir={prepared_data_dir}", "regularizer.stochastic_depth=0.1"),
                          cwd=ROOT, env=table_env(slurm_env, tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    assert ("error: 1 of 2 run(s) did not finish:\n  row zoneout (ptb_char/zoneout) seed 0: regularizer.stochastic_depth: "
            "cannot be combined with zoneout") in done.stderr
    built = table(tmp_path)
    assert built["ptb_char/unregularized"]["n_seeds"] == "1" and built["ptb_char/zoneout"]["n_seeds"] == "0"
    assert not (tmp_path / "runs" / "quick" / "ptb_char" / "zoneout" / "seed0" / "summary.json").exists()
    assert not [p for p in (tmp_path / "results").rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def test_a_diverged_multirun_job_is_reported_with_its_row_and_seed(prepared_data_dir, tmp_path):
    """The same report for the joblib launcher (no Slurm needed): a diverged row, the other row's table."""
    env = table_env(os.environ, tmp_path)
    command = replicate_command("joblib", ["zoneout"], [0, 1], *TINY, f"dataset.data_dir={prepared_data_dir}",
                                "optim.lr=1e9", "hydra.launcher.n_jobs=1")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    start = lines.index("error: 2 of 2 run(s) did not finish:")
    for seed, line in zip((0, 1), lines[start + 1:start + 3]):
        assert line.startswith(f"  row zoneout (ptb_char/zoneout) seed {seed}: training diverged (epoch 1"), line
    assert table(tmp_path)["ptb_char/zoneout"]["n_seeds"] == "0"


def test_make_slurm_launcher_installs_the_extra_and_passes_the_launcher():
    dry = subprocess.run(["make", "-n", "-B", "replicate-ptb-char", "LAUNCHER=slurm", "SCALE=quick", "SEEDS=0 1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "pip install -q -e '.[slurm]'" in dry.stdout
    assert "scripts/replicate.py table1_ptb_char  --scale quick --seeds 0 1 --launcher slurm" in dry.stdout
    plain = subprocess.run(["make", "-n", "-B", "replicate-ptb-char"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ".[slurm]" not in plain.stdout
