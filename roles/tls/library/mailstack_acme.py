#!/usr/bin/python3
# Managed by mailstack (roles/tls).
"""mailstack_acme: run `mailstack-acme issue` and report it the way a deploy should.

Issued: changed. Current: ok. The CA could not issue (DNS not published yet, the CA
unreachable, a refused challenge): ok with a warning that names the cause, because the
self-signed stand-in keeps the server working and the next deploy or the renewal timer
tries again; a deploy must not fail on the CA's account.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mailstack_acme
short_description: Get the server's certificate from its ACME CA unless the one served is current
options:
  tool:
    description: The mailstack-acme program.
    type: path
    required: true
author: mailstack
"""

RETURN = r"""
outcome:
  description: issued, current or failed.
  type: str
  returned: always
message:
  description: What mailstack-acme said.
  type: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main() -> None:
    module = AnsibleModule(argument_spec={"tool": {"type": "path", "required": True}},
                           supports_check_mode=True)
    if module.check_mode:
        module.exit_json(changed=False, outcome="unknown", message="check mode: not asked")
    rc, out, err = module.run_command([module.params["tool"], "issue"])
    out, err = out.strip(), err.strip()
    if rc == 0:
        outcome = "issued" if out.startswith("issued") else "current"
        module.exit_json(changed=outcome == "issued", outcome=outcome, message=out)
    reason = err.splitlines()[-1] if err else f"exit status {rc}"
    module.warn(f"no certificate from the CA yet; the one served stays (self-signed until one "
                f"is issued) and the next deploy or the renewal timer tries again: {reason}")
    module.exit_json(changed=False, outcome="failed", message=reason)


if __name__ == "__main__":
    main()
