"""Notifications through DingTalk and WeCom bots and an SMS gateway, by apprise's own plugins,
against local receivers (tests/notify_support.py): the vendors' bot APIs behind a local HTTPS
proxy with a test CA, an SMSEagle-style SMS gateway on a local port.

For each channel: the route's rate limit (two a minute, then one summary), escalation along
the on-call list to another bot / phone when an alarm stays unacknowledged (not for the one
acknowledged meanwhile), DingTalk's signed-secret mode checked as DingTalk checks it. And a
channel that fails (refused by its vendor, SMS gateway down, a URL apprise cannot use) is
logged by name and never keeps the others from their message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import wire
from edge.alarm_manager import AlarmRecord, AlarmStore
from edge.alarm_notify import Notifier
from edge.config._models import NotificationRoute
from tests.contract.test_alarm_notify import Receiver, receiver  # noqa: F401 (fixture)
from tests.factories import alarm
from tests.notify_support import SmsGateway, VendorProxy, closed_port
from tests.support import async_wait_until

pytestmark = pytest.mark.contract

DING = "oapi.dingtalk.com"
WECOM = "qyapi.weixin.qq.com"
DUTY_SECRET, ONCALL_SECRET = (
    "SECd0e1f2a3b4c5d6e7f8091a2b3c4d5e6f",
    "SEC99887766554433221100aabbccddeeff",
)
DUTY_PHONE, ONCALL_PHONE = "+8613800000001", "+8613900000002"


@pytest.fixture
def vendors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VendorProxy]:
    with VendorProxy(tmp_path / "vendor-pki") as proxy:
        for name, value in proxy.env().items():
            monkeypatch.setenv(name, value)
        yield proxy


@pytest.fixture
def sms() -> Iterator[SmsGateway]:
    gateway = SmsGateway().start()
    try:
        yield gateway
    finally:
        gateway.stop()


def _dingtalk_signature_ok(query: dict[str, str], secret: str) -> bool:
    """DingTalk's check of a signed bot call: HMAC-SHA256 over "<timestamp>\\n<secret>"
    with the secret, base64; the timestamp (ms) within an hour of now."""
    stamp = query["timestamp"]
    mac = hmac.new(secret.encode(), f"{stamp}\n{secret}".encode(), hashlib.sha256).digest()
    fresh = abs(time.time() * 1000 - int(stamp)) < 3600 * 1000
    return fresh and hmac.compare_digest(base64.b64encode(mac).decode(), query["sign"])


class Channel:
    """One kind of channel: the duty and on-call URLs and what each received."""

    def __init__(
        self, duty: str, oncall: str, texts: Callable[[str], list[str]], check: Callable[[], None]
    ) -> None:
        self.duty, self.oncall = duty, oncall
        self.texts = texts  # "duty" / "oncall" -> the texts delivered there
        self.check = check  # channel-specific assertions on what was delivered


def _dingtalk(vendors: VendorProxy) -> Channel:
    tokens = {"duty": "dutytoken0a1b2c", "oncall": "oncalltoken3d4e5f"}

    def texts(who: str) -> list[str]:
        return [
            d.body["text"]["content"]
            for d in vendors.to(DING)
            if d.query.get("access_token") == tokens[who]
        ]

    def check() -> None:
        calls = vendors.to(DING)
        assert all(d.path == "/robot/send" and d.body["msgtype"] == "text" for d in calls)
        secrets = {tokens["duty"]: DUTY_SECRET, tokens["oncall"]: ONCALL_SECRET}
        for d in calls:  # every call signed with its own bot's secret
            assert _dingtalk_signature_ok(d.query, secrets[d.query["access_token"]]), d.query

    return Channel(
        f"dingtalk://{DUTY_SECRET}@{tokens['duty']}/",
        f"dingtalk://{ONCALL_SECRET}@{tokens['oncall']}/",
        texts,
        check,
    )


def _wecom(vendors: VendorProxy) -> Channel:
    keys = {"duty": "duty-key-0001", "oncall": "oncall-key-0002"}

    def texts(who: str) -> list[str]:
        return [d.body["text"]["content"] for d in vendors.to(WECOM) if d.query["key"] == keys[who]]

    def check() -> None:
        calls = vendors.to(WECOM)
        assert all(d.path == "/cgi-bin/webhook/send" and d.body["msgtype"] == "text" for d in calls)

    return Channel(f"wecombot://{keys['duty']}", f"wecombot://{keys['oncall']}", texts, check)


def _sms(sms: SmsGateway) -> Channel:
    phones = {"duty": DUTY_PHONE, "oncall": ONCALL_PHONE}

    def check() -> None:
        assert all(m["path"] == "/jsonrpc/sms" and m["method"] == "sms.send_sms" for m in sms.got)
        assert all(m["params"]["access_token"] == "eagletoken1" for m in sms.got)

    return Channel(
        sms.url(DUTY_PHONE), sms.url(ONCALL_PHONE), lambda who: sms.texts_to(phones[who]), check
    )


def _raised(rec: AlarmRecord, seq: int) -> wire.AlarmEvent:
    ev = alarm(seq, tag=rec.tag, level="cut", previous="normal", alarm_id=rec.alarm_id,
               area="panel-1", ts_ns=rec.since_ns)  # fmt: skip
    return wire.AlarmEvent(**{**{f: getattr(ev, f) for f in ev.__struct_fields__},
                              "state": "unacknowledged", "priority": "critical"})  # fmt: skip


@pytest.mark.parametrize("kind", ["dingtalk", "wecom", "sms"])
async def test_rate_limit_and_escalation_through_each_channel(
    kind: str, vendors: VendorProxy, sms: SmsGateway, tmp_path: Path
) -> None:
    channel = {"dingtalk": _dingtalk, "wecom": _wecom}.get(kind, lambda _v: _sms(sms))(vendors)
    store = AlarmStore(tmp_path / "alarms.sqlite")
    recs = [
        store.on_condition(
            f"CH4-{i}",
            f"CH4-{i}",
            "cut",
            kind="ch4",
            fail_safe=True,
            reason="above_cut",
            ts_ns=time.time_ns(),
        )
        for i in (1, 2, 3)
    ]
    route = NotificationRoute(
        name="panel",
        urls=(channel.duty,),
        min_priority="high",
        max_per_minute=2,
        escalate_after_s=1.0,
        escalate_to=(channel.oncall,),
    )
    now = [1000.0]
    notifier = Notifier([route], store, clock=lambda: now[0])
    task = asyncio.create_task(notifier.run(check_s=0.05))
    try:
        for seq, rec in enumerate(recs, 1):
            notifier.on_event(_raised(rec, seq))
        store.act(recs[1].alarm_id, "acknowledge", actor="wang")  # CH4-2 seen at once
        await async_wait_until(lambda: len(channel.texts("duty")) == 2, 20, "two raises")
        assert notifier.limited == 1, "the third raise waits for the minute"
        # the on-call list: CH4-1 and CH4-3 still unacknowledged a second later
        await async_wait_until(lambda: len(channel.texts("oncall")) == 2, 20, "escalations")
        now[0] += 61  # the minute is over: the held raise goes out as one summary
        await async_wait_until(lambda: len(channel.texts("duty")) == 3, 20, "the summary")
        await async_wait_until(lambda: notifier.sent == 5, 10, "every delivery counted")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    duty, oncall = channel.texts("duty"), channel.texts("oncall")
    assert "[critical] mine-a/CH4-1 cut" in duty[0] and "CH4-2" in duty[1]
    assert "1 more alarms (rate limit)" in duty[2] and "CH4-3" in duty[2]
    assert sorted(t.split("] ")[1].split(" ")[0] for t in oncall) == ["CH4-1", "CH4-3"]
    assert all(t.startswith("[escalation 1/1]") and "unacknowledged" in t for t in oncall)
    assert notifier.failed == 0 and notifier.escalations == 2
    channel.check()
    store.close()


async def test_a_failing_channel_is_named_in_the_log_and_the_others_still_deliver(
    vendors: VendorProxy,
    receiver: Receiver,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    vendors.status[DING] = 500  # DingTalk refuses
    down = closed_port()  # the SMS gateway is off
    route = NotificationRoute(
        name="everyone",
        urls=(
            f"dingtalk://{DUTY_SECRET}@dutytoken0a1b2c/",
            f"smseagle://eagletoken1@127.0.0.1:{down}/{DUTY_PHONE}",
            "wecombot://duty-key-0001",
            receiver.url("webhook"),
        ),
        min_priority="high",
    )
    store = AlarmStore(tmp_path / "alarms.sqlite")
    rec = store.on_condition("CH4-1", "CH4-1", "cut", kind="ch4", fail_safe=True,
                             reason="above_cut", ts_ns=time.time_ns())  # fmt: skip
    notifier = Notifier([route], store)
    task = asyncio.create_task(notifier.run(check_s=0.05))
    caplog.set_level(logging.ERROR, logger="safewatch.edge.notify")
    try:
        notifier.on_event(_raised(rec, 1))
        await async_wait_until(lambda: notifier.failed == 1, 30, "the delivery attempted")
        # the next alarm is not held up by the broken channels either
        rec2 = store.on_condition("CH4-2", "CH4-2", "cut", kind="ch4", fail_safe=True,
                                  reason="above_cut", ts_ns=time.time_ns())  # fmt: skip
        notifier.on_event(_raised(rec2, 2))
        await async_wait_until(lambda: notifier.failed == 2, 30, "the second delivery")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    wecom = [d.body["text"]["content"] for d in vendors.to(WECOM)]
    assert [("CH4-1" in w, "CH4-2" in w) for w in wecom] == [(True, False), (False, True)]
    assert [str(m["title"]).split("/")[-1] for _, m in receiver.got] == ["CH4-1 cut", "CH4-2 cut"]
    assert len(vendors.to(DING)) == 2, "DingTalk was tried each time (and refused)"
    failures = [r.getMessage() for r in caplog.records if "failed;" in r.getMessage()]
    assert len(failures) == 4, failures  # two channels, two alarms
    assert sum(m.startswith("notification channel dingtalk://****@") for m in failures) == 2
    assert sum(f"smseagle://****@127.0.0.1:{down}" in m for m in failures) == 2
    assert not any(DUTY_SECRET in r.getMessage() for r in caplog.records), "no secret logged"
    store.close()
