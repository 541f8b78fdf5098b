"""Rendering: the site's desired state → the exact files of each host (renderer.py), from the
decisions made in context.py; and the DNS records the site needs (dns.py)."""
