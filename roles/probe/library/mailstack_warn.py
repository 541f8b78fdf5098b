#!/usr/bin/python3
# Managed by mailstack (roles/probe).
"""mailstack_warn: say something the user must read, as Ansible warnings.

`mailstack deploy` prints a module's warnings after its run, per host (a debug task's
message shows nowhere). Changes nothing.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mailstack_warn
short_description: Report warnings that mailstack deploy prints
options:
  msg:
    description: The warnings, one per item.
    type: list
    elements: str
    required: true
author: mailstack
"""

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(argument_spec={"msg": {"type": "list", "elements": "str",
                                                  "required": True}},
                           supports_check_mode=True)
    for text in module.params["msg"]:
        module.warn(text)
    module.exit_json(changed=False)


if __name__ == "__main__":
    main()
