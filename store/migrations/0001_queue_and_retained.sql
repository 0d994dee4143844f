-- Rookery's PostgreSQL store: QoS 1/2 queues of persistent sessions, received QoS 2 packet
-- ids, and retained messages. Applied by PostgresStore::connect (sqlx migrator, under an
-- advisory lock). Times are timestamptz; the store converts to and from milliseconds since the
-- Unix epoch.

-- Message bodies, stored once however many queue entries refer to them. No foreign key from
-- queue: a batch stores bodies before the entries that refer to them, the store deletes a body
-- when its last entry goes, and load() joins (an entry without a body is skipped).
CREATE TABLE messages (
    id          bigint      PRIMARY KEY,
    topic       text        NOT NULL,
    payload     bytea       NOT NULL,
    qos         smallint    NOT NULL,
    retain      boolean     NOT NULL,
    properties  bytea       NOT NULL,
    expires_at  timestamptz NULL
);

CREATE INDEX messages_expires_at ON messages (expires_at) WHERE expires_at IS NOT NULL;

-- One delivery queued or in flight to a session, in ascending id order.
CREATE TABLE queue (
    client_id        text      NOT NULL,
    id               bigint    NOT NULL,
    message_id       bigint    NOT NULL,
    qos              smallint  NOT NULL,
    retain           boolean   NOT NULL,
    subscription_ids integer[] NOT NULL DEFAULT '{}',
    packet_id        integer   NULL,
    released         boolean   NOT NULL DEFAULT false,
    PRIMARY KEY (client_id, id)
);

CREATE INDEX queue_message_id ON queue (message_id);

-- QoS 2 packet ids a session received and has not released.
CREATE TABLE incoming (
    client_id text    NOT NULL,
    packet_id integer NOT NULL,
    PRIMARY KEY (client_id, packet_id)
);

-- Retained messages by topic.
CREATE TABLE retained (
    topic       text        PRIMARY KEY,
    payload     bytea       NOT NULL,
    qos         smallint    NOT NULL,
    retain      boolean     NOT NULL DEFAULT true,
    properties  bytea       NOT NULL,
    expires_at  timestamptz NULL
);

CREATE INDEX retained_expires_at ON retained (expires_at) WHERE expires_at IS NOT NULL;
