"""Provider webhooks signed by the providers' own libraries (docs/webhooks.md).

Usage: COMMGUARD_URL=... COMMGUARD_MASTER_TOKEN=... WEBHOOK_BASE_URL=... TWILIO_ACCOUNT_SID=...
       TWILIO_AUTH_TOKEN=... RESEND_WEBHOOK_SECRET=... webhooks.py --part twilio|svix --transport sse|streamable

Twilio requests are signed with `twilio.request_validator.RequestValidator` (HMAC-SHA1 over the
public URL WEBHOOK_BASE_URL + path [+ ? + raw query] and the sorted form parameters) and Resend
requests with `svix.webhooks.Webhook.sign` (HMAC-SHA256 over `id.timestamp.raw body`): if the
server's verification drifted from the providers', these requests would be refused.

The server must run with the same WEBHOOK_BASE_URL, TWILIO_AUTH_TOKEN and RESEND_WEBHOOK_SECRET,
COMMGUARD_TEST_CLOCK=true, MASTER_SECURITY_TOKEN = COMMGUARD_MASTER_TOKEN and the default
WEBHOOK_REPLAY_WINDOW_SECONDS (300). The MCP tools run over --transport. Every org, agent and
contact is new to this run, but the clock is set, so one server should run one part at a time.
Exit 0 = every step passed; otherwise a traceback and `FAIL <step>`.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

import httpx2
from svix.webhooks import Webhook
from twilio.request_validator import RequestValidator

import cg
from cg import expect, expect_eq, expect_ok, expect_refusal, step

CALL_HOURS_CLOCK = "2026-12-01T16:00:00Z"  # 11:00 in Washington DC: calls to +1202 are in hours (docs/compliance.md)
TWIML = "text/xml; charset=utf-8"
EMPTY = "<Response/>"
STOP_REPLY = ("<Response><Message>You have been unsubscribed and will not receive further messages."
              " Reply START to resubscribe.</Message></Response>")
START_REPLY = "<Response><Message>You have been resubscribed. Reply STOP to unsubscribe.</Message></Response>"
HELP_REPLY = "<Response><Message>Reply STOP to unsubscribe. Msg&amp;data rates may apply.</Message></Response>"
OTHER_SECRET = "whsec_" + "QW5vdGhlciBzdml4IHNlY3JldCwgbm90IHRoZSBzZXJ2ZXIncw=="  # valid base64, wrong key


def hex_id(prefix: str) -> str:
    return prefix + os.urandom(16).hex()


def dc_number() -> str:
    """A fresh Washington DC number (America/New_York, so quiet hours follow the set clock)."""
    return f"+1202555{int.from_bytes(os.urandom(2), 'big') % 10000:04d}"


@dataclass
class Agent:
    id: str
    token: str
    phone: str
    email: str


@dataclass
class Org:
    id: str
    admin: str
    agents: list[Agent] = field(default_factory=list)


@dataclass
class World:
    t: str  # MCP transport
    master: str
    run: str
    public: str  # WEBHOOK_BASE_URL without a trailing /
    account_sid: str
    auth_token: str
    svix_secret: str
    orgs: list[Org] = field(default_factory=list)


# ---------------------------------------------------------------- set-up

async def set_clock(w: World, body: dict) -> datetime:
    """POST /admin/api/test/clock; returns the service clock it reports."""
    reply = cg.expect_http(await cg.request("POST", "/admin/api/test/clock", token=w.master, json_body=body),
                           200, f"test clock {body}")
    return datetime.fromisoformat(reply.body["now"].replace("Z", "+00:00"))


async def service_now(w: World) -> datetime:
    """The service clock now (advancing it by 0 s reports it)."""
    return await set_clock(w, {"advanceSeconds": 0})


async def new_org(w: World, name: str, agents: int) -> Org:
    slug = cg.unique(f"e2e-hooks-{name}")
    async with cg.connect(w.t, w.master) as m:
        created = expect_ok(await cg.call(m, "comms_create_organization",
                                          {"name": f"E2E webhooks {name}", "slug": slug, "a2pRegistered": True}),
                            f"master creates org {name}")
    org = Org(created.get("orgId") or created.get("id") or slug, created["adminToken"])
    async with cg.connect(w.t, org.admin) as a:
        for n in range(agents):
            body = expect_ok(await cg.call(a, "comms_provision_channels",
                                           {"displayName": f"E2E {name} agent {n}",
                                            "capabilities": {"phone": True, "email": True}}),
                             f"org {name} provisions agent {n}")
            channels = body.get("channels") or {}
            expect(isinstance(channels.get("phone"), str) and channels["phone"].startswith("+1555"),
                   f"org {name} agent {n}: mock phone number: {channels}")
            expect(isinstance(channels.get("email"), str) and "@" in channels["email"],
                   f"org {name} agent {n}: email address: {channels}")
            org.agents.append(Agent(body["agentId"], body["securityToken"], channels["phone"], channels["email"]))
    w.orgs.append(org)
    return org


# ---------------------------------------------------------------- HTTP

async def raw_post(path: str, content: bytes, headers: dict[str, str]) -> cg.Reply:
    """POST exactly these bytes to `path` (which may carry a query string) on the server."""
    async with httpx2.AsyncClient(base_url=cg.base_url(), timeout=cg.TIMEOUT) as client:
        r = await client.post(path, content=content, headers=headers)
    try:
        body = json.loads(r.text) if r.text else None
    except json.JSONDecodeError:
        body = None
    return cg.Reply(r.status_code, r.headers, r.text, body)


def twilio_signature(w: World, path: str, params: dict[str, str], auth_token: str | None = None) -> str:
    """What Twilio sends as X-Twilio-Signature for `params` posted to the public URL of `path`."""
    return RequestValidator(auth_token or w.auth_token).compute_signature(w.public + path, params)


async def twilio_post(path: str, params: dict[str, str], signature: str | None) -> cg.Reply:
    """A form POST as Twilio sends it; `signature` None sends no X-Twilio-Signature at all."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    return await raw_post(path, urlencode(params).encode(), headers)


