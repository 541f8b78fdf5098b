"""`mailstack sandbox`: a local Debian host (a systemd container reached over SSH, like a VPS)
to try mailstack on, without a server. docker.py runs the engine and the containers,
image.py builds the base image, host.py is the sandbox host, site.py the site for it."""
