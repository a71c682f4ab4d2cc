"""What `cs` reads besides the services' settings: its own variables and its files.

Variables (environment, then `.env`, like `lib.config`): `CS_TOKEN` (an access token),
`CS_BASE_URL` (the producer), and the XDG base directories. Files: the dev user's id
(`$XDG_CONFIG_HOME/careershaper/dev-user`) and the last event seen of each followed job
(`$XDG_STATE_HOME/careershaper/streams/<job id>.json`), so `cs tail` resumes where it stopped.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from lib import config
from lib.auth import mint_access_token
from lib.errors import AuthError, ConfigError

DEFAULT_BASE_URL = "http://127.0.0.1:3000"
APP_DIR = "careershaper"


class CliSettings(BaseSettings):
    """The CLI's own variables."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    cs_token: str = ""
    cs_base_url: str = DEFAULT_BASE_URL
    xdg_config_home: str = ""
    xdg_state_home: str = ""

    @property
    def config_dir(self) -> Path:
        return Path(self.xdg_config_home or Path.home() / ".config") / APP_DIR

    @property
    def state_dir(self) -> Path:
        return Path(self.xdg_state_home or Path.home() / ".local" / "state") / APP_DIR


def cli_settings() -> CliSettings:
    return CliSettings()


def base_url(given: str | None) -> str:
    """`--base-url`, else `CS_BASE_URL`, else the local producer."""
    return (given or cli_settings().cs_base_url).rstrip("/")


def dev_user_id(settings: CliSettings, user: str | None = None) -> str:
    """The dev user's id: `user` if given, else the one stored on this machine (made once)."""
    if user:
        try:
            return str(uuid.UUID(user))
        except ValueError:
            raise ConfigError(f"--user must be a UUID, not {user!r}") from None
    path = settings.config_dir / "dev-user"
    if path.exists():
        stored = path.read_text().strip()
        try:
            return str(uuid.UUID(stored))
        except ValueError:
            raise ConfigError(f"{path} does not hold a UUID; delete it to make a new one") from None
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    user_id = str(uuid.uuid4())
    path.write_text(user_id + "\n")
    return user_id


def dev_token(user: str | None = None, ttl: int = 3600) -> tuple[str, str]:
    """Mint a dev access token; returns (token, user id).

    Signed with the public Supabase local dev secret, which only a development stack on
    loopback accepts (lib/config.py). Raises ConfigError when SUPABASE_JWT_SECRET is a real
    secret: real tokens come from Supabase Auth only.
    """
    settings = config.load("any")
    if settings.supabase_jwt_secret not in ("", config.DEV_JWT_SECRET):
        raise ConfigError("dev tokens use the public dev secret; SUPABASE_JWT_SECRET is a real one")
    user_id = dev_user_id(cli_settings(), user)
    return mint_access_token(user_id, config.DEV_JWT_SECRET, ttl=ttl), user_id


def access_token(token: str | None, dev: bool) -> str:
    """The token for API calls: `--token`, else a dev token with `--dev`, else `CS_TOKEN`.

    Raises AuthError when there is none.
    """
    if token:
        return token
    if dev:
        return dev_token()[0]
    env_token = cli_settings().cs_token
    if env_token:
        return env_token
    raise AuthError("no access token: pass --token, set CS_TOKEN, or use --dev (local stacks)")


@dataclass
class Cursor:
    """Where a client stopped reading a job's stream."""

    last_event_id: str | None = None
    attempt: int = 0


class Cursors:
    """The last event seen of each job followed from this machine."""

    def __init__(self, settings: CliSettings | None = None) -> None:
        self.dir = (settings or cli_settings()).state_dir / "streams"

    def _path(self, job_id: str) -> Path:
        return self.dir / f"{uuid.UUID(job_id)}.json"

    def load(self, job_id: str) -> Cursor:
        try:
            raw = json.loads(self._path(job_id).read_text())
            return Cursor(raw.get("last_event_id"), int(raw.get("attempt", 0)))
        except (OSError, ValueError, AttributeError):
            return Cursor()

    def save(self, job_id: str, cursor: Cursor) -> None:
        if cursor.last_event_id is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = {"last_event_id": cursor.last_event_id, "attempt": cursor.attempt}
        self._path(job_id).write_text(json.dumps(body))

    def forget(self, job_id: str) -> None:
        self._path(job_id).unlink(missing_ok=True)