async def signed(w: World, path: str, params: dict[str, str]) -> cg.Reply:
    return await twilio_post(path, params, twilio_signature(w, path, params))


def expect_twiml(reply: cg.Reply, status: int, body: str, what: str) -> None:
    expect_eq(reply.status, status, f"{what}: HTTP status (body {reply.text[:300]!r})")
    expect_eq(reply.headers.get("content-type"), TWIML, f"{what}: Content-Type")
    expect_eq(reply.text, body, f"{what}: TwiML body")


def svix_headers(w: World, msg_id: str, when: datetime, payload: str, secret: str | None = None) -> dict[str, str]:
    """The svix-* headers Resend sends: the signature from the svix library's Webhook.sign."""
    return {"svix-id": msg_id, "svix-timestamp": str(int(when.timestamp())),
            "svix-signature": Webhook(secret or w.svix_secret).sign(msg_id, when, payload)}


async def email_post(agent: Agent, body: bytes, headers: dict[str, str]) -> cg.Reply:
    return await raw_post(f"/webhooks/{agent.id}/email", body, {"Content-Type": "application/json", **headers})


def expect_email_refused(reply: cg.Reply, error: str, what: str) -> None:
    cg.expect_http(reply, 403, what, error=error)


def expect_email_ok(reply: cg.Reply, what: str) -> None:
    cg.expect_http(reply, 200, what)
    expect_eq(reply.body, {"ok": True}, f"{what}: body")


# ---------------------------------------------------------------- MCP checks

async def consent(w: World, agent: Agent, address: str, channel: str) -> dict:
    async with cg.connect(w.t, agent.token) as s:
        return expect_ok(await cg.call(s, "comms_check_consent", {"contactAddress": address, "channel": channel}),
                         f"check {channel} consent of {address} for {agent.id}")


async def expect_consent(w: World, agent: Agent, address: str, channel: str, *, has: bool,
                         status: str | None = None, on_dnc: bool | None = None, what: str) -> None:
    body = await consent(w, agent, address, channel)
    expect_eq(body.get("hasConsent"), has, f"{what}: hasConsent ({body})")
    if status is not None:
        expect_eq(body.get("status"), status, f"{what}: status ({body})")
    if on_dnc is not None:
        expect_eq(body.get("onDnc"), on_dnc, f"{what}: onDnc ({body})")


