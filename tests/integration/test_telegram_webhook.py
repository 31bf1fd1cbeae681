"""Telegram's updates by webhook (`updates: webhook`): orch registers its URL with its secret
token as it starts listening, refuses an update without that token, works each `update_id`
once, and answers from the store's queue, not the request."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import httpx

from orch.bootstrap import build
from orch.config import Settings
from orch.demo import sample
from orch.fakes.telegram import TelegramFake, user
from orch.web.app import create_app

TOKEN, SECRET, CHAT = "123:bot-token", "hook-secret", -100
ANN = user(42, "Ann", "ann")


def test_an_update_is_checked_by_its_secret_token_and_worked_once(tmp_path: Path) -> None:
    _, remote = sample.create(tmp_path)
    with TelegramFake(TOKEN) as fake:
        fake.add_chat(CHAT)
        settings = Settings(
            data_dir=tmp_path / "data",
            store={"url": f"sqlite:///{tmp_path / 'orch.db'}"},
            repos=[{"name": "sample", "remote": str(remote), "key_prefix": "SAM"}],
            notifiers=[
                {
                    "kind": "telegram",
                    "api_url": fake.url,
                    "chats": [CHAT],
                    "users": [42],
                    "updates": "webhook",
                    "webhook_url": "https://orch.example/webhooks/telegram",
                }
            ],
        )
        env = {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_WEBHOOK_SECRET": SECRET}
        app = build(settings, environ=env)
        try:
            app.start_listening()
            assert fake.webhook is not None
            assert fake.webhook["url"] == "https://orch.example/webhooks/telegram"
            assert fake.webhook["secret_token"] == SECRET
            message = {
                "message_id": 7,
                "date": int(time.time()),
                "chat": {"id": CHAT, "type": "supergroup", "title": "team"},
                "from": ANN,
                "text": "/status SAM-1",
                "entities": [{"type": "bot_command", "offset": 0, "length": 7}],
            }
            update = {"update_id": 1001, "message": message}
            path, token = "/webhooks/telegram", {"X-Telegram-Bot-Api-Secret-Token": SECRET}

            async def post_all() -> list[httpx.Response]:
                transport = httpx.ASGITransport(app=create_app(app))
                async with httpx.AsyncClient(transport=transport, base_url="http://orch") as c:
                    guess = {"X-Telegram-Bot-Api-Secret-Token": "guess"}
                    return [
                        await c.post(path, json=update),
                        await c.post(path, json=update, headers=guess),
                        await c.post(path, json=update, headers=token),
                        await c.post(path, json=update, headers=token),
                    ]

            # on a thread of its own: the browser tests may leave an event loop on this one
            with ThreadPoolExecutor(1) as pool:
                refused, wrong, first, again = pool.submit(anyio.run, post_all).result()
            assert (refused.status_code, wrong.status_code) == (401, 401)
            assert (first.json(), again.json()) == ({"stored": True}, {"stored": False})

            def worked() -> bool:
                # the reply is sent while the update is worked; its outcome is written after
                stored = app.store.deliveries("telegram")
                return bool(fake.messages(CHAT)) and all(d.outcome for d in stored)

            deadline = time.monotonic() + 10
            while not worked() and time.monotonic() < deadline:
                time.sleep(0.05)
            [reply] = fake.messages(CHAT)
            assert "no task for ticket SAM-1" in reply["text"]
            assert [d.outcome for d in app.store.deliveries("telegram")] == ["answered"]
            assert fake.violations == []
        finally:
            app.close()
