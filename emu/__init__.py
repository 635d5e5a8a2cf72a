"""The emulated machine: RAM, frame table, heap, domains, P2M/M2P, shadow paging, vCPUs.

Nothing here knows about sockets or text formats; `keyhandlers/` turns this state into
Xen's text and `xenconsole/` moves bytes.
"""
