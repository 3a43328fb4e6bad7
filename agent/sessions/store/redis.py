"""Sessions in Redis, shared by every worker and host that uses it."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from agent.sessions.store.base import (
    KEY_BYTES,
    StoreError,
    _cutoff,
    _dumps,
    _key_name,
    _page_args,
    last_active,
)
from agent.settings import mask_url_passwords

# The Redis scripts' reading of meta.last_active, matching last_active() above. A score a script writes
# goes through string.format('%.17g'): Redis before 7 passes a Lua number to a command with 14 digits only,
# and a rounded time.time() would sort (and purge) differently from the one Python wrote.
_LAST_ACTIVE_LUA = """
local function last_active(raw)
  if not raw then return 0 end
  local ok, meta = pcall(cjson.decode, raw)
  if not ok or type(meta) ~= 'table' then return 0 end
  local value = meta['last_active']
  if type(value) ~= 'number' or value ~= value or value == math.huge or value == -math.huge then return 0 end
  return value
end
"""

# KEYS: session, messages, files, ids, active. ARGV: last_active this process saw ('' for none), id.
_DELETE_IF_NOT_NEWER = _LAST_ACTIVE_LUA + """
local meta = redis.call('GET', KEYS[1])
if meta and ARGV[1] ~= '' then
  if last_active(meta) > tonumber(ARGV[1]) then return -1 end
end
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('ZREM', KEYS[5], ARGV[2])
return existed
"""

# KEYS: ids, active, then session, messages, files per candidate. ARGV: before, then the candidates' ids.
# Re-checks each candidate's meta, so a session written since the range was read survives (its score is
# put right if it was stale); an id whose meta is gone is dropped from the indexes but not reported.
_PURGE = _LAST_ACTIVE_LUA + """
local before = tonumber(ARGV[1])
local gone = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local k = 3 + (i - 2) * 3
  local meta = redis.call('GET', KEYS[k])
  local value = last_active(meta)
  if meta and value >= before then
    redis.call('ZADD', KEYS[2], string.format('%.17g', value), id)
  else
    redis.call('DEL', KEYS[k], KEYS[k + 1], KEYS[k + 2])
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    if meta then table.insert(gone, id) end
  end
end
return gone
"""

# KEYS: ids, active, then one session key per id. ARGV: the ids. Drops ids whose meta is (still) gone.
_DROP_DANGLING = """
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[i + 2]) == 0 then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
  end
end
return 0
"""

# KEYS: active, then session keys. ARGV: the ids. Scores each existing session by its meta, atomically
# with reading it, so a concurrent writer's newer score is never overwritten by an older one.
_INDEX_ACTIVE = _LAST_ACTIVE_LUA + """
for i = 1, #ARGV do
  local meta = redis.call('GET', KEYS[i + 1])
  if meta then redis.call('ZADD', KEYS[1], string.format('%.17g', last_active(meta)), ARGV[i]) end
