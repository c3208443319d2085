"""The run registry: one SQL record per train, eval, compare run and tuning trial (SQLAlchemy).

Where: ``--registry URL`` or ``$METALAB_REGISTRY`` (any SQLAlchemy URL, e.g. PostgreSQL for a team,
or a plain file path for SQLite; ``off`` turns recording off), else a SQLite file in the user's data
directory (``$XDG_DATA_HOME/metalab/registry.db``, by default
``~/.local/share/metalab/registry.db``).

What a record holds: kind (train | eval | compare | trial | study), status, algorithm, dataset
and its descriptor (name, split, classes, examples per class, input shape or modality), the
evaluated setting (ways, shots, queries), the final result (metric, value, 95% CI), the resolved
config, seed, world size, hardware, torch and metalab versions, commit, command, run directory,
wall time and the validation curve (table ``curve``, written as training goes, so a run that dies
keeps its curve so far and shows as unfinished).

Concurrency: SQLite writers take the database lock at the start of each transaction
(``BEGIN IMMEDIATE``) and wait up to a minute for it, so several processes (tuning workers, torchrun
ranks) writing at once lose nothing (tested with concurrent processes). Schema: versioned in table
``meta``; opening an older registry upgrades it in place (``MIGRATIONS``), a newer one is refused
with a message.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from metalab.experiments.errors import RegistryError, require

SCHEMA_VERSION = 2
ENV = "METALAB_REGISTRY"
OFF = ("off", "none", "0", "false", "")
FINAL = ("finished", "stopped", "interrupted", "failed", "pruned")  # statuses a run ends with
# the columns of `runs list` / `runs export --csv`, in order
SUMMARY = (
    "uid",
    "kind",
    "status",
    "algorithm",
    "dataset",
    "split",
    "ways",
    "shots",
    "metric",
    "value",
    "ci95",
    "step",
    "seed",
    "study",
    "trial",
    "wall_s",
    "started_at",
    "commit",
    "run_dir",
)


def default_registry_path() -> Path:
    """``$XDG_DATA_HOME/metalab/registry.db`` (``~/.local/share/metalab/registry.db``)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base).expanduser() / "metalab" / "registry.db"


def registry_url(explicit: str | None = None) -> str | None:
    """The registry URL from the flag, else ``$METALAB_REGISTRY``, else the default SQLite file;
    None when recording is turned off (``off``). A plain path becomes a SQLite URL."""
    value = explicit if explicit is not None else os.environ.get(ENV)
    if value is None:
        value = str(default_registry_path())
    if value.strip().lower() in OFF:
        return None
    if "://" in value:
        return value
    return "sqlite:///" + str(Path(value).expanduser().resolve())


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _tables(sa):
    """The schema at SCHEMA_VERSION (a new registry is created with it directly)."""
    md = sa.MetaData()
    sa.Table(
        "meta",
        md,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
    )
    runs = sa.Table(
        "runs",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(16), nullable=False, unique=True, index=True),
        sa.Column("kind", sa.String(16), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("algorithm", sa.String(64), index=True),
        sa.Column("dataset", sa.String(128), index=True),  # the registered dataset: omniglot
        sa.Column("dataset_name", sa.String(128)),  # the split's own name: omniglot-vinyals-test
        sa.Column("split", sa.String(32)),
        sa.Column("ways", sa.Integer),  # the evaluated (or validated) setting
        sa.Column("shots", sa.Integer),
        sa.Column("queries", sa.Integer),
        sa.Column("metric", sa.String(16)),  # accuracy (percent, higher is better) | mse
        sa.Column("value", sa.Float),  # the final result: test value, or best validation value
        sa.Column("ci95", sa.Float),
        sa.Column("step", sa.Integer),  # steps completed (train, trial) or of the checkpoint
        sa.Column("seed", sa.Integer),
        sa.Column("world_size", sa.Integer),
        sa.Column("config", sa.JSON),  # the resolved config
        sa.Column("dataset_desc", sa.JSON),  # classes, examples per class, input shape, modality
        sa.Column("results", sa.JSON),  # the full report (eval --json, compare entry, trial)
        sa.Column("environment", sa.JSON),  # provenance.environment(): hardware, versions, commit
        sa.Column("torch_version", sa.String(64)),
        sa.Column("metalab_version", sa.String(32)),
        sa.Column("commit", sa.String(64)),
        sa.Column("hardware", sa.String(256)),
        sa.Column("command", sa.Text),
        sa.Column("run_dir", sa.Text, index=True),
        sa.Column("host", sa.String(128)),
        sa.Column("pid", sa.Integer),
        sa.Column("study", sa.String(128), index=True),  # tuning: the Optuna study
        sa.Column("trial", sa.Integer),  # tuning: the trial number
        sa.Column("parent", sa.String(16)),  # eval/compare: the uid of the train run evaluated
        sa.Column("source", sa.Text),  # imported records: the file and its content hash
        sa.Column("error", sa.Text),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True)),  # heartbeat while running
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("wall_s", sa.Float),
        # version 2: the task's meta-features (metafeatures.py), for warm starts
        sa.Column("task_key", sa.String(64), index=True),
        sa.Column("metafeatures", sa.JSON),
    )
    sa.Table(
        "curve",
        md,
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(32), primary_key=True),  # val_accuracy | val_mse
        sa.Column("value", sa.Float),
        sa.Column("ci95", sa.Float),
    )
    return md, runs


