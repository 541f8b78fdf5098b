"""`mailstack verify`: real SMTP/IMAP/TLS/DKIM probes of every host (run.py), built from
protocol clients (clients.py), the probes themselves (probes.py, roundtrip.py, dkim.py) and
the report (report.py)."""
