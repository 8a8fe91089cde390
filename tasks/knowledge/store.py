"""The resume cache of the knowledge stage: every answered attempt, in append-only JSONL shards.

Files data/interim/knowledge_raw/shard-NN.jsonl; a record's shard is its key's first 4 hex digits mod SHARDS.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SHARDS = 16


class RawStore:
    """Append-only JSONL shards; safe to kill at any moment.

    A key's record lists every answer so far. While its re-ask chain goes on it carries `"unfinished": true`
    and is appended again after each attempt; the finished record (no such field) supersedes it.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self._shards: dict[int, Any] = {}  # open append handles, one per shard

    def load(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        for shard in sorted(self.directory.glob("shard-*.jsonl")):
            self._drop_torn_tail(shard)
            with open(shard, encoding="utf-8") as lines:
                for line in lines:
                    record = json.loads(line)
                    known = records.get(record["key"])
                    if known is None or _progress(record) > _progress(known):
                        records[record["key"]] = record
        return records

    @staticmethod
    def _drop_torn_tail(shard: Path) -> None:
        """A kill mid-write leaves a partial last line: cut it, so the next append starts on a fresh line."""
        data = shard.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(shard, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)

    def append(self, record: dict[str, Any]) -> None:
        shard = int(record["key"][:4], 16) % SHARDS
        if shard not in self._shards:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._shards[shard] = open(self.directory / f"shard-{shard:02d}.jsonl", "a", encoding="utf-8")
        handle = self._shards[shard]
        # One whole line, flushed to the OS at once: a kill leaves at most a torn last line (_drop_torn_tail).
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()

    def close(self) -> None:
        for handle in self._shards.values():
            handle.close()
        self._shards.clear()


def _progress(record: dict[str, Any]) -> tuple[bool, int]:
    """Finished beats unfinished; more answers beat fewer (a finished record is never asked again)."""
    return not record.get("unfinished", False), len(record["outputs"])


def finished(record: dict[str, Any] | None) -> bool:
    return record is not None and not record.get("unfinished", False)
