"""A search study on a real database: PostgreSQL from Debian's packages, started here on a
loopback port in a temporary data directory. Two worker processes share one study; one is
killed mid-trial, the other fails its trial and runs it again, together they finish the
requested trials with none run twice; running the command again resumes the finished study."""
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
    return [int(n) for n in re.findall(r"^trial (\d+): (?:validation|pruned)", log_text, re.M)]


def test_two_workers_share_a_study_a_killed_one_leaves_it_usable_and_a_rerun_completes_it(postgres_url, tmp_path,
                                                                                            smoke_data):
    import optuna

    storage = optuna.storages.RDBStorage(postgres_url)  # one connection pool for all the polling below
    command = _command(postgres_url, tmp_path, smoke_data, "shared", 6, "--workers", "2")
    search = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, deadline = None, time.time() + 300
    while victim is None and time.time() < deadline and search.poll() is None:
        time.sleep(0.1)
        try:
            trials = optuna.load_study(study_name="shared", storage=storage).trials
        except KeyError:  # not created yet
            continue
        running = [t for t in trials if t.state.name == "RUNNING" and len(t.params) == 3]  # suggested: training
        if running and any(t.state.name == "COMPLETE" for t in trials):
            victim = running[0]
            os.kill(int(victim.user_attrs["worker"].rpartition(":")[2]), signal.SIGKILL)
    out, err = search.communicate(timeout=400)
    assert victim is not None, "the workers finished before one could be killed mid-trial"
    # the other worker failed the dead one's trial, ran it again and finished the study; the
    # command says a worker died
    assert search.returncode == 1 and "1 search worker(s) failed" in err and "exit -9" in err, err[-2000:]
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    finished = [t.number for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6
    assert trials[victim.number].state.name == "FAIL" and "died" in trials[victim.number].user_attrs["failed_because"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retry) == 1 and retry[0].params == victim.params and retry[0].number in finished
    others = [t for t in trials if t.state.name == "FAIL" and t.number != victim.number]
    assert all(t.user_attrs.get("surplus") for t in others)  # asked for beyond the 6, never run
    logs = [p.read_text() for p in sorted((tmp_path / "search" / "shared").glob("worker_*.log"))]
    ran = [n for text in logs for n in _ran(text)]
    assert len(logs) == 2 and sorted(ran) == sorted(finished)  # each finished trial ran in exactly one worker
    again = subprocess.run(command, capture_output=True, text=True, timeout=400)  # the same command: resumes
    assert again.returncode == 0, again.stderr[-3000:]
    assert "✓ search shared" in again.stdout
    assert len(optuna.load_study(study_name="shared", storage=storage).trials) == len(trials)  # nothing more ran
