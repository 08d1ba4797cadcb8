"""Bearer tokens for the service.

The token comes from ``LIPSYNC_SERVE_TOKEN`` or a token file (created owner-only when missing).
Replicas never receive the token itself, only its SHA-256: a deployment's arguments are stored
by Serve's controller and shown by ``serve status`` / the dashboard, so the secret stays with
the process that started the service.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from lipsync.errors import ConfigError

TOKEN_ENV = "LIPSYNC_SERVE_TOKEN"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_token(token_file: str | os.PathLike | None) -> tuple[str, str]:
    """(token, where it came from). ``LIPSYNC_SERVE_TOKEN`` wins; else the file, written with a
    new random token (mode 0600) when missing; a file others can read is refused."""
    from_env = os.environ.get(TOKEN_ENV, "").strip()
    if from_env:
        return from_env, f"${TOKEN_ENV}"
    if token_file is None:
        raise ConfigError(f"no token: set {TOKEN_ENV} or pass --token-file")
    path = Path(token_file).expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        return path.read_text().strip(), f"{path} (created)"
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{path}: the service token is readable or writable by others (mode {mode:04o}); "
                          f"make it owner-only with: chmod 600 {path}")
    token = path.read_text().strip()
    if not token:
        raise ConfigError(f"{path}: the token file is empty")
    return token, str(path)


def bearer_matches(header: str | None, digest: str) -> bool:
    """Whether an ``Authorization`` header carries the token whose SHA-256 is ``digest``."""
    scheme, _, presented = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return False
    return hmac.compare_digest(token_digest(presented.strip()), digest)
