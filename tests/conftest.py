"""Shared by every test module."""

import keyhandlers

# The built-in debug keys, registered as `xenconsole serve` does at start-up.
keyhandlers.load_builtin()