async def record_consent(w: World, agent: Agent, address: str, *channels: str) -> None:
    async with cg.connect(w.t, agent.token) as s:
        for channel in channels:
            expect_ok(await cg.call(s, "comms_record_consent", {"contactAddress": address, "channel": channel}),
                      f"{agent.id} records {channel} consent of {address}")


async def dnc_entries(w: World, org: Org, address: str) -> list[dict]:
    """The org's DNC entries for `address`."""
    async with cg.connect(w.t, org.admin) as a:
        body = expect_ok(await cg.call(a, "comms_dnc_list", {}), "comms_dnc_list")
    entries = body.get("entries")
    expect(isinstance(entries, list), f"comms_dnc_list: entries is not a list: {body}")
    return [e for e in entries if str(e.get("address", "")).lower() == address.lower()]


async def send(w: World, agent: Agent, args: dict) -> tuple[bool, object]:
    async with cg.connect(w.t, agent.token) as s:
        return await cg.call(s, "comms_send_message", args)


# ---------------------------------------------------------------- Twilio

@dataclass
class Sms:
    """One inbound SMS conversation: a sender writing to agent A1."""
    sender: str
    path: str


def sms_params(w: World, agent: Agent, sid: str, sender: str, body: str) -> dict[str, str]:
    """The form Twilio posts for an inbound SMS (empty fields included, as Twilio sends them)."""
    return {
        "ToCountry": "US", "ToState": "", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "",
        "FromZip": "20001", "SmsSid": sid, "FromState": "DC", "SmsStatus": "received", "FromCity": "WASHINGTON",
        "Body": body, "FromCountry": "US", "To": agent.phone, "MessagingServiceSid": "", "ToZip": "",
        "NumSegments": "1", "MessageSid": sid, "AccountSid": w.account_sid, "From": sender, "ApiVersion": "2010-04-01",
    }


async def twilio_set_up(w: World, c: dict) -> None:
    now = await set_clock(w, {"now": CALL_HOURS_CLOCK})
    expect(abs((now - datetime.fromisoformat(CALL_HOURS_CLOCK.replace("Z", "+00:00"))).total_seconds()) < 5,
           f"service clock after setting {CALL_HOURS_CLOCK}: {now}")
    a = await new_org(w, "a", 2)
    b = await new_org(w, "b", 1)
    sender = dc_number()
    await record_consent(w, a.agents[0], sender, "sms", "voice")
    await record_consent(w, a.agents[1], sender, "sms")
    await record_consent(w, b.agents[0], sender, "sms")
    c["sms"] = Sms(sender, f"/webhooks/{a.agents[0].id}/sms")
    c["stop_sid"] = hex_id("SM")


async def twilio_refusals(w: World, c: dict) -> None:
    a1, b1 = w.orgs[0].agents[0], w.orgs[1].agents[0]
    sms: Sms = c["sms"]
    stop = sms_params(w, a1, c["stop_sid"], sms.sender, "STOP")

    expect_twiml(await twilio_post(sms.path, stop, None), 403, EMPTY, "STOP without X-Twilio-Signature")
    expect_twiml(await twilio_post(sms.path, stop, twilio_signature(w, sms.path, stop, "not-the-auth-token")),
                 403, EMPTY, "STOP signed with the wrong auth token")
    other_path = f"/webhooks/{b1.id}/sms"
    expect_twiml(await twilio_post(sms.path, stop, twilio_signature(w, other_path, stop)),
                 403, EMPTY, "STOP signed for another agent's URL")
    expect_twiml(await twilio_post(sms.path, stop, twilio_signature(w, sms.path, {**stop, "Body": "HELP"})),
                 403, EMPTY, "STOP carrying the signature of a HELP")
    # None of them changed anything (the same MessageSid is used for the real STOP below).
    await expect_consent(w, a1, sms.sender, "sms", has=True, on_dnc=False, what="A1 sms consent after refused STOPs")

    unknown = "/webhooks/no-such-agent/sms"
    expect_twiml(await signed(w, unknown, sms_params(w, a1, hex_id("SM"), sms.sender, "STOP")),
                 404, EMPTY, "signed STOP to an unknown agent")
    missing = {k: v for k, v in sms_params(w, a1, hex_id("SM"), sms.sender, "hi").items() if k != "To"}
    expect_eq((await signed(w, sms.path, missing)).status, 400, "signed SMS without To")
    missing = {k: v for k, v in sms_params(w, a1, hex_id("SM"), sms.sender, "hi").items()
               if k not in ("MessageSid", "SmsSid", "SmsMessageSid")}
    expect_eq((await signed(w, sms.path, missing)).status, 400, "signed SMS without MessageSid")
    expect_eq((await signed(w, sms.path, sms_params(w, b1, hex_id("SM"), sms.sender, "STOP"))).status, 404,
              "signed STOP to A1's URL addressed to B1's number")
    await expect_consent(w, a1, sms.sender, "sms", has=True, on_dnc=False, what="A1 sms consent after refusals")


