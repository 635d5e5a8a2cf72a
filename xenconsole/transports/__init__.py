"""The console's transports (filled in by the next commit)."""
