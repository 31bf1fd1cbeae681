"""The Notifier contract, on every notifier: news with or without its structured form arrives
once and names its task, long news arrives whole, and a channel that cannot deliver raises.
Then what the signed webhook and the fan-out promise on top of it."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from orch.adapters.notifiers.fanout import ChannelsFailed, FanOut
from orch.adapters.notifiers.log import LogNotifier, MemoryNotifier
from orch.adapters.notifiers.telegram import TelegramNotifier
from orch.adapters.notifiers.webhook import WebhookError, WebhookNotifier
from orch.domain.news import News, NewsKind, Verdict
from orch.fakes.faults import Fault
from orch.fakes.server import FakeServer, Request, Response
from orch.fakes.telegram import TelegramFake
from orch.ports import Notifier
from orch.testing import SimClock

KEY = "DEMO-7#3:notify:v4:waiting"  # the idempotency key a notification is sent under
TASK = "DEMO-7"
NEWS = News(
    kind=NewsKind.WAITING,
    text="DEMO-7 waits for approve-plan before architecture",
    task_key=TASK,
    title="Add a greeting",
    stage="architecture",
    status="waiting",
    checkpoint="approve-plan",
    question="Approve the plan in the specification?",
    cost_usd=0.42,
    verdicts=(Verdict("spec-present", True), Verdict("coverage", False, "71% < 80%")),
    links=(("pull request", "https://git.example/app/pulls/3"),),
)
SECRET = "whsec-test-value"
TOKEN = "424242:AAF-contract-token"
CHAT = -100


class Receiver(FakeServer):
    """A webhook receiver as its docs tell one to be written: it checks the signature over the
    raw body and drops a delivery it has seen."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret.encode()
        self.deliveries: list[dict[str, Any]] = []
        self.seen: set[str] = set()

    def handle(self, request: Request) -> Response:
        expected = "sha256=" + hmac.new(self.secret, request.body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("x-orch-signature", "")):
            self.violate("a delivery whose signature does not verify")
            return Response(401)
        body = json.loads(request.body)
        delivery = request.headers.get("x-orch-delivery", "")
        if delivery != body["key"]:
            self.violate(f"X-Orch-Delivery {delivery!r} is not the key {body['key']!r}")
        if delivery not in self.seen:
            self.seen.add(delivery)
            self.deliveries.append(body)
        return Response(204)


@dataclass
class Channel:
    notifier: Notifier
    delivered: Callable[[], list[str]]  # what arrived, one text a message, in order
    break_it: Callable[[], None] | None  # makes the next deliveries fail, if they can
    violations: Callable[[], list[str]] = list


class Sleeps:
    def __init__(self) -> None:
        self.clock = SimClock()
        self.slept: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.advance(seconds)


@pytest.fixture(params=["log", "memory", "webhook", "telegram"])
def channel(request: pytest.FixtureRequest) -> Iterator[Channel]:
    if request.param == "log":
        caplog: pytest.LogCaptureFixture = request.getfixturevalue("caplog")
        caplog.set_level(logging.INFO, logger="orch.notify")
        yield Channel(
            LogNotifier(),
            lambda: [r.getMessage() for r in caplog.records if r.name == "orch.notify"],
            None,
        )
    elif request.param == "memory":
        memory = MemoryNotifier()

        def fail() -> None:
            memory.fail_with = RuntimeError("memory notifier told to fail")

        yield Channel(memory, lambda: [f"{k}: {t}" for k, t in memory.sent], fail)
    elif request.param == "webhook":
        with Receiver(SECRET) as receiver:
            assert isinstance(receiver, Receiver)
            hook = WebhookNotifier(f"{receiver.url}/hooks/orch", SECRET, sleep=Sleeps())

            def refuse() -> None:
                receiver.faults.add(Fault(status=400, times=100))

            yield Channel(
                hook,
                lambda: [json.dumps(d) for d in receiver.deliveries],
                refuse,
                lambda: receiver.violations,
            )
            hook.close()
    else:
        with TelegramFake(TOKEN) as fake:
            assert isinstance(fake, TelegramFake)
            fake.add_chat(CHAT)
            sleeps = Sleeps()
            telegram = TelegramNotifier(fake.url, TOKEN, [CHAT], sleep=sleeps, clock=sleeps.clock)

            def kicked() -> None:
                fake.faults.add(Fault(path="sendMessage", status=403, times=100))

            yield Channel(
                telegram,
                lambda: [m["text"] for m in fake.messages(CHAT)],
                kicked,
                lambda: fake.violations,
            )
            telegram.close()


def test_news_is_delivered_once_and_names_its_task(channel: Channel) -> None:
    channel.notifier.notify(KEY, "DEMO-7 waits for approve-plan", NEWS)
    [arrived] = channel.delivered()
    assert TASK in arrived
    assert channel.violations() == []


