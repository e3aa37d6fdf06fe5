"""Small process helpers shared by the embedded servers: free ports, pid files, stopping."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from pathlib import Path


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def pick_port(
    preferred: int | None,
    *,
    also_free: tuple[int, ...] = (),
    avoid: frozenset[int] | set[int] = frozenset(),
) -> int:
    """Return ``preferred`` if it (and ``preferred + o`` for each offset) is free, else another.

    SeaweedFS opens a gRPC port at ``http port + 10000`` for each of its servers, hence the
    offsets. Other candidates are tried from a random point of 20000-44999 so that stacks
    started at the same moment (parallel test runs) rarely race for the same port.
    """
    span = list(range(20000, 45000, 7))
    start = random.randrange(len(span))
    candidates = ([preferred] if preferred else []) + span[start:] + span[:start]
    for port in candidates:
        ports = [port] + [port + off for off in also_free]
        if any(p in avoid for p in ports):
            continue
        if all(port_is_free(p) for p in ports):
            return port
    raise RuntimeError("no free TCP port found on 127.0.0.1")


def read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name: state, ppid, pgrp, session..."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), None if it is gone or a zombie: a pid
    plus this names one process, even after the pid is reused."""
    fields = proc_stat(pid)
    return int(fields[19]) if fields and fields[0] != "Z" else None


def stop_group(pid: int, *, timeout: float = 20.0, first: int = signal.SIGINT) -> None:
    """Stop a process started in its own session, with everything it spawned.

    Sends ``first`` (SIGINT: what Ctrl+C does, which SeaweedFS and Airflow handle cleanly)
    to the whole process group, waits, then SIGKILLs whatever is left.
    """
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    for sig, wait in ((first, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        # fields: state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class GaveUp(RuntimeError):
    """Raised by a ``wait_until`` check that knows waiting longer cannot help (the process
    it waits for has exited): ``wait_until`` lets it through at once."""


def wait_until(check, *, timeout: float, interval: float = 0.1, what: str = "service") -> None:
    """Call ``check`` until it returns true; any exception but ``GaveUp`` counts as "not
    yet" and the last one is reported if ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except GaveUp:
            raise
        except Exception as exc:  # noqa: BLE001 - we report the last one on timeout
            last = exc
        time.sleep(interval)
    raise TimeoutError(
        f"{what} did not become ready in {timeout:.0f} s" + (f": {last}" if last else "")
    )


def tree_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by ``pid``, its reaped children and its live
    descendants, from ``/proc``; None if it is gone. What a server costs, workers included
    (PostgreSQL's backends are children of the postmaster)."""
    fields = proc_stat(pid)
    if fields is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None:
                children.setdefault(int(stat[1]), []).append(int(entry))
    total = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        stat = proc_stat(child)
        if stat is not None:
            total += int(stat[11]) + int(stat[12])
        todo += children.get(child, [])
    return total / tick
