"""What a run's federation uses of its machine: the memory and CPU of its process tree and,
where nvidia-smi answers, the GPU memory its processes hold and the utilisation of those GPUs.

Memory is the tree's proportional set size (PSS): the federation forks its clients, which share
most pages with it, and a sum of their RSS counts each shared page once per process (a 2-client
tiny run read 2 GB by RSS). Where PSS cannot be read (not Linux, no access), RSS is summed.

The supervisor samples every ``resource_sample_interval_s`` and records each sample as a
``resources`` event, so the run page draws it live and the API serves it with the run's role
rules. GPU fields are absent (None) when no GPU can be read, never zero for "unknown".
"""

import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

import psutil

NVIDIA_SMI_TIMEOUT_S = 5.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class ResourceSample:
    memory_bytes: int
    cpu_percent: float | None
    """None on a sampler's first sample: psutil measures CPU use between two calls."""
    processes: int
    gpu_memory_bytes: int | None = None
    gpu_utilization_percent: float | None = None

    def as_data(self) -> dict[str, Any]:
        return {name: value for name, value in asdict(self).items() if value is not None}

    def message(self) -> str:
        text = f"memory {self.memory_bytes / MIB:.0f} MiB"
        if self.cpu_percent is not None:
            text += f", CPU {self.cpu_percent:.0f}%"
        if self.gpu_memory_bytes is not None:
            text += f", GPU memory {self.gpu_memory_bytes / MIB:.0f} MiB"
        if self.gpu_utilization_percent is not None:
            text += f", GPU {self.gpu_utilization_percent:.0f}%"
        return text


@dataclass(frozen=True)
class GpuUse:
    memory_bytes: int
    utilization_percent: float | None


class TreeSampler:
    """Samples the process tree under ``pid``; keeps each process between samples, as psutil
    measures CPU use from one call to the next."""

    def __init__(self, pid: int, nvidia_smi: str | None = None) -> None:
        self.pid = pid
        self.nvidia_smi = nvidia_smi if nvidia_smi is not None else shutil.which("nvidia-smi")
        self._known: dict[int, psutil.Process] = {}

    def sample(self) -> ResourceSample | None:
        """None when the root process is gone (or exiting)."""
        try:
            root = psutil.Process(self.pid)
            if root.status() == psutil.STATUS_ZOMBIE:
                return None
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        first = not self._known
        memory = 0
        cpu = 0.0
        alive: dict[int, psutil.Process] = {}
        for process in tree:
            known = self._known.get(process.pid, process)
            try:
                used = _memory_of(known)
                busy = known.cpu_percent(None)  # 0.0 on a process's first sample
            except psutil.Error:  # gone, or a zombie, since the tree was listed
                continue
            memory += used
            cpu += busy
            alive[process.pid] = known
        self._known = alive
        if not alive:
            return None
        gpu = gpu_use(self.nvidia_smi, set(alive)) if self.nvidia_smi else None
        return ResourceSample(
            memory_bytes=memory,
            cpu_percent=None if first else round(cpu, 1),
            processes=len(alive),
            gpu_memory_bytes=gpu.memory_bytes if gpu else None,
            gpu_utilization_percent=gpu.utilization_percent if gpu else None,
        )


def _memory_of(process: psutil.Process) -> int:
    """PSS where it can be read, else RSS."""
    try:
        pss: int = process.memory_full_info().pss
        return pss
    except (psutil.AccessDenied, AttributeError):
        rss: int = process.memory_info().rss
        return rss


def gpu_use(nvidia_smi: str, pids: set[int]) -> GpuUse | None:
    """GPU memory held by ``pids`` and the mean utilisation of the GPUs they use; None when
    nvidia-smi fails or lists no GPU."""
    apps = _query(nvidia_smi, "--query-compute-apps=gpu_uuid,pid,used_memory")
    gpus = _query(nvidia_smi, "--query-gpu=uuid,utilization.gpu")
    if apps is None or not gpus:
        return None
    memory_mib = 0.0
    used: set[str] = set()
    for row in apps:
        if len(row) == 3 and row[1].isdigit() and int(row[1]) in pids:
            used.add(row[0])
            memory_mib += _number(row[2]) or 0.0
    utilization = [
        value for row in gpus if len(row) == 2 and row[0] in used
        if (value := _number(row[1])) is not None
    ]  # fmt: skip
    mean = round(sum(utilization) / len(utilization), 1) if utilization else None
    return GpuUse(memory_bytes=int(memory_mib * MIB), utilization_percent=mean)


def _query(nvidia_smi: str, query: str) -> list[list[str]] | None:
    try:
        result = subprocess.run(
            [nvidia_smi, query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return [
        [cell.strip() for cell in line.split(",")]
        for line in result.stdout.splitlines()
        if line.strip()
    ]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None
