-- An endpoint that let a delivery attempt time out is paused until this
-- time: none of its deliveries is due before it (the dispatcher's due
-- condition joins on it), so a backlog of several rounds' worth does not
-- fill the next rounds while the endpoint is down. Cleared by an update of
-- the endpoint, a redelivery and a test event.
ALTER TABLE webhook_endpoints ADD COLUMN paused_until TEXT;
