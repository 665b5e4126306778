"""Optuna studies shared by several processes: storage from a command-line string, the study
opened once per search (and refused when made for another), a worker loop that runs exactly
the requested number of trials, dead workers' trials failed and retried, worker processes
started and watched. Nothing here knows what a trial trains (`medkit.search` does).

Why the loop is its own (ask / tell, not `Study.optimize`): `optimize(n_trials=…)` counts per
process, and Optuna's `MaxTrialsCallback` checks only after a trial, so N workers overshoot by
up to N - 1. Here a worker claims a trial only while fewer than the requested number are
finished or running, and one asked for beyond it is closed unrun (FAIL, `surplus`).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from medkit.distributed import visible_gpus
from medkit.precision import NonFiniteLoss
from medkit.runs import json_safe

FINISHED = ("COMPLETE", "PRUNED")


class SearchError(ValueError):
    """A search that cannot run as asked (no space, a study made for something else, …)."""



def make_storage(storage: str, default_sqlite: Path):
    """An Optuna storage from a command-line string: "" → SQLite at `default_sqlite`;
    `journal:PATH` → JournalStorage (a file on a shared filesystem); a URL → RDBStorage, with
    heartbeats so that a trial of a worker that died is failed and retried."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    if storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(storage[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    url = storage
    engine: dict[str, Any] = {}
    if not storage:
        default_sqlite.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{default_sqlite}"
    if url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": 60}}  # workers wait for SQLite's write lock instead of failing
    elif "://" not in url:
        raise SearchError(f"--storage {storage!r}: give a database URL (sqlite:///…, postgresql://…) or journal:PATH")
    with quiet():  # heartbeats are "experimental" since Optuna 2.9
        return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=10, grace_period=60,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))


def sampler(seed: int = 0, startup: int = 10):
    import optuna

    return optuna.samplers.TPESampler(multivariate=True, n_startup_trials=startup, seed=seed)


def pruner():
    import optuna

    # prune from the 6th trial on, after the first reported epoch, below the median so far
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


def open_study(name: str, storage, attrs: Mapping[str, Any], seed: int = 0, startup: int = 10):
    """Create the study or load it; a study of that name made for another search is an error."""
    import optuna

    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=sampler(seed, startup), pruner=pruner())
    saved = study.user_attrs
    if not saved:
        for k, v in attrs.items():
            study.set_user_attr(k, json_safe(v))
        return study
    differs = sorted(k for k in attrs if json.dumps(saved.get(k), sort_keys=True) != json.dumps(json_safe(attrs[k]),
                                                                                                  sort_keys=True))
    if differs:
        raise SearchError(f"study {name!r} in this storage was made for another search (differs in {differs}: "
                          + "; ".join(f"{k}: study {saved.get(k)!r} vs now {json_safe(attrs[k])!r}" for k in differs)
                          + "); pass --study NAME for a new one")
    return study


def trial_states(study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def claimed(study, before: int | None = None) -> int:
    """Trials finished, or running (those numbered below `before` only)."""
    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state.name in FINISHED or (t.state.name == "RUNNING" and (before is None or t.number < before)):
            n += 1
    return n


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, killed but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def release_stale(study, storage) -> list[int]:
    """Fail the running trials whose worker is gone and enqueue their parameters again: a
    dead process on this host, or (RDB storages) a missed heartbeat. Returns their numbers."""
    import optuna
    from optuna.trial import TrialState

    released = []
    if isinstance(storage, optuna.storages.RDBStorage):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)  # its stale-trial callback enqueues the retry
        now = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        released += sorted(before - now - {t.number for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED})
    host = socket.gethostname()
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        where, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if where != host or not pid.isdigit() or _alive(int(pid)):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:  # the reason first: a finished trial takes no attribute
            storage.set_trial_user_attr(trial_id, "failed_because", f"worker {t.user_attrs['worker']} died")
            changed = storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except Exception:  # another worker released it first
            continue
        if changed:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            released.append(t.number)
    return released


