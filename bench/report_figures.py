"""How long the managers' figures take to compute, in process, for a busy month.

    python bench/report_figures.py [--tickets N] [--runs R]

Builds N synthetic tickets over November 2026 (two teams, six engineers, every
stage logged, some reopened or transferred) and prints the median of R runs of:
one day's figures for all teams, one team's month, and the month's heat map.
The database read (reports/load.py) is not included: these are the pure
computations the daily job and the chat commands run after it.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reports.figures import Dataset, Settings, compute, day_period, heat_map, month_period  # noqa: E402
from storage.models import Ticket, TicketEvent  # noqa: E402

TZ = ZoneInfo("Asia/Shanghai")


def synthetic(n: int, seed: int = 7) -> Dataset:
    rnd = random.Random(seed)
    tickets, events = [], []
    start = datetime(2026, 11, 1, tzinfo=TZ)
    people = [f"e{i}" for i in range(6)]
    for i in range(1, n + 1):
        at = start + timedelta(seconds=rnd.uniform(0, 30 * 86400))
        team = "a" if i % 2 else "b"
        tickets.append(Ticket(id=i, number=f"SRV-{i:06d}", state="new", category="c", category_name=f"类{i % 7}",
                              priority=rnd.choice(("P0", "P1", "P2")), summary="s", reporter_id="c",
                              reporter_channel="playground", reporter_conv_kind="user", reporter_conv_id="c",
                              team=team, created_at=at, updated_at=at, respond_by=at, resolve_by=at))
        who = rnd.choice(people)
        t = at
        log = [("report", "c", "new")]
        steps = [("claim", who, "claimed")]
        if rnd.random() < 0.1:
            steps += [("transfer", who, "transferred"), ("claim", rnd.choice(people), "claimed")]
        steps += [("depart", who, "on_the_way"), ("arrive", who, "on_site"), ("start_repair", who, "repairing"),
                  ("resolve", who, "resolved")]
        if rnd.random() < 0.05:
            steps += [("reopen", "c", "reopened"), ("claim", who, "claimed"), ("resolve", who, "resolved")]
        steps += [("rate", "c", "closed")]
        for action, actor, state in log + steps:
            events.append(TicketEvent(id=len(events) + 1, ticket_id=i, action=action, actor_id=actor, actor_name=actor,
                                      channel="playground", at=t, to_state=state,
                                      detail={"stars": rnd.randint(1, 5)} if action == "rate" else {}))
            t += timedelta(minutes=rnd.expovariate(1 / 40))
    return Dataset(tickets, events, (), {p: p for p in people})


def median_ms(fn, runs: int) -> float:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tickets", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    data = synthetic(args.tickets)
    s = Settings(TZ, {"P0": (timedelta(minutes=10), timedelta(hours=4)), "P1": (timedelta(minutes=30), timedelta(hours=24)),
                      "P2": (timedelta(hours=4), timedelta(hours=72))})
    day, month = day_period(date(2026, 11, 15), TZ), month_period(2026, 11, TZ)
    print(f"{args.tickets} tickets, {len(data.events)} events; median of {args.runs} runs")
    print(f"  day, all teams     {median_ms(lambda: compute(data, day, s), args.runs):8.1f} ms")
    print(f"  month, one team    {median_ms(lambda: compute(data, month, s, 'a'), args.runs):8.1f} ms")
    print(f"  month heat map     {median_ms(lambda: heat_map(data, month, 'team'), args.runs):8.1f} ms")


if __name__ == "__main__":
    main()