async def twilio_stop(w: World, c: dict) -> None:
    a, b = w.orgs
    a1, a2, b1 = a.agents[0], a.agents[1], b.agents[0]
    sms: Sms = c["sms"]
    stop = sms_params(w, a1, c["stop_sid"], sms.sender, "  Stop ")
    signature = twilio_signature(w, sms.path, stop)
    expect_twiml(await twilio_post(sms.path, stop, signature), 200, STOP_REPLY, "signed STOP")
    expect_twiml(await twilio_post(sms.path, stop, signature), 403, EMPTY, "the same signed STOP replayed")

    for agent, channel in ((a1, "sms"), (a1, "voice"), (a2, "sms")):
        await expect_consent(w, agent, sms.sender, channel, has=False, status="revoked", on_dnc=True,
                             what=f"org A agent {agent.id} {channel} consent after STOP")
    listed = await dnc_entries(w, a, sms.sender)
    expect_eq(len(listed), 1, f"org A DNC entries for {sms.sender}: {listed}")
    expect_eq(listed[0].get("source"), "stop_keyword", "org A DNC entry source")
    refused = await send(w, a1, {"to": sms.sender, "body": "Are you still there?"})
    body = expect_refusal(refused, "compliance_blocked", None, "A1 sends SMS after STOP")
    expect_eq(body.get("rule"), "dnc", f"A1 send after STOP: rule ({body})")

    # Org B: same sender, its own consent, untouched.
    await expect_consent(w, b1, sms.sender, "sms", has=True, status="granted", on_dnc=False,
                         what="org B sms consent after org A's STOP")
    expect_eq(await dnc_entries(w, b, sms.sender), [], "org B DNC entries for the sender")
    sent = expect_ok(await send(w, b1, {"to": sms.sender, "body": "Org B says hi"}), "B1 sends SMS after A's STOP")
    expect_eq(sent.get("status"), "sent", "B1 send status")


async def twilio_help_start(w: World, c: dict) -> None:
    a = w.orgs[0]
    a1, a2 = a.agents
    sms: Sms = c["sms"]
    expect_twiml(await signed(w, sms.path, sms_params(w, a1, hex_id("SM"), sms.sender, "help")),
                 200, HELP_REPLY, "signed HELP")
    expect_twiml(await signed(w, sms.path, sms_params(w, a1, hex_id("SM"), sms.sender, "INFO")),
                 200, HELP_REPLY, "signed INFO")
    await expect_consent(w, a1, sms.sender, "sms", has=False, on_dnc=True, what="A1 sms consent after HELP")

    expect_twiml(await signed(w, sms.path, sms_params(w, a1, hex_id("SM"), sms.sender, "START")),
                 200, START_REPLY, "signed START")
    await expect_consent(w, a1, sms.sender, "sms", has=True, on_dnc=False, what="A1 sms consent after START")
    await expect_consent(w, a1, sms.sender, "voice", has=False, what="A1 voice consent after START (sms only)")
    await expect_consent(w, a2, sms.sender, "sms", has=False, what="A2 sms consent after START to A1 (A1 only)")
    expect_eq(await dnc_entries(w, a, sms.sender), [], "org A DNC entries after START")
    sent = expect_ok(await send(w, a1, {"to": sms.sender, "body": "Welcome back"}), "A1 sends SMS after START")
    expect_eq(sent.get("status"), "sent", "A1 send after START: status")


