-- 0011: the agents projection keeps each agent's provider references (Twilio's number sid), so
-- deprovisioning can release the number it bought. Replay fills it from AgentProvisioned.
ALTER TABLE agents ADD COLUMN provider_refs jsonb NOT NULL DEFAULT '{}';
