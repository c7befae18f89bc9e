-- Concurrency groups shared by every node: a group of limit N has slot rows 0..N-1; a node
-- holds a slot (node_id set) while it runs, or is about to run, an item of the group. A
-- dead node's slots are freed by the rescue.
CREATE TABLE group_slots (
    group_name TEXT NOT NULL,
    slot INTEGER NOT NULL,
    node_id TEXT,
    PRIMARY KEY (group_name, slot)
);
CREATE INDEX group_slots_by_node ON group_slots (node_id) WHERE node_id IS NOT NULL;