async def twilio_query_string(w: World, c: dict) -> None:
    a1 = w.orgs[0].agents[0]
    sms: Sms = c["sms"]
    path = f"{sms.path}?foo=1&bar=2"
    params = sms_params(w, a1, hex_id("SM"), sms.sender, "Café & crème: 5% off + free delivery? ünïcødé")
    expect_twiml(await twilio_post(path, params, twilio_signature(w, sms.path, params)),
                 403, EMPTY, "query-string request signed without its query")
    expect_twiml(await twilio_post(path, params, twilio_signature(w, f"{sms.path}?bar=2&foo=1", params)),
                 403, EMPTY, "query-string request signed with its query reordered")
    expect_twiml(await twilio_post(path, params, twilio_signature(w, path, params)),
                 200, EMPTY, "query-string request signed over the raw query")
    await expect_consent(w, a1, sms.sender, "sms", has=True, on_dnc=False, what="A1 sms consent after a plain message")


def status_params(w: World, agent: Agent, sid: str, to: str, status: str, sequence: int) -> dict[str, str]:
    """The form Twilio posts as a call's status callback."""
    params = {
        "AccountSid": w.account_sid, "ApiVersion": "2010-04-01", "CallSid": sid, "CallStatus": status,
        "Called": to, "Caller": agent.phone, "Direction": "outbound-api", "From": agent.phone, "To": to,
        "CallbackSource": "call-progress-events", "SequenceNumber": str(sequence),
        "Timestamp": "Tue, 01 Dec 2026 16:00:0%d +0000" % sequence,
    }
    if status == "completed":
        params |= {"CallDuration": "42", "Duration": "1"}
    return params


async def make_call(w: World, agent: Agent, to: str) -> str:
    async with cg.connect(w.t, agent.token) as s:
        call = expect_ok(await cg.call(s, "comms_make_call", {"to": to}), f"{agent.id} calls {to}")
    sid = call.get("callSid")
    expect(isinstance(sid, str) and sid, f"comms_make_call: no callSid in {call}")
    return sid


async def twilio_call_status(w: World, c: dict) -> None:
    a1 = w.orgs[0].agents[0]
    callee = dc_number()
    await record_consent(w, a1, callee, "voice")
    sid = await make_call(w, a1, callee)
    path = f"/webhooks/{a1.id}/call-status"
    alias = f"/webhooks/{a1.id}/voice/status"

    expect_twiml(await twilio_post(path, status_params(w, a1, sid, callee, "ringing", 0), None),
                 403, EMPTY, "unsigned call status")
    ringing = status_params(w, a1, sid, callee, "ringing", 0)
    expect_twiml(await twilio_post(path, ringing, twilio_signature(w, path, ringing, "not-the-auth-token")),
                 403, EMPTY, "call status signed with the wrong auth token")
    for n, status in enumerate(("ringing", "in-progress", "completed")):
        expect_twiml(await signed(w, path, status_params(w, a1, sid, callee, status, n)), 200, EMPTY,
                     f"signed call status {status}")
    expect_twiml(await signed(w, path, status_params(w, a1, sid, callee, "completed", 3)), 403, EMPTY,
                 "call status completed a second time")
    expect_twiml(await signed(w, alias, status_params(w, a1, sid, callee, "ringing", 4)), 403, EMPTY,
                 "call status ringing again through /voice/status")
    expect_eq((await signed(w, path, status_params(w, a1, sid, callee, "exploded", 5))).status, 400,
              "call status outside the list")
    expect_eq((await signed(w, path, {k: v for k, v in status_params(w, a1, sid, callee, "busy", 5).items()
                                      if k != "CallStatus"})).status, 400, "call status without CallStatus")
    expect_eq((await signed(w, path, status_params(w, a1, hex_id("CA"), callee, "ringing", 0))).status, 404,
              "call status of an unknown CallSid")

    # The alias is the same route: a second call's statuses, split over both paths.
    second = await make_call(w, a1, callee)
    expect_twiml(await signed(w, alias, status_params(w, a1, second, callee, "ringing", 0)), 200, EMPTY,
                 "second call ringing through /voice/status")
    expect_twiml(await signed(w, path, status_params(w, a1, second, callee, "no-answer", 1)), 200, EMPTY,
                 "second call no-answer through /call-status")
    expect_twiml(await signed(w, alias, status_params(w, a1, second, callee, "no-answer", 2)), 403, EMPTY,
                 "second call no-answer again through /voice/status")


