"""The site: the directory a user owns (directory.py) with its desired state (config.py,
edited by accounts.py and relay.py), its inventory (inventory.py) and its secrets
(secrets.py, vault.py, passwords.py). Names are checked by names.py."""