end
return 0
"""

_REDIS_BATCH = 200


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisStore:
    """Sessions in Redis, shared by every worker process and host (``sessions.store = "redis://…"``).

    Per session: ``cmw:session:<id>`` (meta JSON), ``cmw:messages:<id>`` (a list of JSON messages) and
    ``cmw:files:<id>`` (a hash); ``cmw:ids`` orders the ids by creation and ``cmw:active`` by
    ``last_active`` (kept with every meta write, in the same MULTI/EXEC). ``cmw:key:<name>`` holds the
    shared secrets, ``cmw:schema`` the schema version and ``cmw:migrations`` (a hash: version -> JSON
    description and time) the migrations applied. A turn is one MULTI/EXEC, so a reader (any worker)
    sees all of a turn or none of it. Durability is Redis's: configure AOF (``appendonly yes``) where a
    Redis restart must not lose turns; a worker's ``kill -9`` loses nothing.

    Deleting is guarded: a worker that ends a session it holds a stale copy of (another worker wrote a
    newer ``last_active`` since this one last read or wrote it) leaves the record alone, so one worker's
    idle expiry or LRU eviction never deletes a conversation that lives on elsewhere.
    """

    SCHEMA_VERSION = 2

    def __init__(self, url: str, *, prefix: str = "cmw:") -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self._shown = mask_url_passwords(url)
        self._seen: dict[str, float] = {}  # session id -> last_active this process last read or wrote
        self._seen_lock = threading.Lock()
        self._secrets: dict[str, bytes] = {}
        self._ids_key = f"{prefix}ids"
        self._active_key = f"{prefix}active"
        self._schema_key = f"{prefix}schema"
        self._migrations_key = f"{prefix}migrations"
        try:
            self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, decode_responses=True)
            self._redis.ping()
        except (redis.RedisError, ValueError) as exc:
            raise StoreError(mask_url_passwords(f"session store {self._shown}: cannot connect: {exc}")) from None
        self._delete_script = self._redis.register_script(_DELETE_IF_NOT_NEWER)
        self._purge_script = self._redis.register_script(_PURGE)
        self._drop_script = self._redis.register_script(_DROP_DANGLING)
        self._index_script = self._redis.register_script(_INDEX_ACTIVE)
        try:
            with self._errors("migrate"):
                self._migrate()
        except BaseException:
            self._redis.close()
            raise

    # Migrations, in order; the same rules as SQLITE_MIGRATIONS.
    def _redis_v1(self) -> None:
        """Nothing to build: v1's keys are made on demand."""

    def _redis_v2(self) -> None:
        """Scores every stored session into ``<prefix>active``, SCAN by SCAN batch."""
        pattern = _glob_escape(f"{self.prefix}session:") + "*"
        skip = len(f"{self.prefix}session:")
        batch: list[str] = []
        for session_key in self._redis.scan_iter(match=pattern, count=_REDIS_BATCH):
            batch.append(session_key)
            if len(batch) >= _REDIS_BATCH:
                self._index_script(keys=[self._active_key, *batch], args=[k[skip:] for k in batch])
                batch = []
        if batch:
            self._index_script(keys=[self._active_key, *batch], args=[k[skip:] for k in batch])

    def _migrations_list(self) -> tuple[tuple[int, str, Callable[[], None]], ...]:
        return (
            (1, "per-session meta, messages and files keys; ids sorted set", self._redis_v1),
            (2, "active sorted set by last_active (built from the stored metas); shared keys", self._redis_v2),
        )

    def _migrate(self) -> None:
        """Runs the steps past ``<prefix>schema``. Steps are idempotent, so openers racing here agree."""
        raw = self._redis.get(self._schema_key)
        if raw is None:  # before the schema key: a v1 database if it holds anything, else a fresh one
            version = 1 if self._redis.exists(self._ids_key) else 0
        else:
            try:
                version = int(raw)
            except ValueError:
                raise StoreError(f"session store {self._shown}: {self._schema_key} is not a version: {raw!r}") from None
        if version > self.SCHEMA_VERSION:
            raise StoreError(
                f"session store {self._shown}: written by a newer cmw (schema {version} > {self.SCHEMA_VERSION}); "
                "upgrade cmw or use another Redis database"
            )
        for number, description, step in self._migrations_list():
            if number > version:
                step()
            record = {"description": description, "applied_at": time.time() if number > version else None}
            self._redis.hsetnx(self._migrations_key, str(number), _dumps(record))
        if version < self.SCHEMA_VERSION:
            # Never lower it: a newer cmw may have raced us here.
            self._redis.eval(
                "local v = tonumber(redis.call('GET', KEYS[1]) or '0') "
                "if v < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end return 0",
                1, self._schema_key, str(self.SCHEMA_VERSION),
            )

    @property
    def schema_version(self) -> int:
        with self._errors("read"):
            return int(self._redis.get(self._schema_key) or 0)

    def migrations(self) -> list[dict[str, Any]]:
        """The recorded migrations, oldest first: version, description, applied_at (None: before records)."""
        with self._errors("read"):
            raw = self._redis.hgetall(self._migrations_key)
        return [{"version": int(v), **json.loads(raw[v])} for v in sorted(raw, key=int)]

    def _keys(self, session_id: str) -> tuple[str, str, str]:
        p = self.prefix
        return f"{p}session:{session_id}", f"{p}messages:{session_id}", f"{p}files:{session_id}"

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        import redis

        try:
            yield
        except redis.RedisError as exc:
            raise StoreError(f"session store {self._shown}: {what} failed: {exc}") from None

    def _see(self, meta: Mapping[str, Any] | None) -> None:
        if meta is not None and "last_active" in meta:
            with self._seen_lock:
                self._seen[str(meta["id"])] = last_active(meta)

    def _upsert(self, pipe: Any, meta: Mapping[str, Any]) -> None:
        session_key = self._keys(meta["id"])[0]
        pipe.set(session_key, _dumps(meta))
        pipe.zadd(self._ids_key, {meta["id"]: float(meta.get("created", 0.0))}, nx=True)
        pipe.zadd(self._active_key, {meta["id"]: last_active(meta)})

    def save_session(self, meta: dict[str, Any]) -> None:
        with self._errors("write"):
            pipe = self._redis.pipeline(transaction=True)
            self._upsert(pipe, meta)
            pipe.execute()
        self._see(meta)

    def append_messages(
        self, session_id: str, messages: list[dict[str, Any]], *, meta: dict[str, Any] | None = None
    ) -> None:
        with self._errors("write"):
            pipe = self._redis.pipeline(transaction=True)
            if meta is not None:
                self._upsert(pipe, meta)
            if messages:
                pipe.rpush(self._keys(session_id)[1], *(_dumps(m) for m in messages))
            pipe.execute()
        self._see(meta)

    def clear_messages(self, session_id: str, *, meta: dict[str, Any] | None = None) -> None:
        with self._errors("write"):
            pipe = self._redis.pipeline(transaction=True)
            if meta is not None:
                self._upsert(pipe, meta)
            pipe.delete(self._keys(session_id)[1])
            pipe.execute()
        self._see(meta)

    def save_file(self, session_id: str, name: str, content: str, *, meta: dict[str, Any] | None = None) -> None:
        with self._errors("write"):
            pipe = self._redis.pipeline(transaction=True)
            if meta is not None:
                self._upsert(pipe, meta)
            pipe.hset(self._keys(session_id)[2], name, content)
            pipe.execute()
        self._see(meta)

    def delete_file(self, session_id: str, name: str) -> None:
        with self._errors("write"):
            self._redis.hdel(self._keys(session_id)[2], name)

    def load(self, session_id: str) -> dict[str, Any] | None:
        session_key, messages_key, files_key = self._keys(session_id)
        with self._errors("read"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.get(session_key)
            pipe.lrange(messages_key, 0, -1)
            pipe.hgetall(files_key)
            raw, messages, files = pipe.execute()
        if raw is None:
            return None
        meta = json.loads(raw)
        self._see(meta)
        return {**meta, "history": [json.loads(m) for m in messages], "files": dict(files)}

    def delete(self, session_id: str) -> bool:
        with self._seen_lock:
            seen = self._seen.pop(session_id, None)
        with self._errors("delete"):
            keys = [*self._keys(session_id), self._ids_key, self._active_key]
            result = self._delete_script(keys=keys, args=["" if seen is None else repr(seen), session_id])
        return int(result) > 0

    def list_ids(self) -> list[str]:
        """Every stored id, oldest first."""
        with self._errors("read"):
            return list(self._redis.zrange(self._ids_key, 0, -1))

    def list_page(self, offset: int = 0, limit: int = 100, *, exclude: Collection[str] = ()) -> list[dict[str, Any]]:
        """Stored metas, latest ``last_active`` first (ties: greater id first), skipping ``exclude``.

        Walks ``<prefix>active`` from the top in bounded batches and stops after ``offset + limit`` kept
        metas; ids whose meta is gone (dangling) are skipped and dropped from the indexes.
        """
        _page_args(offset, limit)
        if limit == 0:
            return []
        excluded = set(exclude)
        out: list[dict[str, Any]] = []
        dangling: list[str] = []
        skip = offset
        start = 0
        batch = max(_REDIS_BATCH, min(offset + limit, 5 * _REDIS_BATCH))
        with self._errors("read"):
            while len(out) < limit:
                ids = self._redis.zrevrange(self._active_key, start, start + batch - 1)
                if not ids:
                    break
                start += len(ids)
                wanted = [sid for sid in ids if sid not in excluded]
                raws = self._redis.mget([self._keys(sid)[0] for sid in wanted]) if wanted else []
                for sid, raw in zip(wanted, raws, strict=True):
                    if raw is None:
                        dangling.append(sid)
                    elif skip:
                        skip -= 1
                    else:
                        out.append(json.loads(raw))
                        if len(out) == limit:
                            break
        if dangling:
            self._drop_dangling(dangling)
        return out

    def _drop_dangling(self, ids: list[str]) -> None:
        with self._errors("write"):
            for i in range(0, len(ids), _REDIS_BATCH):
                chunk = ids[i : i + _REDIS_BATCH]
                keys = [self._ids_key, self._active_key, *(self._keys(sid)[0] for sid in chunk)]
                self._drop_script(keys=keys, args=chunk)

    def count(self) -> int:
        """Sessions in ``<prefix>active`` (a dangling id counts until a page or purge drops it)."""
        with self._errors("read"):
            return int(self._redis.zcard(self._active_key))

    def purge_inactive(self, before: float) -> list[str]:
        """Deletes (meta, messages, files) every session last active before ``before``; returns their ids.

        Reads candidates from ``<prefix>active`` in batches and deletes each batch in one script that
        re-checks every meta, so a session another worker has just written is kept.
        """
        before = _cutoff(before)
        gone: list[str] = []
        max_rounds = 1 + self.count() // _REDIS_BATCH + 10  # each round removes or rescores its whole batch
        with self._errors("purge"):
            for _ in range(max_rounds):
                ids = self._redis.zrangebyscore(self._active_key, "-inf", f"({before!r}", start=0, num=_REDIS_BATCH)
                if not ids:
                    break
                keys = [self._ids_key, self._active_key, *(k for sid in ids for k in self._keys(sid))]
                gone.extend(self._purge_script(keys=keys, args=[repr(before), *ids]))
        with self._seen_lock:
            for sid in gone:
                self._seen.pop(sid, None)
        return gone

    def key(self, name: str) -> bytes:
        """The 32-byte secret ``name``, made on first use (SET NX); every worker on this Redis reads the same."""
        name = _key_name(name)
        if name in self._secrets:
            return self._secrets[name]
        redis_key = f"{self.prefix}key:{name}"
        with self._errors("key"):
            self._redis.set(redis_key, secrets.token_bytes(KEY_BYTES).hex(), nx=True)
            stored = self._redis.get(redis_key)
        try:
            value = bytes.fromhex(stored or "")
        except ValueError:
            value = b""
        if len(value) != KEY_BYTES:
            raise StoreError(f"session store {self._shown}: {redis_key} does not hold a {KEY_BYTES}-byte key")
        return self._secrets.setdefault(name, value)

    def close(self) -> None:
        self._redis.close()