# ---------------------------------------------------------------- Svix (Resend)

def received_payload(w: World, agent: Agent, to, subject: str) -> str:
    """An `email.received` event as Resend posts it, serialised once: these exact bytes are signed."""
    return json.dumps({
        "type": "email.received",
        "created_at": "2026-12-01T16:00:00.000Z",
        "data": {"email_id": hex_id("em_"), "from": f"Lee Example <LEE.{w.run}@Example.com>", "to": to,
                 "subject": subject, "text": "Bonjour — ça va? 👋", "created_at": "2026-12-01T16:00:00.000Z"},
    }, ensure_ascii=False, separators=(",", ":"))


async def svix_set_up(w: World, c: dict) -> None:
    # A service clock three days behind the real one: only a timestamp of the SERVICE clock verifies.
    real = datetime.now(timezone.utc).replace(microsecond=0)
    target = real - timedelta(days=3)
    now = await set_clock(w, {"now": target.isoformat().replace("+00:00", "Z")})
    expect(abs((now - target).total_seconds()) < 5, f"service clock after setting {target}: {now}")
    await new_org(w, "mail", 1)


async def svix_received(w: World, c: dict) -> None:
    agent = w.orgs[0].agents[0]
    now = await service_now(w)
    payload = received_payload(w, agent, [agent.email], "Hello")
    msg_id = hex_id("msg_")
    headers = svix_headers(w, msg_id, now, payload)
    body = payload.encode()
    expect_email_ok(await email_post(agent, body, headers), "email.received signed by svix")
    expect_email_refused(await email_post(agent, body, headers), "Webhook replayed", "the same email.received replayed")

    # `to` as a plain string, and a `Name <addr>` recipient in an array.
    payload = received_payload(w, agent, agent.email, "To as a string")
    expect_email_ok(await email_post(agent, payload.encode(), svix_headers(w, hex_id("msg_"), now, payload)),
                    "email.received with to as a string")
    payload = received_payload(w, agent, ["someone.else@example.com", f"The Agent <{agent.email}>"], "Named")
    expect_email_ok(await email_post(agent, payload.encode(), svix_headers(w, hex_id("msg_"), now, payload)),
                    "email.received with a named recipient among others")


async def svix_refusals(w: World, c: dict) -> None:
    agent = w.orgs[0].agents[0]
    now = await service_now(w)
    payload = received_payload(w, agent, [agent.email], "Original subject")
    msg_id = hex_id("msg_")
    headers = svix_headers(w, msg_id, now, payload)

    tampered = payload.replace("Original subject", "Tampered subject").encode()
    expect_email_refused(await email_post(agent, tampered, headers), "Invalid webhook signature",
                         "tampered body with the original's valid signature")
    reserialised = json.dumps(json.loads(payload)).encode()  # same JSON value, other bytes
    expect(reserialised != payload.encode(), "re-serialised payload differs in bytes")
    expect_email_refused(await email_post(agent, reserialised, headers), "Invalid webhook signature",
                         "re-serialised body with the original's signature")
    expect_email_refused(await email_post(agent, payload.encode(), svix_headers(w, msg_id, now, payload, OTHER_SECRET)),
                         "Invalid webhook signature", "signed with another secret")
    expect_email_refused(await email_post(agent, payload.encode(), {**headers, "svix-id": hex_id("msg_")}),
                         "Invalid webhook signature", "signature of another svix-id")

    for offset, what in ((-400, "an expired timestamp (400 s old)"), (400, "a timestamp 400 s in the future")):
        when = now + timedelta(seconds=offset)
        expect_email_refused(await email_post(agent, payload.encode(), svix_headers(w, hex_id("msg_"), when, payload)),
                             "Webhook timestamp expired", f"validly signed with {what}")
    real = datetime.now(timezone.utc)
    expect_email_refused(await email_post(agent, payload.encode(), svix_headers(w, hex_id("msg_"), real, payload)),
                         "Webhook timestamp expired", "signed with the real time, three days off the service clock")

    for missing in ("svix-id", "svix-timestamp", "svix-signature"):
        partial = {k: v for k, v in headers.items() if k != missing}
        expect_email_refused(await email_post(agent, payload.encode(), partial), "Missing Svix signature headers",
                             f"without {missing}")
    expect_email_refused(await email_post(agent, payload.encode(), {**headers, "svix-timestamp": "soon"}),
                         "Invalid webhook timestamp", "non-integer svix-timestamp")

    # Refused deliveries burned nothing: the genuine one with the same svix-id still goes through.
    expect_email_ok(await email_post(agent, payload.encode(), headers), "the genuine delivery after the refusals")


