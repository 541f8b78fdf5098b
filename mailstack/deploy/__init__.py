"""Deploying: the rendered files onto the hosts with Ansible over SSH (runner.py, events.py),
and the host tool run over SSH for unlock and status (remote.py, storage.py). Every SSH
connection is built by ssh.py."""
