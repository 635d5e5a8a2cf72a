"""Host description: `--memory/--cpus/--dom0-mem`, the TOML host config (docs/contract.md)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emu.workload import Workload

from emu.mm.page import PAGE_SHIFT, PAGE_SIZE

MAX_HOST_MEMORY = 64 << 30
MIN_HOST_MEMORY = 64 << 20
MAX_CPUS = 64

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class ConfigError(ValueError):
    """A bad host option or config file; the message is one line for the user."""


def parse_size(text: str | int, default_unit: str = "m") -> int:
    """Parse `512M`, `4G`, `64G`, `1024` (MiB by default) into bytes."""
    if isinstance(text, bool):
        raise ConfigError(f"invalid size: {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"invalid size: {text}")
        return text * _UNITS[default_unit]
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ConfigError(f"invalid size: {text!r}")
    unit = m.group(2).lower() or default_unit
    if m.group(2) == "" and m.group(3) and m.group(3).lower() == "b":
        unit = "b"
    mult = 1 if unit == "b" else _UNITS[unit]
    return int(m.group(1)) * mult


@dataclass
class DomainSpec:
    """One `[[domain]]` table or `xl create` configuration."""

    name: str
    memory: int = 128  # MiB
    maxmem: int | None = None  # MiB
    vcpus: int = 1
    workload: str = "idle"
    type: str = "hvm"  # xl's type=: "pv" builds a 64-bit PV guest from `kernel` (emu/pv/)
    kernel: str | None = None
    cmdline: str = ""
    # What xl does when the domain shuts down (emu/shutdown.py; xl's defaults).
    on_poweroff: str = "destroy"
    on_crash: str = "destroy"
    on_reboot: str = "restart"
    on_watchdog: str = "destroy"
    on_soft_reset: str = "soft-reset"
    uuid: str | None = None  # a restarted domain keeps its UUID (None: a new one)
    max_event_channels: int = 1023  # libxl's default: ports 1..1023
    # The workload parsed, fit-checked and (asm:) assembled for this spec, once, by
    # emu.workload.check_workload(); `xl create` fills it off the console's thread.
    prepared: Workload | None = field(default=None, repr=False, compare=False)
    # How `kernel=` is read: None opens the host path (a host config's own domains);
    # xenconsole's dom0 passes a reader confined to dom0's filesystem (xenconsole/dom0/fs.py),
    # raising OSError with the reason shown.
    read_file: Callable[[str], bytes] | None = field(default=None, repr=False, compare=False)
    # The `xl create` daemon's log (/var/log/xen/xl-NAME.log), one line per call; set by
    # dom0's `xl create` (emu/shutdown.py writes it), None for the host config's domains.
    xl_log: Callable[[str], None] | None = field(default=None, repr=False, compare=False)
    monitored: bool = True  # False: `xl create -e`, no daemon acts on the domain's shutdown


@dataclass
class HostConfig:
    memory: int = 4 << 30  # bytes
    cpus: int = 2
    dom0_mem: int = 512 << 20  # bytes
    domains: list[DomainSpec] = field(default_factory=list)

    @property
    def total_pages(self) -> int:
        return self.memory >> PAGE_SHIFT

    def validate(self) -> None:
        if self.memory < MIN_HOST_MEMORY or self.memory > MAX_HOST_MEMORY:
            raise ConfigError(
                f"host memory must be between {MIN_HOST_MEMORY >> 20}M and "
                f"{MAX_HOST_MEMORY >> 30}G, got {self.memory >> 20}M"
            )
        if self.memory % (2 << 20):
            raise ConfigError("host memory must be a multiple of 2M")
        if not 1 <= self.cpus <= MAX_CPUS:
            raise ConfigError(f"cpus must be between 1 and {MAX_CPUS}, got {self.cpus}")
        if self.dom0_mem < (64 << 20) or self.dom0_mem % PAGE_SIZE:
            raise ConfigError("dom0 memory must be at least 64M and page-aligned")
        if self.dom0_mem > self.memory // 2:
            raise ConfigError("dom0 memory must be at most half of host memory")
        names = set()
        for d in self.domains:
            if d.name in names or d.name == "Domain-0":
                raise ConfigError(f"duplicate domain name {d.name!r}")
            names.add(d.name)


DEFAULT_CONFIG = """\
[host]
memory = "4G"
cpus = 2
dom0_mem = "512M"

