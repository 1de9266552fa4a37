"""Installing and (later) updating releases: the install layout and the one installer.

Stdlib only, here and in `layout` and `installer`: the Debian package's postinst runs the
installer from the wheelhouse (zipimport) with the target's bare `python3` before any release
exists, so nothing outside the standard library (bar the pypa `installer` library, imported
where it is used) may be imported at module level.
"""
