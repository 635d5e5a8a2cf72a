"""xenconsole: the serial debug console of an emulated Xen host.

`xenconsole/` moves bytes (transports, the console hub), runs the dom0 shell and the CLI, and
offers the expect API; the machine itself lives in `emu/`, the debug keys in `keyhandlers/`.
"""

__version__ = "0.1.0"