async def svix_complaint(w: World, c: dict) -> None:
    org = w.orgs[0]
    agent = org.agents[0]
    complainer = f"pat.{w.run}@example.com"
    await record_consent(w, agent, complainer, "email")
    await expect_consent(w, agent, complainer, "email", has=True, on_dnc=False, what="email consent before complaint")

    now = await service_now(w)
    payload = json.dumps({"type": "email.complained", "created_at": "2026-12-01T16:00:00.000Z",
                          "data": {"email_id": hex_id("em_"), "from": agent.email,
                                   "to": [f"Pat <{complainer}>"], "subject": "Our newsletter"}})
    expect_email_ok(await email_post(agent, payload.encode(), svix_headers(w, hex_id("msg_"), now, payload)),
                    "email.complained signed by svix")

    await expect_consent(w, agent, complainer, "email", has=False, status="revoked", on_dnc=True,
                         what="email consent after complaint")
    listed = await dnc_entries(w, org, complainer)
    expect_eq(len(listed), 1, f"DNC entries for {complainer}: {listed}")
    expect_eq(listed[0].get("source"), "complaint", "DNC entry source")
    refused = await send(w, agent, {"to": complainer, "channel": "email", "subject": "Again", "body": "Hello again"})
    body = expect_refusal(refused, "compliance_blocked", None, "email to the complainer")
    expect_eq(body.get("rule"), "dnc", f"email to the complainer: rule ({body})")


# ---------------------------------------------------------------- main

PARTS = {
    "twilio": [
        ("1 two orgs share a sender; clock at 11:00 in Washington", twilio_set_up),
        ("2 unsigned, wrong-token and mis-addressed Twilio requests are refused", twilio_refusals),
        ("3 STOP signed by RequestValidator: org A revokes and lists, replay 403, org B untouched", twilio_stop),
        ("4 HELP and START replies", twilio_help_start),
        ("5 the raw query string is part of the signed URL", twilio_query_string),
        ("6 call status ringing/in-progress/completed; repeats are replays", twilio_call_status),
    ],
    "svix": [
        ("1 an org with an email agent; service clock three days back", svix_set_up),
        ("2 email.received signed by svix: 200, replay 403", svix_received),
        ("3 tampered, mis-signed, expired and header-less deliveries are refused", svix_refusals),
        ("4 email.complained signed by svix lists the address (complaint)", svix_complaint),
    ],
}


async def main(part: str, transport: str) -> None:
    w = World(t=transport, master=cg.master_token(), run=os.urandom(3).hex(),
              public=cg.env("WEBHOOK_BASE_URL").rstrip("/"), account_sid=cg.env("TWILIO_ACCOUNT_SID"),
              auth_token=cg.env("TWILIO_AUTH_TOKEN"), svix_secret=cg.env("RESEND_WEBHOOK_SECRET"))
    print(f"webhooks {part} over {transport} against {cg.base_url()} (public {w.public}, run {w.run})")
    context: dict = {}
    steps = PARTS[part]
    for name, fn in steps:
        with step(f"[{part}/{transport}] {name}"):
            await fn(w, context)
    print(f"webhooks {part}: all {len(steps)} steps passed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=sorted(PARTS), required=True)
    parser.add_argument("--transport", choices=cg.TRANSPORTS, required=True)
    args = parser.parse_args()
    cg.run(lambda: main(args.part, args.transport))
