"""Host shapes for the client tests: a host with dom0 only, so output is only what we cause."""

from __future__ import annotations

from pathlib import Path

HOST_ONLY = '[host]\nmemory = "1G"\ncpus = 2\ndom0_mem = "512M"\n'


def host_only(tmp_path: Path) -> tuple[str, str]:
    """`--config FILE` arguments for a dom0-only host."""
    path = tmp_path / "host-only.toml"
    path.write_text(HOST_ONLY)
    return "--config", str(path)
