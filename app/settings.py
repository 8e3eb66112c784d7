"""The server's settings: the only place that reads the environment (prefix ``LAYERSYNC_``)."""

import sys
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LAYERSYNC_")

    data_dir: Path = Field(Path("layersync-data"), description="Holds layersync.db and runs/<id>/.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL, e.g. postgresql://user:password@host/db (psycopg 3: the postgres extra; several "
        "servers on one machine may share it); empty: SQLite at DATA_DIR/layersync.db (one server per data dir).",
    )
    worker_slots: int | None = Field(
        None, ge=0, description="Runs that train at once; empty: one per visible GPU, one on a CPU-only machine; 0: none."
    )
    gpus: str | None = Field(None, description="GPU ids the workers may use, e.g. '0,1'; empty: detect.")
    # a list so a wrapper can run the worker, e.g. ["nice", "-n", "10", "python", "-m", "trainer"]
    worker_command: list[str] = Field(
        default_factory=lambda: [sys.executable, "-m", "trainer"],
        description="Command that starts a worker; --config, --output-dir and --no-progress are appended.",
    )
    # repr=False: the token must not end up in a log line or a traceback that prints the settings
    token: str | None = Field(
        None, repr=False, description="When set, every page needs a login and every /api route (but /api/health) "
        "Authorization: Bearer <token>; empty: no login (fine on 127.0.0.1 only).",
    )
    model_roots: list[Path] = Field(
        default_factory=list, description="Folders whose models a run submitted from the web may use, a JSON list, "
        "e.g. '[\"/models\"]'; empty: the built-in models only. The CLI is not restricted.",
    )

    cancel_grace_seconds: float = Field(
        10.0, gt=0, description="How long a cancelled worker may take to finish its step and checkpoint before it is "
        "killed (SIGKILL); each event it writes meanwhile restarts the wait, up to 6 times this in all.",
    )

    @field_validator("token")
    @classmethod
    def _empty_token_is_none(cls, token: str | None) -> str | None:
        # LAYERSYNC_TOKEN= (set but empty) must not turn on a login nobody can pass
        return token or None

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'layersync.db'}"