def test_a_plain_line_is_delivered_once_and_names_its_task(channel: Channel) -> None:
    channel.notifier.notify(KEY, "DEMO-7 is done: Add a greeting")
    [arrived] = channel.delivered()
    assert "DEMO-7 is done: Add a greeting" in arrived
    assert channel.violations() == []


def test_long_news_arrives_whole(channel: Channel) -> None:
    lines = [f"line {n:04d} of the report: <tags> & ampersands stay text" for n in range(400)]
    channel.notifier.notify(KEY, "\n".join(lines))
    arrived = "\n".join(channel.delivered())
    for line in lines:
        assert line in arrived or json.dumps(line)[1:-1] in arrived
    assert channel.violations() == []


def test_a_channel_that_cannot_deliver_raises(channel: Channel) -> None:
    if channel.break_it is None:
        pytest.skip("writing a log line cannot fail to deliver")
    channel.break_it()
    with pytest.raises(Exception):  # noqa: B017 - each channel raises its own error
        channel.notifier.notify(KEY, "DEMO-7 is done")
    assert channel.delivered() == []


# -- the signed webhook ------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(SECRET) as served:
        assert isinstance(served, Receiver)
        yield served


def test_the_webhook_posts_every_field_of_the_news_signed(receiver: Receiver) -> None:
    hook = WebhookNotifier(receiver.url, SECRET)
    hook.notify(KEY, "DEMO-7 waits", NEWS)
    [body] = receiver.deliveries
    assert (body["key"], body["text"]) == (KEY, "DEMO-7 waits")
    assert body["news"]["kind"] == "waiting"
    assert body["news"]["verdicts"][1] == {
        "gate": "coverage",
        "passed": False,
        "reason": "71% < 80%",
    }
    assert body["news"]["links"] == [["pull request", "https://git.example/app/pulls/3"]]
    assert set(body["news"]) == set(NEWS.__dataclass_fields__)
    assert body["sent_at"].endswith("Z")
    assert receiver.violations == []
    hook.close()


def test_a_webhook_signed_with_another_secret_is_refused_and_raises(receiver: Receiver) -> None:
    hook = WebhookNotifier(receiver.url, "not-the-secret", sleep=Sleeps())
    with pytest.raises(WebhookError, match="401"):
        hook.notify(KEY, "DEMO-7 is done")
    assert receiver.deliveries == []
    assert [e.status for e in receiver.exchanges] == [401]  # a 4xx is not tried again
    receiver.violations.clear()
    hook.close()


def test_a_failing_receiver_is_tried_again_under_the_same_delivery_id(receiver: Receiver) -> None:
    sleeps = Sleeps()
    hook = WebhookNotifier(receiver.url, SECRET, sleep=sleeps)
    receiver.faults.add(Fault(status=503, times=1))
    receiver.faults.add(Fault(status=429, retry_after=7, times=1))
    receiver.faults.add(Fault(drop=True, times=1))  # delivered, but the answer is lost
    hook.notify(KEY, "DEMO-7 is done")
    assert [e.status for e in receiver.exchanges] == [503, 429, 0, 204]
    assert sleeps.slept[1] == 7  # Retry-After honoured
    assert len(receiver.deliveries) == 1  # the receiver dropped the repeat by its delivery id
    assert receiver.violations == []
    hook.close()


def test_a_receiver_that_keeps_failing_fails_the_news_after_bounded_tries(
    receiver: Receiver,
) -> None:
    hook = WebhookNotifier(f"{receiver.url}/p/secret-path", SECRET, sleep=Sleeps(), attempts=3)
    receiver.faults.add(Fault(status=500, times=10))
    with pytest.raises(WebhookError, match="after 3 attempts") as failed:
        hook.notify(KEY, "DEMO-7 is done")
    assert len(receiver.exchanges) == 3
    assert "secret-path" not in str(failed.value)  # a URL's path may be a credential
    hook.close()


# -- fan-out -----------------------------------------------------------------------------------


def test_fan_out_reaches_every_channel_and_names_the_ones_that_failed() -> None:
    first, broken, last = MemoryNotifier(), MemoryNotifier(), MemoryNotifier()
    broken.fail_with = RuntimeError("chat not found")
    fan = FanOut([("log", first), ("telegram", broken), ("webhook", last)])
    with pytest.raises(ChannelsFailed, match="telegram: chat not found") as failed:
        fan.notify(KEY, "DEMO-7 is done", NEWS)
    assert failed.value.failed == ["telegram"]
    assert first.sent == last.sent == [(KEY, "DEMO-7 is done")]
    assert last.news == [(KEY, NEWS)]


def test_fan_out_with_every_channel_delivering_raises_nothing() -> None:
    one, two = MemoryNotifier(), MemoryNotifier()
    FanOut([("one", one), ("two", two)]).notify(KEY, "DEMO-7 is done")
    assert one.sent == two.sent == [(KEY, "DEMO-7 is done")]
