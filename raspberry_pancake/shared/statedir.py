"""Where the programs keep their state (DESIGN.md "State"): the catalog, faces, masks, logouts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

APP = "pancake"
CATALOG_NAME = "pancake.db"
MODE = 0o700


def state_dir(explicit: Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """--state-dir when given, else $XDG_STATE_HOME/pancake (an absolute value only, per the
    XDG spec), else ~/.local/state/pancake. Nothing is created: see ensure()."""
    if explicit is not None:
        return explicit
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME", "")
    if not base or not os.path.isabs(base):  # the XDG spec: a relative value is ignored
        base = os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return Path(base) / APP


def catalog_path(explicit: Path | None = None, directory: Path | None = None,
                 env: Mapping[str, str] | None = None) -> Path:
    """--catalog when given, else pancake.db in the state directory (--state-dir or default)."""
    if explicit is not None:
        return explicit
    return state_dir(directory, env) / CATALOG_NAME


def ensure(path: Path) -> Path:
    """Make the state directory (and its parents) and make it 0700 if it is ours and looser:
    it holds the catalog and the logout list, which say what was recorded and who logged in.
    Raises OSError (the caller turns it into one line)."""
    path.mkdir(mode=MODE, parents=True, exist_ok=True)
    st = path.stat()
    # Someone else's directory (a shared /var/lib/pancake set up by an admin) is left alone.
    if st.st_mode & 0o077 and st.st_uid == os.getuid():
        path.chmod(MODE)
    return path
