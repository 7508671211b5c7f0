"""RQ4: NUMA topology and binding with ``numactl``.

``local`` binds CPUs and memory to the GPU's NUMA node, ``remote`` to another node.
A binding needs ``numactl`` on the PATH and at least two online nodes; otherwise the
cell is NS and ``unsupported`` says why. The bound cell runs in a child process started
through numactl, which records the CPUs and memory nodes it was actually allowed.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

SYS_NODES = Path("/sys/devices/system/node")


@dataclass(frozen=True)
class Topology:
    nodes: tuple[int, ...]
    numactl: str | None
    gpu_node: int | None
    cpus: dict[int, str] = field(default_factory=dict)

    def as_header(self) -> dict[str, str]:
        return {"numa_nodes": ",".join(map(str, self.nodes)) or "none",
                "numactl": self.numactl or "absent",
                "gpu_numa_node": "unknown" if self.gpu_node is None else str(self.gpu_node)}


def parse_range_list(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's list format)."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def topology(sys_nodes: Path = SYS_NODES, pci_bus_id: str | None = None) -> Topology:
    """Online NUMA nodes (from sysfs), numactl's path and the GPU's node (from its PCI
    device; None when unknown or the kernel reports -1)."""
    online = sys_nodes / "online"
    nodes = tuple(parse_range_list(online.read_text())) if online.is_file() else ()
    cpus = {}
    for n in nodes:
        path = sys_nodes / f"node{n}" / "cpulist"
        if path.is_file():
            cpus[n] = path.read_text().strip()
    gpu_node = None
    if pci_bus_id:
        path = Path("/sys/bus/pci/devices") / pci_bus_id.lower() / "numa_node"
        if path.is_file():
            value = int(path.read_text().strip())
            gpu_node = value if value >= 0 else None
    return Topology(nodes, shutil.which("numactl"), gpu_node, cpus)


def gpu_pci_bus_id() -> str | None:
    """The PCI bus id of the current CUDA device in sysfs spelling (0000:xx:yy.z)."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    bus = getattr(props, "pci_bus_id", None)
    domain = getattr(props, "pci_domain_id", 0)
    device = getattr(props, "pci_device_id", None)
    if bus is None or device is None:
        return None
    return f"{domain:04x}:{bus:02x}:{device:02x}.0"


def unsupported(binding: str, topo: Topology) -> str | None:
    """Why ``binding`` cannot run on this machine, or None when it can."""
    if binding == "none":
        return None
    if topo.numactl is None:
        return "numactl is not installed on this machine"
    if len(topo.nodes) < 2:
        return (f"this machine has {len(topo.nodes) or 'no'} NUMA node(s) "
                f"({','.join(map(str, topo.nodes)) or '-'}): local and remote are the same")
    return None


def target_node(binding: str, topo: Topology) -> int:
    """The node to bind to: the GPU's (or the first) for local, the next one for remote."""
    local = topo.gpu_node if topo.gpu_node in topo.nodes else topo.nodes[0]
    if binding == "local":
        return local
    return next(n for n in topo.nodes if n != local)


def numactl_prefix(binding: str, topo: Topology) -> list[str]:
    """['numactl', '--cpunodebind=N', '--membind=N'] for a supported binding."""
    reason = unsupported(binding, topo)
    if reason:
        raise ValueError(reason)
    node = target_node(binding, topo)
    return [str(topo.numactl), f"--cpunodebind={node}", f"--membind={node}"]


def range_list(values: list[int]) -> str:
    """[0, 1, 2, 3, 8] -> '0-3,8' (the kernel's list format)."""
    out: list[str] = []
    for v in sorted(values):
        if out and v == int(out[-1].rpartition("-")[2]) + 1:
            out[-1] = f"{out[-1].partition('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ",".join(out)


def applied_binding(status_path: str = "/proc/self/status") -> dict[str, str]:
    """The CPUs and memory nodes this process may use, as the kernel enforces them."""
    out = {"cpus_allowed": range_list(list(os.sched_getaffinity(0)))}
    try:
        text = Path(status_path).read_text()
    except OSError:
        return out
    m = re.search(r"^Mems_allowed_list:\s*(\S+)", text, re.MULTILINE)
    if m:
        out["mems_allowed"] = m.group(1)
    return out
