"""Issue 13 part 9: a slow command inside a dom0 shell-language line (`a && b || c`, a
function, `sh -c`; xenconsole/dom0/sh.py) waits off the reactor's thread, as a single command
does: every other client is served meanwhile, against a real `xenconsole serve`."""

from __future__ import annotations

import pytest

from xenconsole.testing import serve

pytestmark = pytest.mark.e2e
# gas spins on this until its CPU limit (emu/asm.py CPU_S, 4 s): a command that takes seconds.
BURNER = b".rept 1000\n.rept 1000\n.rept 1000\n.space 0\n.endr\n.endr\n.endr\n"


@pytest.mark.timeout(180)
def test_other_clients_answered_while_a_list_waits_for_its_slow_command(tmp_path):
    (tmp_path / "burn.S").write_bytes(BURNER)
    cfg = tmp_path / "burn.cfg"
    cfg.write_text(f'name = "burn"\nmemory = 4\nworkload = "asm:{tmp_path / "burn.S"}"\n')
    # The programs and configs are named by host path: dom0 sees the host.
    with serve("--dom0-root", "/") as host:
        host.wait_booted()
        with host.console("tcp", timeout=60) as a, host.console("telnet", timeout=60) as b:
            a.to_dom0()
            line = f"f() {{ xl create -q {cfg} && echo BURN''-OK || echo BURN''-DONE $?; }}; f"
            a.sendline(line)
            a.expect_exact(line[-40:])  # the echo of the line: the shell has it
            # While gas burns its CPU seconds, another client gets a debug key answered...
            key = b.debug_key("h", timeout=30)
            assert "(XEN) 'h' pressed -> showing installed handlers\n" in key
            # ... and the line has not come back yet: it was not holding the reactor.
            assert "BURN-" not in a.settle(quiet=0.2, timeout=1.0)
            a.expect(r"BURN-DONE (\d+)\r\n", timeout=60)
            assert a.match.group(1) == "3"  # the assembler was stopped: xl create's status
            assert "workload: asm: " in a.before and "assembler " in a.before
            assert "Domain-0" in a.run("xl list", timeout=10)
        assert host.proc.poll() is None
        assert "Traceback" not in host.stderr_text()
