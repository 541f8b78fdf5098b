# Managed by mailstack (roles/probe).
"""Filters over the rendered files on the controller, for the mailstack modules.

The roles compare each file they would place with the host's copy by checksum: these
filters compute the checksums of the rendered files (on the controller, where the files
are; no content leaves it for this) and list a rendered directory's files.
mailstack_tree_content reads a whole tree for the common role's one-transfer staging;
mailstack_place_entries reads the files a role places in one mailstack_place call.
"""

from __future__ import annotations

import base64
import hashlib
import os

from ansible.errors import AnsibleFilterError


def mailstack_sha256(path):
    """sha256 of a controller file's bytes (what the copy module would compare)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 16), b""):
                digest.update(block)
    except OSError as exc:
        raise AnsibleFilterError(f"mailstack_sha256: cannot read {path}: {exc}") from exc
    return digest.hexdigest()


def mailstack_expect(src, dest, attrs=None, **more):
    """The mailstack_probe file entry for copying the controller file src to dest on the
    host: a regular file with src's checksum, and the attributes given as a dict and/or
    keywords (owner, group, mode, label)."""
    return {"path": str(dest), "state": "file", "sha256": mailstack_sha256(src),
            **(attrs or {}), **more}


def mailstack_expect_tree(src_dir, dest_dir, attrs=None, special=None, **more):
    """One mailstack_probe file entry per regular file below the controller directory
    src_dir, at the same relative path below dest_dir on the host: what copying
    `src_dir/` to `dest_dir/` would produce. The attributes (owner, group, mode, label; a
    dict and/or keywords) go into every entry; special maps a relative path to the
    attributes that differ for that file (one holding a secret)."""
    src_dir = str(src_dir)
    if not os.path.isdir(src_dir):
        raise AnsibleFilterError(f"mailstack_expect_tree: {src_dir} is not a directory")
    entries = []
    for dirpath, dirnames, filenames in os.walk(src_dir):
        dirnames.sort()
        for name in sorted(filenames):
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, src_dir)
            entries.append(mailstack_expect(src, os.path.join(str(dest_dir), rel), attrs,
                                            **{**more, **(special or {}).get(rel, {})}))
    return entries


def mailstack_tree_files(src_dir):
    """The regular files below the controller directory src_dir, as sorted relative paths
    (a role copies them one by one: a recursive copy of a tree holding a single file
    reports no change even when it makes one, and never notifies its handler)."""
    src_dir = str(src_dir)
    if not os.path.isdir(src_dir):
        raise AnsibleFilterError(f"mailstack_tree_files: {src_dir} is not a directory")
    return sorted(os.path.relpath(os.path.join(d, n), src_dir)
                  for d, _, names in os.walk(src_dir) for n in names
                  if os.path.isfile(os.path.join(d, n)))


def mailstack_expect_rendered(paths, rendered_root, attrs=None, **more):
    """mailstack_expect for each of several host paths, from their rendered copies below
    the controller directory rendered_root."""
    return [mailstack_expect(str(rendered_root) + str(p), p, attrs, **more) for p in paths]


def mailstack_expect_paths(paths, attrs=None, **more):
    """The same mailstack_probe file entry (state, owner, group, mode, sha256, label; a
    dict and/or keywords) for each of several host paths."""
    return [{"path": str(p), **(attrs or {}), **more} for p in paths]


def mailstack_expect_units(names, attrs=None, **more):
    """The same mailstack_probe unit entry (enabled, started; a dict and/or keywords) for
    each of several unit names. (The roles use ansible-core's own plugins and these only:
    a user's install has no collections; 0.1.0's community dict_kv failed there.)"""
    return [{"name": str(n), **(attrs or {}), **more} for n in names]


def mailstack_tree_content(src_dir):
    """Every regular file below the controller directory src_dir: relative path to its
    base64-encoded bytes (what the common role's mailstack_stage module writes on the
    host)."""
    src_dir = str(src_dir)
    if not os.path.isdir(src_dir):
        raise AnsibleFilterError(f"mailstack_tree_content: {src_dir} is not a directory")
    tree = {}
    for dirpath, _, filenames in os.walk(src_dir):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    tree[os.path.relpath(path, src_dir)] = base64.b64encode(f.read()).decode()
    return tree


def mailstack_place_entries(entries, rendered_root, probe, validate=None):
    """The mailstack_place entries for what the probe did not find in place: from entries
    in the probe's form (path, state, owner, group, mode), in order, each file with the
    bytes of its rendered copy (rendered_root + path) and its checker from validate
    (path to command, %s the candidate)."""
    found = (probe or {}).get("files", {})
    placed = []
    for entry in entries:
        path = str(entry["path"])
        if found.get(path, {}).get("ok"):
            continue
        state = entry.get("state", "file")
        item = {"dest": path, "state": state, "owner": entry["owner"], "group": entry["group"],
                "mode": entry["mode"]}
        if state == "file":
            src = str(rendered_root) + path
            try:
                with open(src, "rb") as f:
                    item["content"] = base64.b64encode(f.read()).decode()
            except OSError as exc:
                raise AnsibleFilterError(f"mailstack_place_entries: cannot read {src}: {exc}") from exc
            if validate and path in validate:
                item["validate"] = validate[path]
        placed.append(item)
    return placed


class FilterModule:
    def filters(self):
        return {
            "mailstack_sha256": mailstack_sha256,
            "mailstack_expect": mailstack_expect,
            "mailstack_expect_tree": mailstack_expect_tree,
            "mailstack_expect_paths": mailstack_expect_paths,
            "mailstack_expect_units": mailstack_expect_units,
            "mailstack_expect_rendered": mailstack_expect_rendered,
            "mailstack_tree_content": mailstack_tree_content,
            "mailstack_tree_files": mailstack_tree_files,
            "mailstack_place_entries": mailstack_place_entries,
        }
