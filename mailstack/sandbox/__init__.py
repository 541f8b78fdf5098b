"""`mailstack sandbox`: a local Debian host (a systemd container reached over SSH, like a VPS)
to try mailstack on, without a server. engine.py runs Docker, containers.py the hosts, image.py
builds the base image, host.py is the sandbox host and site.py the site pointing at it."""
