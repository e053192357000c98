"""Where a run was trained: versions, device, thread count and git commit, for its record."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

import kdbench


def git_commit() -> str | None:
    """The commit of the kdbench checkout (None outside a git checkout)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(kdbench.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return commit or None


def environment(device: torch.device) -> dict:
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    )
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "kdbench": kdbench.__version__,
        "device": f"{device.type}:{device_name}",
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "platform": platform.platform(),
    }


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_jobs(device: str, threads: int) -> int:
    """Runs at once: one per `threads` CPU cores on CPU, one on an accelerator."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, available_cores() // threads)