def _migrate_1_to_2(conn, sa) -> None:
    conn.exec_driver_sql("ALTER TABLE runs ADD COLUMN task_key VARCHAR(64)")
    conn.exec_driver_sql("ALTER TABLE runs ADD COLUMN metafeatures JSON")
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_runs_task_key ON runs (task_key)")


# MIGRATIONS[v] upgrades a registry at schema version v to v + 1, inside the opening transaction
MIGRATIONS: dict[int, Callable[[Any, Any], None]] = {1: _migrate_1_to_2}


class Registry:
    """A run registry at a SQLAlchemy URL (created or upgraded on open)."""

    def __init__(self, url: str) -> None:
        sa = self.sa = require("sqlalchemy", "registry")
        self.url = url
        self.md, self.runs = _tables(sa)
        self.curve = self.md.tables["curve"]
        kwargs: dict[str, Any] = {"json_serializer": lambda o: json.dumps(o, default=str)}
        is_sqlite = url.startswith("sqlite")
        if is_sqlite:
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                try:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise RegistryError(
                        f"cannot create the folder of registry {url} ({e.strerror}); pass "
                        f"--registry URL or set {ENV} to a writable place"
                    ) from None
            kwargs["connect_args"] = {"timeout": 60.0}  # wait up to a minute for the lock
        try:
            self.engine = sa.create_engine(url, **kwargs)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as e:
            raise RegistryError(
                f"registry URL {url!r} is not usable ({str(e).splitlines()[0]}); pass a "
                f"SQLAlchemy URL such as sqlite:///PATH or a file path"
            ) from None
        if is_sqlite:
            # the driver's own transaction handling off; every transaction takes the write lock at
            # its start, so two writers never deadlock upgrading a read lock (SQLAlchemy's recipe)
            sa.event.listen(self.engine, "connect", _sqlite_connect)
            sa.event.listen(
                self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE")
            )
        self._open()

    # --- schema -----------------------------------------------------------------------------
    def _tx(self):
        try:
            return self.engine.begin()
        except self.sa.exc.OperationalError as e:
            raise RegistryError(
                f"cannot open registry {self.url} ({str(e.orig).splitlines()[0]}); pass "
                f"--registry URL or set {ENV}"
            ) from None

    def _open(self) -> None:
        sa = self.sa
        try:
            with self._tx() as conn:
                names = set(sa.inspect(conn).get_table_names())
                if "runs" not in names:
                    self.md.create_all(conn)
                    conn.execute(
                        self.md.tables["meta"].insert(),
                        [{"key": "schema_version", "value": str(SCHEMA_VERSION)}],
                    )
                    return
                version = self._version(conn)
                if version > SCHEMA_VERSION:
                    raise RegistryError(
                        f"registry {self.url} has schema version {version}, newer than this "
                        f"metalab knows ({SCHEMA_VERSION}); upgrade metalab to read it"
                    )
                for v in range(version, SCHEMA_VERSION):
                    MIGRATIONS[v](conn, sa)
                if version != SCHEMA_VERSION:
                    conn.execute(
                        self.md.tables["meta"]
                        .update()
                        .where(self.md.tables["meta"].c.key == "schema_version")
                        .values(value=str(SCHEMA_VERSION))
                    )
        except sa.exc.DatabaseError as e:
            raise RegistryError(
                f"registry {self.url} cannot be opened ({str(e.orig).splitlines()[0]}); pass "
                f"another --registry URL or move the file away"
            ) from None

    def _version(self, conn) -> int:
        meta = self.md.tables["meta"]
        row = conn.execute(
            self.sa.select(meta.c.value).where(meta.c.key == "schema_version")
        ).first()
        return int(row[0]) if row else 1

    @property
    def schema_version(self) -> int:
        with self._tx() as conn:
            return self._version(conn)

    # --- writing ----------------------------------------------------------------------------
    def add(self, **fields: Any) -> str:
        """Insert one record; returns its uid (8 hex digits, unique)."""
        fields = self._clean(fields)
        fields.setdefault("uid", uuid.uuid4().hex[:8])
        fields.setdefault("status", "running")
        fields.setdefault("started_at", _now())
        fields.setdefault("updated_at", fields["started_at"])
        fields.setdefault("host", socket.gethostname())
        fields.setdefault("pid", os.getpid())
        with self._tx() as conn:
            conn.execute(self.runs.insert().values(**fields))
        return fields["uid"]

    def update(self, uid: str, **fields: Any) -> None:
        fields = self._clean(fields)
        fields.setdefault("updated_at", _now())
        with self._tx() as conn:
            conn.execute(self.runs.update().where(self.runs.c.uid == uid).values(**fields))

    def set_curve(
        self, uid: str, points: Iterable[dict[str, Any]], after: int | None = None
    ) -> None:
        """Add (or replace) curve points ``{step, name, value, ci95}``; ``after``: first delete
        points past this step (a resumed run redoes them)."""
        points = list(points)
        with self._tx() as conn:
            run_id = conn.execute(
                self.sa.select(self.runs.c.id).where(self.runs.c.uid == uid)
            ).scalar_one()
            c = self.curve.c
            if after is not None:
                conn.execute(self.curve.delete().where((c.run_id == run_id) & (c.step > after)))
            for p in points:
                conn.execute(
                    self.curve.delete().where(
                        (c.run_id == run_id) & (c.step == p["step"]) & (c.name == p["name"])
                    )
                )
            if points:
                conn.execute(
                    self.curve.insert(),
                    [
                        {
                            "run_id": run_id,
                            "step": int(p["step"]),
                            "name": p["name"],
                            "value": p.get("value"),
                            "ci95": p.get("ci95"),
                        }
                        for p in points
                    ],
                )

    def _clean(self, fields: dict[str, Any]) -> dict[str, Any]:
        unknown = set(fields) - set(self.runs.c.keys())
        if unknown:
            raise ValueError(f"unknown registry fields: {sorted(unknown)}")
        return dict(fields)

    # --- reading ----------------------------------------------------------------------------
    def get(self, ref: str) -> dict[str, Any]:
        """One record with its curve, by uid (or a unique prefix of it), id, or run directory
        (the latest record of it)."""
        r = self.runs.c
        sel = self.sa.select(self.runs)
        with self._tx() as conn:
            rows = conn.execute(sel.where(r.uid.like(f"{ref}%"))).mappings().all()
            if not rows and ref.isdigit():
                rows = conn.execute(sel.where(r.id == int(ref))).mappings().all()
            if not rows:
                path = str(Path(ref).expanduser().resolve())
                rows = (
                    conn.execute(sel.where(r.run_dir == path).order_by(r.id.desc()).limit(1))
                    .mappings()
                    .all()
                )
            if len(rows) > 1:
                raise RegistryError(
                    f"run '{ref}' is ambiguous: {', '.join(x['uid'] for x in rows[:5])} match; "
                    f"give more digits"
                )
            if not rows:
                raise RegistryError(
                    f"no run '{ref}' in registry {self.url}; `metalab runs list` shows the uids"
                )
            run = _record(rows[0])
            c = self.curve.c
            run["curve"] = [
                dict(p)
                for p in conn.execute(
                    self.sa.select(c.step, c.name, c.value, c.ci95)
                    .where(c.run_id == run["id"])
                    .order_by(c.step, c.name)
                ).mappings()
            ]
        return run

    def query(
        self,
        algorithm: str | None = None,
        dataset: str | None = None,
        ways: int | None = None,
        shots: int | None = None,
        kind: str | None = None,
        status: str | None = None,
        study: str | None = None,
        split: str | None = None,
        run_dir: str | None = None,
        source: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Records matching every given filter, newest first (``dataset`` matches the registered
        name or the split's own name)."""
        r = self.runs.c
        sel = self.sa.select(self.runs).order_by(r.id.desc())
        for col, value in (
            (r.algorithm, algorithm),
            (r.ways, ways),
            (r.shots, shots),
            (r.kind, kind),
            (r.status, status),
            (r.study, study),
            (r.split, split),
            (r.run_dir, run_dir),
            (r.source, source),
        ):
            if value is not None:
                sel = sel.where(col == value)
        if dataset is not None:
            sel = sel.where((r.dataset == dataset) | (r.dataset_name == dataset))
        if limit:
            sel = sel.limit(limit)
        with self._tx() as conn:
            return [_record(m) for m in conn.execute(sel).mappings()]

    def best(
        self, dataset: str, ways: int | None, shots: int | None, split: str = "test", limit=20
    ) -> list[dict[str, Any]]:
        """A leaderboard: finished records with a result on (dataset, ways, shots, split), the
        best first (highest accuracy, lowest MSE)."""
        rows = [
            x
            for x in self.query(dataset=dataset, ways=ways, shots=shots, split=split)
            if x["value"] is not None
            and x["status"] in ("finished", "stopped")
            and x["kind"] != "study"  # a study's record repeats its best trial's value
        ]
        rows.sort(key=lambda x: -x["value"] if x["metric"] == "accuracy" else x["value"])
        return rows[:limit]

    def curve_of(self, uid: str) -> list[dict[str, Any]]:
        return self.get(uid)["curve"]


def _sqlite_connect(dbapi_connection, record) -> None:
    dbapi_connection.isolation_level = None
    # write-ahead log: readers do not block the writer, and a commit is one append, not a rewrite
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _record(m) -> dict[str, Any]:
    run = dict(m)
    for key in ("started_at", "updated_at", "ended_at"):
        t = run.get(key)
        if isinstance(t, _dt.datetime) and t.tzinfo is None:  # SQLite keeps no zone: it was UTC
            run[key] = t.replace(tzinfo=_dt.timezone.utc)
    run["state"] = state_of(run)
    return run


def state_of(run: dict[str, Any], stale_s: float = 900.0) -> str:
    """The status to show: a record still 'running' whose process is gone (same host) or silent
    for ``stale_s`` seconds (another host) shows as 'unfinished'."""
    if run.get("status") != "running":
        return run.get("status") or "unknown"
    if run.get("host") == socket.gethostname() and run.get("pid"):
        try:
            os.kill(int(run["pid"]), 0)
        except ProcessLookupError:
            return "unfinished"
        except PermissionError:
            pass
        return "running"
    beat = run.get("updated_at")
    if isinstance(beat, _dt.datetime) and (_now() - beat).total_seconds() > stale_s:
        return "unfinished"
    return "running"


def open_registry(url: str | None = None, required: bool = True) -> Registry | None:
    """The registry of ``--registry`` / ``$METALAB_REGISTRY`` / the default file. With recording
    turned off: an error when ``required`` (the runs commands), else None."""
    resolved = registry_url(url)
    if resolved is None:
        if required:
            raise RegistryError(
                f"the run registry is turned off ({ENV}={os.environ.get(ENV)!r}); pass "
                f"--registry URL or unset {ENV}"
            )
        return None
    return Registry(resolved)