@contextmanager
def quiet() -> Iterator[None]:
    """Optuna warns that heartbeats are meant for `Study.optimize` (this loop records them
    itself) and that `fail_stale_trials` is experimental: neither is news to a user."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


@contextmanager
def heartbeat(storage, trial) -> Iterator[None]:
    """Record the trial's heartbeat while it runs (RDB storages with heartbeats on)."""
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            storage.record_heartbeat(trial._trial_id)
            stop.wait(interval)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def work(study, storage, objective: Callable, n_trials: int, log: Callable[[str], None] = print,
         wait_s: float = 300.0, poll_s: float = 1.0) -> list[int]:
    """One worker's share: trials until `n_trials` are finished in the study. Once all are
    claimed it waits (up to `wait_s`) while other workers' trials run, and runs again any whose
    worker dies. Returns the numbers of the trials this worker ran."""
    import optuna
    from optuna.trial import TrialState

    me = f"{socket.gethostname()}:{os.getpid()}"
    ran = []
    waited = 0.0
    while True:
        with quiet():
            release_stale(study, storage)
            if claimed(study) >= n_trials:
                # all claimed: stay while others' trials run, since one of them may die and need running again
                running = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
                if not running or waited >= wait_s or sum(trial_states(study).get(k, 0) for k in FINISHED) >= n_trials:
                    return ran
                time.sleep(poll_s)
                waited += poll_s
                continue
            trial = study.ask()
        trial.set_user_attr("worker", me)
        if claimed(study, before=trial.number) >= n_trials:  # another worker took the last one
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            return ran
        with heartbeat(storage, trial):
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
                log(f"trial {trial.number}: pruned")
            except NonFiniteLoss as e:  # a learning rate too large diverges: a bad point, not a broken search
                trial.set_user_attr("failed_because", str(e).splitlines()[0][:300])
                study.tell(trial, state=TrialState.FAIL)
                log(f"trial {trial.number}: failed (non-finite loss)")
            except BaseException as e:
                trial.set_user_attr("failed_because", f"{type(e).__name__}: {e}"[:300])
                study.tell(trial, state=TrialState.FAIL)
                raise
            else:
                study.tell(trial, value)
                log(f"trial {trial.number}: validation {value:.4f} {trial.params}")
        ran.append(trial.number)



def start_workers(argv: Sequence[str], n: int, folder: Path) -> list[tuple[subprocess.Popen, Path]]:
    """N `python -m medkit search … --worker` processes, one GPU each where there are GPUs."""
    gpus = visible_gpus()
    folder.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(n):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        elif "OMP_NUM_THREADS" not in os.environ:
            # CPU workers share the cores: each one using them all oversubscribes them (measured:
            # a 12 s CoOp trial took 130-200 s with 2 workers of 2 threads each on 2 cores)
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
        log = folder / f"worker_{i}.log"
        with open(log, "w") as out:  # the child keeps its own copy of the descriptor
            procs.append((subprocess.Popen([sys.executable, "-m", "medkit", "search", *argv, "--worker", str(i)],
                                           env=env, stdout=out, stderr=subprocess.STDOUT), log))
    return procs


def wait_for_workers(procs, study, n_trials: int, progress: bool = True) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=n_trials, desc=f"search {study.study_name}", unit="trial", disable=not progress)
    try:
        while any(p.poll() is None for p, _ in procs):
            time.sleep(2)
            counts = trial_states(study)
            bar.n = min(n_trials, sum(counts.get(s, 0) for s in FINISHED))
            bar.set_postfix_str(", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())))
            bar.refresh()
    except BaseException:
        for p, _ in procs:
            p.terminate()
        raise
    finally:
        bar.close()
    failed = [(p.returncode, log) for p, log in procs if p.returncode != 0]
    if failed:
        tails = "\n".join(f"--- {log} (exit {rc}):\n" + "\n".join(log.read_text().splitlines()[-15:]) for rc, log in failed)
        raise SearchError(f"{len(failed)} search worker(s) failed:\n{tails}")


__all__ = ["FINISHED", "SearchError", "claimed", "heartbeat", "make_storage", "open_study", "pruner", "quiet",
           "release_stale", "sampler", "start_workers", "trial_states", "wait_for_workers", "work"]
