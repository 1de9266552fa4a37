"""Everything the agent keeps on disk, in one place: where (`layout`), how (`atomic`, `sqlite`).

Rule: a file the agent creates is private (0600, never readable by other users) whatever the
process umask, and a folder it creates under state_dir lets no other user in.
"""