[[domain]]
name = "guest1"
memory = 512
vcpus = 1
workload = "touch:pages=32768"

[[domain]]
name = "guest2"
memory = 256
vcpus = 2
workload = "touch:pages=4096,write=1"
"""

_HOST_KEYS = {"memory", "cpus", "dom0_mem"}
_ACTION_KEYS = ("on_poweroff", "on_reboot", "on_watchdog", "on_crash", "on_soft_reset")
_DOMAIN_KEYS = {"name", "memory", "maxmem", "vcpus", "workload", *_ACTION_KEYS}


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    return value


def domain_spec_from_mapping(d: dict, where: str = "domain") -> DomainSpec:
    unknown = set(d) - _DOMAIN_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    if "name" not in d or not isinstance(d["name"], str) or not d["name"]:
        raise ConfigError(f"{where}: 'name' is required")
    spec = DomainSpec(name=d["name"])
    if "memory" in d:
        spec.memory = _int(d["memory"], f"{where}: memory")
    if "maxmem" in d:
        spec.maxmem = _int(d["maxmem"], f"{where}: maxmem")
    if "vcpus" in d:
        spec.vcpus = _int(d["vcpus"], f"{where}: vcpus")
    if "workload" in d:
        if not isinstance(d["workload"], str):
            raise ConfigError(f"{where}: workload must be a string")
        spec.workload = d["workload"]
    for key in _ACTION_KEYS:  # checked at create (emu/shutdown.py validate), as xl does
        if key in d:
            if not isinstance(d[key], str):
                raise ConfigError(f"{where}: {key} must be a string")
            setattr(spec, key, d[key])
    # Shape checks (a workload's fit is checked when the domain is created).
    if spec.memory <= 0:
        raise ConfigError(f"{where}: memory must be a positive number of MiB, got {spec.memory}")
    if spec.maxmem is not None and spec.maxmem < spec.memory:
        raise ConfigError(f"{where}: maxmem ({spec.maxmem}) is below memory ({spec.memory})")
    if not 1 <= spec.vcpus <= 128:
        raise ConfigError(f"{where}: vcpus must be between 1 and 128, got {spec.vcpus}")
    return spec


def parse_config_text(text: str, source: str = "<config>") -> HostConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: {e}") from None
    unknown = set(data) - {"host", "domain"}
    if unknown:
        raise ConfigError(f"{source}: unknown table {sorted(unknown)[0]!r}")
    host = data.get("host", {})
    if not isinstance(host, dict):
        raise ConfigError(f"{source}: [host] must be a table")
    bad = set(host) - _HOST_KEYS
    if bad:
        raise ConfigError(f"{source}: [host]: unknown key {sorted(bad)[0]!r}")
    cfg = HostConfig()
    if "memory" in host:
        cfg.memory = parse_size(host["memory"])
    if "cpus" in host:
        cfg.cpus = _int(host["cpus"], "cpus")
    if "dom0_mem" in host:
        cfg.dom0_mem = parse_size(host["dom0_mem"])
    doms = data.get("domain", [])
    if not isinstance(doms, list):
        raise ConfigError(f"{source}: [[domain]] must be an array of tables")
    cfg.domains = [domain_spec_from_mapping(d, f"{source}: domain {i}") for i, d in enumerate(doms)]
    return cfg


def load_config(path: str | None) -> HostConfig:
    """The host config from PATH, or the embedded default host."""
    if path is None:
        return parse_config_text(DEFAULT_CONFIG, "<default>")
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    return parse_config_text(text, path)
