"""Outbound messages, tool limits and usage over one MCP transport (docs/tools.md#common-rules, docs/tools.md#catalogue, docs/errors.md, docs/limits.md).

Usage: COMMGUARD_URL=... COMMGUARD_MASTER_TOKEN=... mcp_outbound.py --transport sse|streamable

The server must run with DEFAULT_MAX_ACTIONS_PER_MINUTE=50, DEFAULT_MAX_ACTIONS_PER_HOUR=1000,
DEFAULT_MAX_ACTIONS_PER_DAY=1000 and HTTP rate limits high enough for a few hundred requests.
Orgs are sandbox orgs, so every send goes to the mock provider (docs/security.md#organizations). Compliance checks
(consent, DNC, content filter) are not exercised here. Every org and agent is new to this run,
so both transport runs can share one server.
Exit 0 = every step passed; otherwise a traceback and `FAIL <step>`.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import anyio

import cg
from cg import expect, expect_eq, expect_ok, expect_refusal, step

PER_MINUTE = 50  # DEFAULT_MAX_ACTIONS_PER_MINUTE of the server under test (the starter tier, docs/limits.md#tiers)
PER_HOUR = PER_DAY = 1000
SESSIONS = 20  # concurrent sessions of one agent in the burst
BURST = 200  # concurrent sends in the burst
SMS_COST = Decimal("0.0079")  # mock provider (docs/security.md#organizations)
EMAIL_COST = Decimal("0.001")
FAILING_NUMBER = "+15005550001"  # the mock provider's failure hook (docs/security.md#organizations)
BURST_RECIPIENTS = 10  # the burst cycles over this many numbers, each with consent (docs/compliance.md#consent)
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SMS_ID = re.compile(r"^SM[0-9a-fA-F]{32}$")
EMAIL_ID = re.compile(r"^EM[0-9a-fA-F]{32}$")
OUTBOUND_AGENT_TOOLS = {"comms_send_message", "comms_get_usage_dashboard", "comms_get_billing_summary"}
OUTBOUND_SUPER_TOOLS = {"comms_set_agent_limits", "comms_set_billing_config"}
CAN_SPAM = {"code": "can_spam_unsubscribe_missing", "message": "Email has no unsubscribe link (CAN-SPAM)"}


def rate_limit_message(limit_type: str, current: int, maximum: int) -> str:
    """docs/errors.md: `Rate limit exceeded: <limitType> (<current>/<max>). Resets <resetDescription>.`"""
    return f"Rate limit exceeded: {limit_type} ({current}/{maximum}). Resets in up to 60 seconds."


def money(value) -> Decimal:
    """A JSON money number (≤ 6 decimals, docs/README.md#conventions) as an exact Decimal."""
    expect(isinstance(value, (int, float)) and not isinstance(value, bool), f"money is not a JSON number: {value!r}")
    return Decimal(repr(value)).quantize(Decimal("0.000001"))


def expect_money(value, expected: Decimal, what: str) -> None:
    expect_eq(money(value), expected.quantize(Decimal("0.000001")), what)


def billed(provider: Decimal, markup_percent: int) -> Decimal:
    """docs/tools.md#catalogue: provider × (1 + markup/100), half away from zero to 4 decimals, 0 if provider ≤ 0."""
    if provider <= 0:
        return Decimal(0)
    return (provider * (1 + Decimal(markup_percent) / 100)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def parse_time(text, what: str) -> datetime:
    expect(isinstance(text, str), f"{what}: not a string: {text!r}")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AssertionError(f"{what}: not an RFC 3339 time: {text!r}") from None


@dataclass
class Agent:
    id: str
    token: str
    phone: str
    email: str
    sms_sent: int = 0
    emails_sent: int = 0


@dataclass
class World:
    t: str  # transport
    master: str
    run: str
    org_id: str = ""
    org_token: str = ""
    agents: list[Agent] = field(default_factory=list)

    @property
    def burst(self) -> Agent:  # the agent whose per-minute window the burst fills
        return self.agents[0]

    @property
    def second(self) -> Agent:  # a fresh agent for everything after the burst
        return self.agents[1]


def sms(to: str, body: str = "E2E outbound test message") -> dict:
    return {"to": to, "body": body, "channel": "sms"}


def expect_sent_sms(body: dict, agent: Agent, to: str, what: str) -> None:
    expect_eq(body.get("success"), True, f"{what}: success")
    expect_eq(body.get("status"), "sent", f"{what}: status")
    expect_money(body.get("cost"), SMS_COST, f"{what}: cost")
    expect(SMS_ID.match(str(body.get("externalId"))), f"{what}: externalId is not SM + 32 hex: {body.get('externalId')!r}")
    expect_eq(body.get("sandbox"), True, f"{what}: sandbox")
    expect_eq(body.get("channel"), "sms", f"{what}: channel")
    expect_eq(body.get("to"), to, f"{what}: to")
    expect_eq(body.get("from"), agent.phone, f"{what}: from is the agent's number")
    expect(UUID.match(str(body.get("messageId"))), f"{what}: messageId is not a UUID: {body.get('messageId')!r}")
    expect_eq(body.get("warnings"), [], f"{what}: warnings")


def expect_rate_limited(result, limit_type: str, current: int, maximum: int, what: str,
                        window: tuple[datetime, datetime] | None = None) -> dict:
    body = expect_refusal(result, "rate_limited", rate_limit_message(limit_type, current, maximum), what)
    expect_eq(body.get("limitType"), limit_type, f"{what}: limitType")
    expect_eq(body.get("current"), current, f"{what}: current")
    expect_eq(body.get("max"), maximum, f"{what}: max")
    expect_eq(body.get("resetDescription"), "in up to 60 seconds", f"{what}: resetDescription")
    reset_at = parse_time(body.get("resetAt"), f"{what}: resetAt")
    if window:  # the oldest counted action leaves the rolling minute (docs/limits.md#tool-limits)
        low, high = window
        expect(low <= reset_at <= high, f"{what}: resetAt {body.get('resetAt')} not within [{low}, {high}]")
    expect(UUID.match(str(body.get("requestId"))), f"{what}: requestId is not a UUID: {body.get('requestId')!r}")
    return body


# ---------------------------------------------------------------- steps

async def set_up(w: World) -> None:
    slug = f"e2e-out-{w.t}-{w.run}"
    async with cg.connect(w.t, w.master) as s:
        org = expect_ok(await cg.call(s, "comms_create_organization",
                                      {"name": f"E2E {slug}", "slug": slug, "a2pRegistered": True}),
                        "master creates an org")
        expect_eq(org.get("mode"), "sandbox", "new org mode")
        w.org_id, w.org_token = org["orgId"], org["adminToken"]
    async with cg.connect(w.t, w.org_token) as s:
        for n in (1, 2):
            body = expect_ok(await cg.call(s, "comms_provision_channels",
                                           {"displayName": f"E2E outbound agent {n}", "country": "US",
                                            "capabilities": {"phone": True, "email": True}}),
                             f"org provisions agent {n}")
            channels = body.get("channels") or {}
            phone, email = channels.get("phone"), channels.get("email")
            expect(isinstance(phone, str) and re.match(r"^\+1555\d{7}$", phone), f"agent {n}: mock phone number: {channels}")
            expect(isinstance(email, str) and "@" in email, f"agent {n}: email address: {channels}")
            w.agents.append(Agent(body["agentId"], body["securityToken"], phone, email))
    # Every recipient consented (docs/compliance.md#consent): without consent no send goes out.
    phones = [f"+1202555{i:04d}" for i in range(BURST_RECIPIENTS)] + ["+12025559999", FAILING_NUMBER]
    phones += [f"+1202556{n:04d}" for n in range(1, 7)]
    emails = [f"e2e.recipient.{w.run}@example.com", "reader@example.com"]
    for agent in w.agents:
        async with cg.connect(w.t, agent.token) as s:
            for address, channel in [(p, "sms") for p in phones] + [(e, "email") for e in emails]:
                expect_ok(await cg.call(s, "comms_record_consent", {"contactAddress": address, "channel": channel}),
                          f"consent of {address} on {channel}")
    async with cg.connect(w.t, w.burst.token) as s:
        who = await cg.principal(s)
        expect_eq((who.get("kind"), who.get("id"), who.get("orgId")), ("agent", w.burst.id, w.org_id),
                  "agent principal (kind, id, orgId)")
        names = await cg.tool_names(s)
        expect(OUTBOUND_AGENT_TOOLS <= names, f"agent tools/list lacks {sorted(OUTBOUND_AGENT_TOOLS - names)}")


async def concurrent_burst(w: World) -> None:
    agent = w.burst
    results: list[tuple[str, tuple[bool, object]] | None] = [None] * BURST
    async with AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(cg.connect(w.t, agent.token)) for _ in range(SESSIONS)]

        async def send(i: int) -> None:
            to = f"+1202555{i % BURST_RECIPIENTS:04d}"
            results[i] = (to, await cg.call(sessions[i % SESSIONS], "comms_send_message", sms(to)))

        started = datetime.now(timezone.utc)
        async with anyio.create_task_group() as tg:
            for i in range(BURST):
                tg.start_soon(send, i)
        ended = datetime.now(timezone.utc)

    sent = [(to, body) for to, (is_error, body) in results if not is_error]
    refused = [(to, (is_error, body)) for to, (is_error, body) in results if is_error]
    codes = Counter(str(body.get("code")) if isinstance(body, dict) else repr(body) for _, (_, body) in refused)
    print(f"  {BURST} concurrent sends over {SESSIONS} sessions: {len(sent)} sent, refused by code {dict(codes)},"
          f" {(ended - started).total_seconds():.1f}s")
    expect_eq(len(sent), PER_MINUTE, f"successful sends of {BURST} concurrent ones (per-minute limit {PER_MINUTE})")
    for to, body in sent:
        expect_sent_sms(body, agent, to, f"burst send to {to}")
    expect_eq(len({b["messageId"] for _, b in sent}), PER_MINUTE, "distinct messageIds")
    expect_eq(len({b["externalId"] for _, b in sent}), PER_MINUTE, "distinct externalIds")
    # resetAt: when the oldest of the 50 counted sends leaves the rolling minute.
    window = (started + timedelta(seconds=60) - timedelta(seconds=1), ended + timedelta(seconds=61))
    for to, result in refused:
        expect_rate_limited(result, "per-minute", PER_MINUTE, PER_MINUTE, f"burst send to {to}", window)
    agent.sms_sent = len(sent)

    # The window is still full: one more send from a fresh session is refused the same way.
    async with cg.connect(w.t, agent.token) as s:
        expect_rate_limited(await cg.call(s, "comms_send_message", sms("+12025559999")),
                            "per-minute", PER_MINUTE, PER_MINUTE, "send after the burst")


async def provider_failure_and_override(w: World) -> None:
    agent = w.second
    async with cg.connect(w.t, agent.token) as s:
        failed = await cg.call(s, "comms_send_message", sms(FAILING_NUMBER))
        body = expect_refusal(failed, "provider_error", None, f"send to the mock failure hook {FAILING_NUMBER}")
        expect(isinstance(body.get("error"), str) and body["error"], f"provider_error has no message: {body}")
        expect(body.get("provider"), f"provider_error names no provider (§7): {body}")

    async with cg.connect(w.t, w.master) as m:
        reply = expect_ok(await cg.call(m, "comms_set_agent_limits",
                                        {"agentId": agent.id, "limits": {"maxActionsPerMinute": 2}}),
                          "master sets maxActionsPerMinute 2")
        expect_eq(reply.get("agentId"), agent.id, "set limits: agentId")
        current = reply.get("currentLimits") or {}
        expect_eq(current.get("maxActionsPerMinute"), 2, "currentLimits.maxActionsPerMinute")
        expect_eq(current.get("maxActionsPerHour"), PER_HOUR, "currentLimits.maxActionsPerHour (starter default)")
        expect_eq(current.get("maxActionsPerDay"), PER_DAY, "currentLimits.maxActionsPerDay (starter default)")
        expect_eq((reply.get("overrides") or {}).get("maxActionsPerMinute"), 2, "overrides.maxActionsPerMinute")
        expect_eq(reply.get("tier"), "starter", "tier")

    async with cg.connect(w.t, agent.token) as s:
        # The failed send consumed nothing (P4): both slots of the new per-minute limit are free.
        for n in (1, 2):
            to = f"+1202556{n:04d}"
            expect_sent_sms(expect_ok(await cg.call(s, "comms_send_message", sms(to)), f"send {n} of 2"),
                            agent, to, f"send {n} of 2")
            agent.sms_sent += 1
        expect_rate_limited(await cg.call(s, "comms_send_message", sms("+12025560003")),
                            "per-minute", 2, 2, "third send with maxActionsPerMinute 2")

    async with cg.connect(w.t, w.master) as m:  # null clears the override (docs/tools.md#catalogue): back to the tier's 50
        reply = expect_ok(await cg.call(m, "comms_set_agent_limits",
                                        {"agentId": agent.id, "limits": {"maxActionsPerMinute": None}}),
                          "master clears maxActionsPerMinute")
        expect_eq((reply.get("currentLimits") or {}).get("maxActionsPerMinute"), PER_MINUTE,
                  "currentLimits.maxActionsPerMinute after clearing the override")
        expect_eq((reply.get("overrides") or {}).get("maxActionsPerMinute"), None, "overrides.maxActionsPerMinute cleared")

    async with cg.connect(w.t, agent.token) as s:  # sends pass again; 5 SMS make step 5's billing a rounding tie
        for n in range(4, 7):
            to = f"+1202556{n:04d}"
            expect_sent_sms(expect_ok(await cg.call(s, "comms_send_message", sms(to)), f"send {n} after clearing"),
                            agent, to, f"send {n} after clearing")
            agent.sms_sent += 1


async def email_and_roles(w: World) -> None:
    agent = w.second
    async with cg.connect(w.t, agent.token) as s:
        no_subject = await cg.call(s, "comms_send_message",
                                   {"to": "someone@example.com", "body": "Hello", "channel": "email"})
        body = expect_refusal(no_subject, "invalid_input",
                              'Subject is required for email channel', "email without subject")
        expect_eq(body.get("field"), "subject", "email without subject: field")

        to = f"E2E.Recipient.{w.run}@Example.COM"
        sent = expect_ok(await cg.call(s, "comms_send_message",
                                       {"to": to, "body": "Hello from the e2e test.", "channel": "email",
                                        "subject": "E2E subject"}),
                         "email without an unsubscribe link")
        expect_eq(sent.get("to"), to.lower(), "email `to` is lower-cased")
        expect_eq(sent.get("status"), "sent", "email status")
        expect_money(sent.get("cost"), EMAIL_COST, "email cost")
        expect(EMAIL_ID.match(str(sent.get("externalId"))), f"email externalId is not EM + 32 hex: {sent.get('externalId')!r}")
        expect_eq(sent.get("sandbox"), True, "email sandbox")
        expect_eq(sent.get("channel"), "email", "email channel")
        expect_eq(sent.get("subject"), "E2E subject", "email subject")
        expect_eq(sent.get("from"), agent.email, "email from is the agent's address")
        warnings = sent.get("warnings") or []
        expect(warnings and warnings[0].get("code") == CAN_SPAM["code"], f"CAN-SPAM warning missing: {sent}")
        expect_eq(warnings[0], CAN_SPAM, "CAN-SPAM warning")
        agent.emails_sent += 1

        with_link = expect_ok(await cg.call(s, "comms_send_message",
                                            {"to": "reader@example.com", "channel": "email", "subject": "News",
                                             "body": "Hi. To UNSUBSCRIBE reply to this message."}),
                              "email with an unsubscribe mention")
        expect_eq(with_link.get("warnings"), [], "email with an unsubscribe mention: warnings")
        agent.emails_sent += 1

        whatsapp = await cg.call(s, "comms_send_message", {"to": "+12025557777", "body": "Hi", "channel": "whatsapp"})
        expect_refusal(whatsapp, "unavailable", 'Channel "whatsapp" is not available', "whatsapp")

        names = await cg.tool_names(s)
        expect(not names & OUTBOUND_SUPER_TOOLS, f"agent tools/list shows {sorted(names & OUTBOUND_SUPER_TOOLS)}")
        refused = await cg.call(s, "comms_set_agent_limits", {"agentId": agent.id, "limits": {"maxActionsPerMinute": 500}})
        expect_refusal(refused, "forbidden", cg.ADMIN_REQUIRED, "agent calls comms_set_agent_limits")
        refused = await cg.call(s, "comms_set_billing_config", {"agentId": agent.id, "markupPercent": 0})
        expect_refusal(refused, "forbidden", cg.ADMIN_REQUIRED, "agent calls comms_set_billing_config")


async def dashboard_when_settled(s, agent: Agent, within: float = 10.0) -> dict:
    """The agent's `today` dashboard once totalActions has reached its successful sends."""
    wanted = agent.sms_sent + agent.emails_sent
    deadline = time.monotonic() + within
    while True:
        body = expect_ok(await cg.call(s, "comms_get_usage_dashboard", {"period": "today"}), "usage dashboard")
        if body.get("totalActions") == wanted or time.monotonic() >= deadline:
            break
        await anyio.sleep(0.25)
    expect_eq(body.get("totalActions"), wanted, f"totalActions within {within}s (successful sends)")
    return body


async def usage_and_billing(w: World) -> None:
    agent = w.second
    provider_cost = SMS_COST * agent.sms_sent + EMAIL_COST * agent.emails_sent
    async with cg.connect(w.t, agent.token) as s:
        dash = await dashboard_when_settled(s, agent)
        expect_eq(dash.get("agentId"), agent.id, "dashboard agentId")
        expect_eq(dash.get("period"), "today", "dashboard period")
        actions = dash.get("actions") or {}
        expect_eq(actions.get("sms"), agent.sms_sent, "actions.sms (failed and refused sends not counted)")
        expect_eq(actions.get("email"), agent.emails_sent, "actions.email")
        expect_eq((actions.get("voice_call"), actions.get("voice_message")), (0, 0), "actions.voice_*")
        costs = dash.get("costsByChannel") or {}
        expect_money(costs.get("sms"), SMS_COST * agent.sms_sent, "costsByChannel.sms")
        expect_money(costs.get("email"), EMAIL_COST * agent.emails_sent, "costsByChannel.email")
        expect_money(dash.get("totalCost"), provider_cost, "totalCost")
        usage = dash.get("currentUsage") or {}
        expect_eq(usage.get("actionsToday"), agent.sms_sent + agent.emails_sent, "currentUsage.actionsToday")
        expect_eq(usage.get("actionsLimit"), PER_DAY, "currentUsage.actionsLimit")
        expect_money(usage.get("spendToday"), provider_cost, "currentUsage.spendToday")
        expect_eq((dash.get("limits") or {}).get("maxActionsPerMinute"), PER_MINUTE, "dashboard limits.maxActionsPerMinute")

    async with cg.connect(w.t, w.burst.token) as s:  # the burst's 150 refusals consumed nothing
        dash = await dashboard_when_settled(s, w.burst)
        expect_eq((dash.get("actions") or {}).get("sms"), PER_MINUTE, "burst agent: actions.sms")
        expect_money((dash.get("costsByChannel") or {}).get("sms"), SMS_COST * PER_MINUTE, "burst agent: costsByChannel.sms")

    async with cg.connect(w.t, w.master) as m:
        config = expect_ok(await cg.call(m, "comms_set_billing_config", {"agentId": agent.id, "markupPercent": 10}),
                           "master sets markupPercent 10")
        expect_eq(config.get("agentId"), agent.id, "billing config agentId")
        expect_eq((config.get("billingConfig") or {}).get("markupPercent"), 10, "billingConfig.markupPercent")
        expect_eq((config.get("billingConfig") or {}).get("tier"), "starter", "billingConfig.tier")
        expect_eq(config.get("availableTiers"), ["free", "starter", "pro", "enterprise"], "availableTiers")
        expect_eq((config.get("effectiveLimits") or {}).get("maxActionsPerMinute"), PER_MINUTE,
                  "effectiveLimits.maxActionsPerMinute")

    async with cg.connect(w.t, agent.token) as s:
        summary = expect_ok(await cg.call(s, "comms_get_billing_summary", {"period": "month"}), "billing summary")
        expect_eq(summary.get("agentId"), agent.id, "billing summary agentId")
        expect_eq(summary.get("period"), "month", "billing summary period")
        expect_eq(summary.get("markupPercent"), 10, "billing summary markupPercent")
        expect_money(summary.get("providerCost"), provider_cost, "providerCost")
        expect_money(summary.get("billingCost"), billed(money(summary["providerCost"]), 10),
                     "billingCost = providerCost × 1.1, half away from zero to 4 decimals")
        expect_money((summary.get("byChannel") or {}).get("sms"), SMS_COST * agent.sms_sent, "byChannel.sms")
        if (agent.sms_sent, agent.emails_sent) == (5, 2):  # 0.0415 × 1.1 = 0.04565: a tie, away from zero
            expect_money(summary.get("billingCost"), Decimal("0.0457"), "billingCost of a half-way value")
        print(f"  providerCost {summary['providerCost']} → billingCost {summary['billingCost']} at 10 %")


# ---------------------------------------------------------------- main

async def main(transport: str) -> None:
    w = World(t=transport, master=cg.master_token(), run=os.urandom(3).hex())
    print(f"mcp_outbound over {transport} against {cg.base_url()} (run {w.run})")
    steps = [
        ("1 org with A2P, two phone+email agents", set_up),
        (f"2 {BURST} concurrent sends over {SESSIONS} sessions: exactly {PER_MINUTE} pass", concurrent_burst),
        ("3 provider failure consumes nothing; per-agent override", provider_failure_and_override),
        ("4 email, CAN-SPAM warning, whatsapp, admin-only limits", email_and_roles),
        ("5 usage dashboard and billing markup", usage_and_billing),
    ]
    for name, fn in steps:
        with step(f"[{transport}] {name}"):
            await fn(w)
    print(f"mcp_outbound over {transport}: all {len(steps)} steps passed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=cg.TRANSPORTS, required=True)
    transport = parser.parse_args().transport
    cg.run(lambda: main(transport))
