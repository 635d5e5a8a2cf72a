"""Host shapes for the client tests: a host with dom0 only, so output is only what we cause."""

from __future__ import annotations

from pathlib import Path

HOST_ONLY = '[host]\nmemory = "1G"\ncpus = 2\ndom0_mem = "512M"\n'


def host_only(tmp_path: Path) -> tuple[str, str]:
    """`--config FILE` arguments for a dom0-only host."""
    path = tmp_path / "host-only.toml"
    path.write_text(HOST_ONLY)
    return "--config", str(path)


def busy_default_host(tmp_path: Path) -> tuple[str, str]:
    """`--config FILE` arguments for the default host with guest2 busy forever (random
    accesses on 2 vCPUs): the default guests do their work and then idle (issue 13), a test
    that needs guests running through something asks for this."""
    from emu.host import DEFAULT_CONFIG

    busy = DEFAULT_CONFIG.replace('"touch:pages=4096,write=1"', '"random:ws=4096"')
    assert busy != DEFAULT_CONFIG
    path = tmp_path / "busy-default.toml"
    path.write_text(busy)
    return "--config", str(path)
