DROP TABLE group_slots;
