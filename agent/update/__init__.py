"""Signed updates: trust, bundles, the vendor's releases, the installer's state machine, the
unit hooks and the agent's part (docs/updates.md).

`layout` and `installer` import only the standard library and the project's own stdlib-only
`agent.storage.atomic` at module level: the Debian package's postinst runs the installer from
the wheelhouse (zipimport) with the target's bare `python3` before any release exists (the pypa
`installer` library is imported where it is used).
"""
