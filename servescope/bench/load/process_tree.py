"""A process's descendants and threads, read from /proc (Linux)."""

from __future__ import annotations

from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Return the pids of a process's descendants, parents before children (/proc/PID/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop(0)
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            for child in children:
                if child not in found and child != pid:
                    found.append(child)
                    todo.append(child)
    return found


def threads(pid: int) -> list[int]:
    """Return the thread ids of a process ([] once it is gone)."""
    try:
        return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return []
