-- How far each node has handled what each peer forwarded to it (decision 0016): written in
-- the same transaction as the queue entries those messages made, so that the nodes adopting a
-- dead node's sessions send again only what it had not committed. One row per pair of nodes,
-- the newest; epochs are the nodes' boot epochs, stored bit for bit as bigint.
CREATE TABLE forward_marks (
    receiver        text   NOT NULL,
    sender          text   NOT NULL,
    receiver_epoch  bigint NOT NULL,
    sender_epoch    bigint NOT NULL,
    upto            bigint NOT NULL,
    PRIMARY KEY (receiver, sender)
);
