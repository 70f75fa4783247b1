-- 0035: a call that Twilio has not priced by its terminal callback is priced later.
--
-- A call's cost is |price| from Twilio's Calls API, read when its first terminal status arrives;
-- Twilio often has no price yet at that moment, and the call's cost was then never counted (its
-- one-time cost mark was spent, and later callbacks are refused or skip the cost), so spend caps
-- undercounted real calls. Such a call now waits here; a task on every instance asks Twilio
-- again with a growing pause, adds the price to the spend of the day and month the call was
-- placed, and records it as the call's status again with its cost (`CallStatusChanged`). Rows are
-- claimed with `next_try` moved ahead, so instances never price one call twice.
CREATE TABLE unpriced_calls
(
    call_id   uuid PRIMARY KEY,
    agent_id  text        NOT NULL,
    org_id    text        NOT NULL,
    sid       text        NOT NULL,
    placed_at timestamptz NOT NULL,
    status    text        NOT NULL,
    attempts  integer     NOT NULL DEFAULT 0,
    next_try  timestamptz NOT NULL
);
CREATE INDEX unpriced_calls_next_try ON unpriced_calls (next_try);
