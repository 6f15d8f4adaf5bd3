"""API load generator: other systems creating tickets and hearing of them by webhook.

    .venv/bin/python bench/api.py --rate 100 --seconds 10

What it does, all on 127.0.0.1:
  1. starts `run_bot.py` as a subprocess on a free port with its own SQLite
     database (or --database-url), webhooks to private addresses allowed;
  2. creates a token with `run_bot.py api-token create` and subscribes a local
     receiver to `ticket.created` (it verifies every signature);
  3. sends `POST /api/v1/tickets` at the given rate (open loop: request i is due
     at start + i/rate), each with its own Idempotency-Key;
  4. prints create latency (due -> answer) p50/p99/max, statuses, throughput,
     and webhook latency (answer -> signed event received) p50/p99/max.

The last line is `p99_create_ms=<n> p99_webhook_ms=<n> rate=<n>/s`. Bounded: at
most 500/s for 60 s, loopback only.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from standardwebhooks.webhooks import Webhook  # noqa: E402

from bench.callbacks import HOST, free_port, pct, start_bot, wait_healthy  # noqa: E402

REPORTS = ["3号线水泵漏水停机了", "空压机异响，压力上不去", "车间照明灯不亮", "变频器报警 E07 停机", "包装机卡料"]


async def main(args) -> int:
    rate, seconds = min(args.rate, 500.0), min(args.seconds, 60.0)
    work = Path(tempfile.mkdtemp(prefix="relaydesk-api-bench-"))
    db_url = args.database_url or f"sqlite+aiosqlite:///{work}/relaydesk.db"
    config = work / "relaydesk.toml"
    demo = (ROOT / "bot" / "default_config.toml").read_text(encoding="utf-8")
    demo = "\n".join(line for line in demo.splitlines() if not line.startswith("database_url"))
    config.write_text(f'database_url = "{db_url}"\n{demo}\n[webhooks]\nallow_private = true\n'
                      "[api]\nrate_per_second = 100000\nburst = 100000\n", encoding="utf-8")
    env = {**os.environ, "RELAYDESK_DATABASE_URL": db_url}
    made = subprocess.run([sys.executable, str(ROOT / "run_bot.py"), "api-token", "create", "--name", "bench",
                           "--scopes", "tickets:read,tickets:write,webhooks:write", "--config", str(config)],
                          capture_output=True, text=True, env=env, cwd=work, check=True)
    token = made.stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}

    received: dict[str, float] = {}
    secret: dict[str, str] = {}
    bad = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal bad
        body = await request.read()
        try:
            event = Webhook(secret["s"]).verify(body, dict(request.headers))
        except Exception:
            bad += 1
            return web.Response(status=400)
        received[event["data"]["ticket"]["number"]] = time.perf_counter()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    hook_port = free_port()
    await web.TCPSite(runner, HOST, hook_port).start()

    port = free_port()
    proc = start_bot(config, port, work, work / "bot.log")
    base = f"http://{HOST}:{port}"
    answered: dict[str, float] = {}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    try:
        async with aiohttp.ClientSession() as session:
            await wait_healthy(session, base, proc, 60)
            async with session.post(base + "/api/v1/webhooks", headers=headers,
                                    json={"url": f"http://{HOST}:{hook_port}/hook", "event_types": ["ticket.created"]}) as r:
                secret["s"] = (await r.json())["secret"]
            n = int(rate * seconds)
            start = time.perf_counter() + 0.2

            async def one(i: int) -> None:
                due = start + i / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                body = {"text": REPORTS[i % len(REPORTS)], "external_id": f"B-{i}"}
                try:
                    async with session.post(base + "/api/v1/tickets", json=body,
                                            headers={**headers, "Idempotency-Key": f"bench-{i}"},
                                            timeout=aiohttp.ClientTimeout(total=30)) as r:
                        data = await r.json(content_type=None)
                        status = r.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status, data = 0, {}
                now = time.perf_counter()
                latencies.append(now - due)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 201:
                    answered[data["number"]] = now

            await asyncio.gather(*(one(i) for i in range(n)))
            end = time.perf_counter()
            deadline = time.monotonic() + 60
            while len(received) < len(answered) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        await runner.cleanup()
    hooks = [received[k] - answered[k] for k in answered if k in received]
    ms = lambda xs, p: pct(xs, p) * 1000  # noqa: E731
    print(f"creates: {n} at {rate:g}/s for {seconds:g}s; statuses {json.dumps(statuses)}; "
          f"throughput {statuses.get(201, 0) / max(end - start, 1e-9):.1f}/s")
    print(f"create latency ms: p50 {ms(latencies, 50):.1f}  p99 {ms(latencies, 99):.1f}  max {max(latencies) * 1000:.1f}")
    if hooks:
        print(f"webhook after answer ms: p50 {ms(hooks, 50):.1f}  p99 {ms(hooks, 99):.1f}  max {max(hooks) * 1000:.1f}; "
              f"received {len(hooks)}/{len(answered)}, bad signatures {bad}")
    print(f"p99_create_ms={ms(latencies, 99):.0f} p99_webhook_ms={ms(hooks, 99) if hooks else float('nan'):.0f} "
          f"rate={statuses.get(201, 0) / max(end - start, 1e-9):.0f}/s")
    return 0 if statuses.get(201, 0) == n and len(hooks) == n and not bad else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--database-url", help="default: a fresh SQLite file")
    sys.exit(asyncio.run(main(p.parse_args())))
