"""Every stage accounts for every record: `in + expanded == out + sum(dropped)`, exactly.

A `Tally` counts what a stage reads, keeps, expands and drops (by reason), writes each dropped
record with its reason to the stage's `rejected` file, and writes the stage report.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

from sftpipe.core.errors import SftpipeError
from sftpipe.core.jsonio import write_json


class AccountingError(SftpipeError, AssertionError):
    """The counts do not balance: a record was lost or counted twice."""


class Writer(Protocol):
    def write(self, obj: Any) -> None: ...


class Tally:
    """Counters for one stage run, plus its rejected-records writer (optional): a JsonlWriter, or
    anything with `write(obj)`, such as a worker's list handed back to the driver."""

    def __init__(self, rejected: Writer | None = None):
        self.n_in = 0
        self.n_out = 0
        self.expanded = 0
        self.dropped: Counter[str] = Counter()
        self.changed: Counter[str] = Counter()
        self._rejected = rejected

    def seen(self, n: int = 1) -> None:
        self.n_in += n

    def kept(self, n: int = 1) -> None:
        self.n_out += n

    def expand(self, n: int) -> None:
        """One input became `n + 1` outputs (an OASST tree's paths, self-instruct instances)."""
        self.expanded += n

    def change(self, rule: str, n: int = 1) -> None:
        """A record was modified but kept (e.g. PII redacted); reported, not part of the balance."""
        self.changed[rule] += n

    def drop(self, reason: str, record: Any = None, **where: Any) -> None:
        """Count a drop; `record` and `where` (file, line, detail...) go to the rejected file."""
        self.dropped[reason] += 1
        if self._rejected is not None:
            self._rejected.write({"reason": reason, "record": record, **where})

    def check(self) -> None:
        lhs, rhs = self.n_in + self.expanded, self.n_out + sum(self.dropped.values())
        if lhs != rhs:
            raise AccountingError(
                f"accounting does not balance: in {self.n_in} + expanded {self.expanded} != "
                f"out {self.n_out} + dropped {sum(self.dropped.values())} {dict(self.dropped)}"
            )

    def as_dict(self) -> dict:
        out: dict[str, Any] = {
            "in": self.n_in,
            "out": self.n_out,
            "dropped": dict(sorted(self.dropped.items())),
        }
        if self.expanded:
            out["expanded"] = self.expanded
        if self.changed:
            out["changed"] = dict(sorted(self.changed.items()))
        return out

    def write(self, path: str | Path, **extra: Any) -> dict:
        """Check the balance, then write the report (counts + `extra`) atomically."""
        self.check()
        report = {**self.as_dict(), **extra}
        write_json(path, report)
        if self.n_out == 0 and self.n_in + self.expanded > 0:  # never silent: every record dropped
            top = ", ".join(f"{n} {r}" for r, n in self.dropped.most_common(3))
            print(f"WARNING: {path}: all {self.n_in} records were dropped ({top})", file=sys.stderr)
        return report

    def merge(self, other: Tally) -> None:
        self.n_in += other.n_in
        self.n_out += other.n_out
        self.expanded += other.expanded
        self.dropped.update(other.dropped)
        self.changed.update(other.changed)
