"""Programs that run on the managed hosts, not on the controller.

They use only Python's standard library (Debian's python3 on the host), are rendered into
each host's tree like any config file (``build/<host>/usr/local/sbin/…``) and placed by the
roles, and the controller imports their constants (paths, exit codes) from here: one source.
"""
