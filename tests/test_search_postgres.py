"""A search study on a real database: PostgreSQL from Debian's packages, started here on a
loopback port in a temporary data directory. Two worker processes share one study and finish
the requested trials together, none run twice; a worker killed mid-trial leaves the study
usable, and running the command again completes it (the dead worker's trial retried)."""
from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
pytestmark = pytest.mark.skipif(not BINARIES and not shutil.which("initdb"),
                                reason="PostgreSQL server binaries not installed (apt-get install postgresql; "
                                       ".ci/run installs them)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    bindir = Path(BINARIES[-1]).parent if BINARIES else Path(shutil.which("initdb")).parent
    root = os.geteuid() == 0
    # initdb refuses to run as root: the server runs as Debian's `postgres` user then, in a
    # folder of its own outside pytest's (root-only) temporary tree
    as_user = ["runuser", "-u", "postgres", "--"] if root else []
    folder = Path(tempfile.mkdtemp(prefix="medkit-pg-"))
    data = folder / "data"
    if root:
        shutil.chown(folder, "postgres")
    port = _free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "medkit", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-o",
                    f"-h 127.0.0.1 -p {port} -k {folder}", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://medkit@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _command(url: str, outputs: Path, data_root: Path, study: str, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medkit", "search", "--method", "coop", "--dataset", "synth_ortho12", "--profile",
            "smoke", "--shots", "2", "--seeds", "1", "--trials", str(trials), "--storage", url, "--study", study,
            "--outputs", str(outputs), "--data-root", str(data_root), *extra]


def _ran(log_text: str) -> list[int]:
    return [int(n) for n in re.findall(r"^trial (\d+): (?:val acc|pruned)", log_text, re.M)]


def test_two_workers_share_one_study_and_run_each_trial_once(postgres_url, tmp_path, smoke_data):
    import optuna

    out = subprocess.run(_command(postgres_url, tmp_path, smoke_data, "shared", 5, "--workers", "2"),
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    finished = [t.number for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 5
    assert all(t.user_attrs.get("surplus") for t in study.trials if t.state.name == "FAIL")  # asked for, never run
    logs = [p.read_text() for p in sorted((tmp_path / "search" / "shared").glob("worker_*.log"))]
    assert len(logs) == 2
    ran = [n for text in logs for n in _ran(text)]
    assert sorted(ran) == sorted(finished)  # every finished trial ran in exactly one worker
    assert "✓ search shared" in out.stdout


def test_a_killed_worker_leaves_the_study_usable_and_a_rerun_completes_it(postgres_url, tmp_path, smoke_data):
    import optuna

    worker = subprocess.Popen(_command(postgres_url, tmp_path, smoke_data, "killed", 5, "--worker", "0"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim, deadline = None, time.time() + 240
    while victim is None and time.time() < deadline and worker.poll() is None:
        time.sleep(0.05)
        try:
            trials = optuna.load_study(study_name="killed", storage=postgres_url).trials
        except KeyError:  # not created yet
            continue
        running = [t for t in trials if t.state.name == "RUNNING" and len(t.params) == 3]  # suggested: training
        if running and any(t.state.name == "COMPLETE" for t in trials):
            worker.send_signal(signal.SIGKILL)
            victim = running[0].number
    worker.wait(timeout=30)
    assert victim is not None, "the worker finished before it could be killed mid-trial"
    study = optuna.load_study(study_name="killed", storage=postgres_url)
    assert study.trials[victim].state.name == "RUNNING"  # left behind by the dead process
    out = subprocess.run(_command(postgres_url, tmp_path, smoke_data, "killed", 5), capture_output=True, text=True,
                         timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = optuna.load_study(study_name="killed", storage=postgres_url).trials
    assert trials[victim].state.name == "FAIL" and "died" in trials[victim].user_attrs["failed_because"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == victim]
    assert len(retry) == 1 and retry[0].params == trials[victim].params and retry[0].state.name in ("COMPLETE", "PRUNED")
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 5
