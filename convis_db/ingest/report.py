"""What an ingest run did, per file and in total."""

from __future__ import annotations

from dataclasses import dataclass, field

from convis_db.results import Results


@dataclass
class IngestOutcome:
    path: str
    status: str              # ingested | skipped | failed | backfilled (image-level scores added) | pending
    image_id: int | None = None
    n_windows: int = 0
    seconds: float = 0.0
    reason: str = ""


class IngestOutcomes(Results):
    """What happened to each file of an ingest (`IngestReport.table()`; `.df()`, `.to_arrow()`)."""

    noun = "file"


@dataclass(repr=False)
class IngestReport:
    """What one ingest did: `outcomes` per file (`.df()` / `.to_arrow()` make a table of them),
    counts (`count("ingested")`), `summary()` as the CLI's --json prints it."""

    outcomes: list[IngestOutcome] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    stopped_by: str | None = None   # SIGINT or SIGTERM when a signal stopped the run
    model: str = ""
    precision: str = ""      # the image encoder's, recorded with every image ingested
    settings: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def windows(self) -> int:
        return sum(o.n_windows for o in self.outcomes if o.status == "ingested")

    def add_timings(self, timings: dict[str, float]) -> None:
        for stage, secs in timings.items():
            self.timings[stage] = self.timings.get(stage, 0.0) + secs

    def table(self) -> IngestOutcomes:
        """The outcomes, one row per file."""
        return IngestOutcomes(self.outcomes, IngestOutcome)

    def to_arrow(self):
        """The outcomes as a pyarrow Table."""
        return self.table().to_arrow()

    def df(self):
        """The outcomes as a pandas DataFrame (needs pandas)."""
        return self.table().df()

    def __repr__(self) -> str:
        counts = ", ".join(f"{self.count(s)} {s}" for s in ("ingested", "skipped", "failed", "backfilled")
                           if self.count(s) or s != "backfilled")
        stop = f", interrupted by {self.stopped_by or 'the user'}" if self.interrupted else ""
        return f"<IngestReport: {counts}; {self.windows:,} windows in {self.seconds:.1f} s{stop}>"

    def _repr_html_(self) -> str:
        return self.table()._repr_html_().replace(self.table().summary(), repr(self)[1:-1], 1)

    def summary(self) -> dict:
        secs = max(self.seconds, 1e-9)
        return {
            "ingested": self.count("ingested"), "skipped": self.count("skipped"), "failed": self.count("failed"),
            "backfilled": self.count("backfilled"),
            "windows": self.windows, "seconds": round(self.seconds, 3),
            "images_per_s": round(self.count("ingested") / secs, 3), "windows_per_s": round(self.windows / secs, 1),
            "interrupted": self.interrupted, "stopped_by": self.stopped_by, "model": self.model,
            "precision": self.precision, "settings": self.settings,
            "stage_seconds": {k: round(v, 3) for k, v in self.timings.items()},
        }
