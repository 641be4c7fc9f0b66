"""Token authentication for every Ray cluster this project starts.

Why: a Ray cluster runs whatever a connected client submits, as the user who started it. Without
authentication anyone who can reach the head's port (any user on a shared cluster's network) can
run code with the job's data and credentials. So every Ray we start (the job's cluster from the
SLURM scripts and submitit, the local Ray of tests and the demo) runs with ``RAY_AUTH_MODE=token``
and a fresh random token, and every process of the job (Ray daemons, actors, trainer ranks) gets
that token through its environment, never through a file in ``$HOME``, a log, a config or a
checkpoint. A cluster the user brings (``RAY_ADDRESS``) keeps the user's own settings.

Ray reads the token from ``RAY_AUTH_TOKEN`` (before ``RAY_AUTH_TOKEN_PATH`` and ``~/.ray/auth_token``;
we unset the path so that a user's file can never be picked instead). ``ray.init()`` with token
mode and no token would write a new one into ``~/.ray/auth_token``: ``use_token`` sets it first.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, MutableMapping

MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
TOKEN_BYTES = 32  # 256 bits, as Ray's own generator

# The same token made in a shell (SLURM batch scripts, submitit's setup lines): 32 bytes of the
# kernel's CSPRNG as hex, never echoed. The command is written into submitit's sbatch file; the
# token it makes exists only in the job's environment.
SHELL_EXPORT_NEW_TOKEN = (
    f"export {MODE_ENV}=token {TOKEN_ENV}=\"$(od -An -tx1 -N{TOKEN_BYTES} /dev/urandom | tr -d ' \\n')\"; "
    f"unset {TOKEN_PATH_ENV}"
)


def new_token() -> str:
    """A fresh token: 32 bytes from ``secrets`` (the OS CSPRNG), hex encoded."""
    return secrets.token_hex(TOKEN_BYTES)


def apply_token(env: MutableMapping[str, str], token: str) -> MutableMapping[str, str]:
    """Put token mode and ``token`` into ``env`` (a dict for a child process, or os.environ)."""
    env[MODE_ENV] = "token"
    env[TOKEN_ENV] = token
    env.pop(TOKEN_PATH_ENV, None)
    return env


def token_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The job's token when ``env`` (default os.environ) is in token mode and carries one."""
    env = os.environ if env is None else env
    if env.get(MODE_ENV, "").lower() == "token" and env.get(TOKEN_ENV):
        return env[TOKEN_ENV]
    return None


def use_token(token: str) -> None:
    """Make this process (and the Ray processes it starts) use ``token``.

    Ray caches the auth mode and the token in C++ on first use; both caches are refreshed so a
    process that already ran a Ray (another token, or none) switches cleanly. Call before
    ``ray.init``, never while connected.
    """
    apply_token(os.environ, token)
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # nothing cached to refresh in this Ray
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
