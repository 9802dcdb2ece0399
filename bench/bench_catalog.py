"""The catalog: a day's listing in a year-long catalog, the CPU cost of each record, its size."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import table, write_section  # noqa: E402
from raspberry_pancake.shared.catalog import Catalog  # noqa: E402

OUT = ROOT / "bench" / "out"
SEGMENTS = 35_000  # a year of 15-minute segments (35,040), one camera
EVENTS = 50_000
SPLIT = 900.0
DAY = 86_400.0
QUERIES = 100
RECORDS = 300  # timed segment / conversion records
YEAR0 = 1_767_222_000.0  # 2026-01-01 local-ish: only the spacing matters
DESTINATIONS = ("sftp://pi@backup:22/cam", "rclone:drive:cam")


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def fill(catalog: Catalog) -> None:
    """A year of one camera: every segment closed, converted and uploaded to two destinations,
    two log lines each; events spread over the year with labels and snapshots."""
    rng = random.Random(1)
    with catalog.transaction() as c:
        for i in range(SEGMENTS):
            start = YEAR0 + i * SPLIT
            stamp = time.strftime("%Y%m%d-%H%M", time.localtime(start))
            path = f"/home/pi/Videos/{stamp}.h264"
            rid = c.execute(
                "INSERT INTO recordings (camera, kind, path, dir, stem, start, end, frames, "
                "size, closed) VALUES ('cam', 'continuous', ?, '/home/pi/Videos', ?, ?, ?, "
                "27000, 250000000, 1)", (path, stamp, start, start + SPLIT)).lastrowid
            c.execute("INSERT INTO conversions (recording, mp4, stem, frames, duration, "
                      "converted_at) VALUES (?, ?, ?, 27000, 900.0, ?)",
                      (rid, f"/home/pi/mp4/{stamp}.mp4", stamp, start + SPLIT + 30))
            for d in DESTINATIONS:
                c.execute("INSERT INTO uploads (recording, destination, state, attempts, "
                          "done_at) VALUES (?, ?, 'done', 1, ?)", (rid, d, start + SPLIT + 90))
            c.execute("INSERT INTO log (time, camera, kind, text) VALUES (?, 'cam', "
                      "'recording', ?)", (start + SPLIT, f"{stamp}.h264 finished"))
            c.execute("INSERT INTO log (time, camera, kind, text) VALUES (?, 'cam', "
                      "'conversion', ?)", (start + SPLIT + 30, f"{stamp}.mp4 made"))
        rises = sorted(rng.uniform(YEAR0, YEAR0 + SEGMENTS * SPLIT) for _ in range(EVENTS))
        for rise in rises:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(rise))
            c.execute("INSERT INTO events (camera, rise, fall, labels, names, snapshot) "
                      "VALUES ('cam', ?, ?, ?, ?, ?)",
                      (rise, rise + rng.uniform(2, 60), json.dumps(["motion", "face"]),
                       json.dumps(["alice"]), f"/home/pi/Videos/{stamp}.jpg"))


def cpu_ms(action: Callable[[int], None], n: int) -> tuple[float, float]:
    """(median CPU ms, median wall ms) of `action(i)` over n calls."""
    cpu, wall = [], []
    for i in range(n):
        c0, w0 = time.process_time(), time.perf_counter()
        action(i)
        cpu.append((time.process_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)
    return statistics.median(cpu), statistics.median(wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_catalog.py", description=__doc__)
    parser.add_argument("--no-write", action="store_true",
                        help="print the figures, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    # On the disk (bench/out), not a tmpfs: the commit's fsync is part of the real cost.
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        db = Path(tmp) / "pancake.db"
        t0 = time.perf_counter()
        catalog = Catalog.open(db, owner=True)
        fill(catalog)
        load = time.perf_counter() - t0
        catalog.close()
        catalog = Catalog.open(db)  # a fresh connection, as the page's would be
        rng = random.Random(2)
        days = [YEAR0 + rng.randrange(int(SEGMENTS * SPLIT / DAY)) * DAY for _ in range(QUERIES)]
        listing, counts = [], []
        for day in days:
            w0 = time.perf_counter()
            recs = catalog.recordings("cam", day, day + DAY)
            evs = catalog.events("cam", day, day + DAY)
            listing.append((time.perf_counter() - w0) * 1000)
            counts.append((len(recs), len(evs)))

        base = YEAR0 + SEGMENTS * SPLIT

        def segment(i: int) -> None:
            rid = catalog.recording_opened("cam", "continuous",
                                           Path(f"/home/pi/Videos/new-{i}.h264"), base + i)
            catalog.recording_closed(rid, base + i + SPLIT, 27000, 250_000_000)

        seg_cpu, seg_wall = cpu_ms(segment, RECORDS)
        new = [r.id for r in catalog.recordings("cam", base, base + RECORDS + 1)]

        def conversion(i: int) -> None:
            catalog.converted(new[i], Path(f"/home/pi/mp4/new-{i}.mp4"), 27000, 900.0)

        conv_cpu, conv_wall = cpu_ms(conversion, RECORDS)
        w0 = time.perf_counter()
        order = catalog.deletion_order([Path("/home/pi/Videos")], DESTINATIONS)
        order_ms = (time.perf_counter() - w0) * 1000
        w0 = time.perf_counter()
        first = catalog.deletion_order([Path("/home/pi/Videos")], DESTINATIONS, limit=20)
        first_ms = (time.perf_counter() - w0) * 1000
        catalog.close()
        conn = Catalog.open(db)
        conn._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        size = sum(p.stat().st_size for p in Path(tmp).iterdir() if p.name.startswith(db.name))
    per_day = statistics.mean(r for r, _ in counts), statistics.mean(e for _, e in counts)
    body = (f"A catalog holding a year of one camera: {SEGMENTS:,} continuous 15-minute segments "
            f"(each closed, converted, uploaded to {len(DESTINATIONS)} destinations, two log "
            f"lines) and {EVENTS:,} events (labels, names, snapshot), on the disk in WAL mode "
            f"with `synchronous = FULL` (loaded in {load:.1f} s). A day's listing is "
            f"`recordings()` + `events()` for one random day ({per_day[0]:.0f} recordings and "
            f"{per_day[1]:.0f} events on average), {QUERIES} days. The cost of a record is the "
            f"median of {RECORDS}, CPU time of the calling process (the wall time includes the "
            f"commit's fsync, which waits on the disk and costs no CPU).\n\n")
    body += table([
        (f"one day's recordings and events, p95 of {QUERIES}", f"{p95(listing):.2f} ms "
         f"(max {max(listing):.2f} ms)", "≤ 10 ms"),
        ("recording one segment (opened + closed), CPU", f"{seg_cpu:.2f} ms "
         f"({seg_wall:.2f} ms wall)", "≤ 5 ms"),
        ("its conversion record, CPU", f"{conv_cpu:.2f} ms ({conv_wall:.2f} ms wall)",
         "≤ 5 ms"),
        (f"the disk guard's deletion order over the year ({len(order):,} recordings)",
         f"{order_ms:.0f} ms", ""),
        (f"the first {len(first)} of that order (what the disk guard asks for)",
         f"{first_ms:.0f} ms", ""),
        ("catalog size on disk (after a checkpoint)", f"{size / 1e6:.1f} MB", ""),
    ])
    print(body)
    if not args.no_write:
        write_section("catalog", "The catalog (SQLite): a year of one camera", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
