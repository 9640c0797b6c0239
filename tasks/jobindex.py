"""The index of open jobs: the jobs that may have unfinished requests.

The recovery sweep reads it a slice at a time instead of every job ever made. A job
is listed (ZADD, score: now) each time a request is counted in, after that request's
`touched` entry is written; a reader that finds no unfinished request takes the job
off only if its score is still the one it read (`unlist.lua`), so a job listed again
meanwhile stays. The index is one key apart from the jobs' own keys (their hash
slots differ on Redis Cluster), so it is written beside the job scripts, not in them.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, cast

import redis

from budget.resp import decoded
from tasks.jobstate import JobKeys, job_keys

#: Most jobs of the index one `OpenJobs.slice` reads.
SLICE = 1_000


def script(client: redis.Redis, name: str) -> Any:
    text = resources.files("tasks").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    return client.register_script(text)


class OpenJobs:
    """The jobs that may have unfinished requests, read in bounded slices."""

    def __init__(self, client: redis.Redis, *, key_prefix: str) -> None:
        self.client = client
        self.prefix = key_prefix
        self.key = f"{key_prefix}:jobs:open"
        #: Where the next slice's scan of the index goes on.
        self.cursor_key = f"{key_prefix}:jobs:open:cursor"
        self._unlist = script(client, "unlist")

    def adopt(self, index_key: str) -> bool:
        """Once per Redis: list every job of `index_key` (every job made before this
        index existed; the finished ones leave it as slices read them)."""
        if not self.client.set(f"{self.key}:adopted", "1", nx=True):
            return False
        self.client.zunionstore(self.key, [self.key, index_key], aggregate="MAX")
        return True

    def slice(self, *, size: int = SLICE) -> list[str]:
        """Open jobs of the next part of the index (about `size`; continues the last
        slice's scan, from the start once it ends). Jobs found finished leave it."""
        cursor = int(self.client.get(self.cursor_key) or 0)
        cursor, found = self.client.zscan(self.key, cursor, count=size)
        self.client.set(self.cursor_key, cursor)
        listed = [(decoded(job), float(score)) for job, score in cast(list[Any], found)]
        if not listed:
            return []
        pipe = self.client.pipeline(transaction=False)
        for job_id, _ in listed:
            pipe.hlen(self._keys(job_id).touched)
        counts = pipe.execute()
        done = [(j, s) for (j, s), n in zip(listed, counts, strict=True) if not n]
        if done:
            self._unlist(keys=[self.key], args=[x for j, s in done for x in (j, repr(s))])
        return [j for (j, _), n in zip(listed, counts, strict=True) if n]

    def all(self) -> list[str]:
        """Every open job, a slice at a time (for tests and small clusters)."""
        seen: dict[str, None] = {}
        self.client.delete(self.cursor_key)
        while True:
            seen.update(dict.fromkeys(self.slice()))
            if not int(self.client.get(self.cursor_key) or 0):
                return list(seen)

    def _keys(self, job_id: str) -> JobKeys:
        return job_keys(self.prefix, job_id)
