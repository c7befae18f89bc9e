//! Concurrency groups: named limits shared by jobs of any kind. On one node a group is a
//! counter; on a PostgreSQL queue shared by several nodes its slots are rows in
//! `group_slots`, and an item starts here only on a slot this node holds. This part owns
//! the slots' bookkeeping and decides which slots to take or give back with the next write.

use std::collections::HashMap;

/// A named concurrency group: its limit and the items of it running now.
pub(super) struct GroupSlot {
    pub(super) limit: u32,
    pub(super) active: u32,
    /// Shared by the nodes of a PostgreSQL queue: items start only on slots this node
    /// holds in `group_slots`.
    pub(super) shared: bool,
    /// Slots held (shared groups).
    pub(super) held: Vec<i32>,
    /// Slots to give back with the next write.
    pub(super) releasing: Vec<i32>,
    /// An acquisition is in the write in flight.
    pub(super) acquiring: bool,
    /// The last acquisition got fewer slots than asked: wait for a slot to be freed
    /// (a `groups` notification) or the next pump before asking again.
    pub(super) starved: bool,
    /// This node was declared dead and its slots freed while items of the group still
    /// ran here: no slot is taken until those are done.
    pub(super) lost: bool,
}

impl GroupSlot {
    /// Whether another item of the group may start here now.
    pub(super) fn open(&self) -> bool {
        let cap = if self.shared {
            self.held.len() as u32
        } else {
            self.limit
        };
        self.active < cap
    }
}

/// Slots of shared groups to take with the next write: (group, limit, how many).
pub(super) type SlotAsk = (String, u32, u32);

/// Every configured group, and the slot changes waiting for the next write.
pub(super) struct Groups {
    pub(super) slots: HashMap<String, GroupSlot>,
    /// Other nodes share the queue, so the groups' slots are shared rows.
    shared: bool,
    /// Slots of shared groups to take with the next write.
    pub(super) acquire: Vec<SlotAsk>,
    /// The next write reads which group slots this node holds and takes that as the
    /// truth (after this node was declared dead).
    pub(super) reconcile: bool,
}

impl Groups {
    /// The configured groups and their limits; `shared` when other nodes share the queue.
    pub(super) fn new(limits: HashMap<String, u32>, shared: bool) -> Self {
        Groups {
            slots: limits
                .into_iter()
                .map(|(name, limit)| {
                    (
                        name,
                        GroupSlot {
                            limit,
                            active: 0,
                            shared,
                            held: Vec::new(),
                            releasing: Vec::new(),
                            acquiring: false,
                            starved: false,
                            lost: false,
                        },
                    )
                })
                .collect(),
            shared,
            acquire: Vec::new(),
            reconcile: false,
        }
    }

    /// Whether a group of this name is configured.
    pub(super) fn contains(&self, name: &str) -> bool {
        self.slots.contains_key(name)
    }

    /// Whether slot planning applies: shared groups exist.
    pub(super) fn plans_slots(&self) -> bool {
        self.shared && !self.slots.is_empty()
    }

    /// Decides which slots to take or give back with the next write, from what could
    /// start now per group (`demand`). A node wants as many slots as it has items of the
    /// group running or ready to start (up to the limit); slots beyond that go back, and a
    /// node keeps a slot while it has items of the group to run. Returns whether there is
    /// anything to write.
    pub(super) fn plan(&mut self, demand: &HashMap<&str, u32>) -> bool {
        let mut due = false;
        for (name, g) in self.slots.iter_mut() {
            let wanted = (g.active + demand.get(name.as_str()).copied().unwrap_or(0)).min(g.limit);
            let held = g.held.len() as u32;
            if held > wanted.max(g.active) && !g.acquiring {
                let surplus = (held - wanted.max(g.active)) as usize;
                let keep = g.held.len() - surplus;
                let freed: Vec<i32> = g.held.drain(keep..).collect();
                g.releasing.extend(freed);
            } else if held < wanted && !g.acquiring && !g.starved && (!g.lost || g.active == 0) {
                g.acquiring = true;
                self.acquire.push((name.clone(), g.limit, wanted - held));
            }
            if g.lost && g.active == 0 {
                g.lost = false;
            }
            due |= !g.releasing.is_empty();
        }
        due || !self.acquire.is_empty()
    }

    /// Takes the slots to give back with the write being built.
    pub(super) fn take_releases(&mut self) -> Vec<(String, Vec<i32>)> {
        self.slots
            .iter_mut()
            .filter(|(_, g)| !g.releasing.is_empty())
            .map(|(name, g)| (name.clone(), std::mem::take(&mut g.releasing)))
            .collect()
    }

    /// Applies a committed write: the slots it took, and (when asked) every slot this
    /// node holds as the store says.
    pub(super) fn committed(
        &mut self,
        taken: &[(String, u32, Vec<i32>)],
        owned: Option<&Vec<(String, i32)>>,
    ) {
        for (group, asked, got) in taken {
            if let Some(g) = self.slots.get_mut(group) {
                g.acquiring = false;
                g.starved = (got.len() as u32) < *asked;
                g.held.extend(got);
            }
        }
        if let Some(owned) = owned {
            for (name, g) in self.slots.iter_mut() {
                g.held = owned
                    .iter()
                    .filter(|(group, _)| group == name)
                    .map(|(_, slot)| *slot)
                    .collect();
            }
        }
    }

    /// Undoes a failed write's slot changes, so the next write asks and gives back again.
    pub(super) fn failed(&mut self, acquire: &[SlotAsk], releases: Vec<(String, Vec<i32>)>) {
        for (group, _, _) in acquire {
            if let Some(g) = self.slots.get_mut(group) {
                g.acquiring = false;
            }
        }
        for (group, slots) in releases {
            if let Some(g) = self.slots.get_mut(&group) {
                g.releasing.extend(slots);
            }
        }
    }

    /// A slot may have been freed somewhere: groups that found none ask again.
    pub(super) fn unstarve(&mut self) {
        for g in self.slots.values_mut() {
            g.starved = false;
        }
    }

    /// This node was declared dead: its slots were freed, so groups with items still
    /// running here take none until those are done, and the next write reads the truth.
    pub(super) fn lost(&mut self) {
        self.reconcile = true;
        for g in self.slots.values_mut() {
            g.lost = g.active > 0;
        }
    }

    /// The configured names, sorted, for error messages.
    pub(super) fn names(&self) -> Vec<&String> {
        let mut names: Vec<&String> = self.slots.keys().collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(shared: bool) -> Groups {
        Groups::new(HashMap::from([("gpu".to_string(), 2)]), shared)
    }

    #[test]
    fn a_local_group_is_open_below_its_limit() {
        let mut g = groups(false);
        let slot = g.slots.get_mut("gpu").unwrap();
        assert!(slot.open());
        slot.active = 2;
        assert!(!slot.open());
        // Nothing to plan without other nodes.
        assert!(!g.plans_slots());
    }

    #[test]
    fn a_shared_group_is_open_only_on_slots_held() {
        let mut g = groups(true);
        let slot = g.slots.get_mut("gpu").unwrap();
        assert!(!slot.open());
        slot.held = vec![0];
        assert!(slot.open());
        slot.active = 1;
        assert!(!slot.open());
    }

    #[test]
    fn slots_are_asked_for_up_to_the_limit_and_surplus_ones_given_back() {
        let mut g = groups(true);
        assert!(g.plans_slots());
        assert!(g.plan(&HashMap::from([("gpu", 5)])));
        assert_eq!(g.acquire, vec![("gpu".to_string(), 2, 2)]);
        // Asked once per write: no second ask while the first is in flight.
        g.acquire.clear();
        assert!(!g.plan(&HashMap::from([("gpu", 5)])));
        // One slot got: starved, it waits for a freed slot before asking again.
        g.committed(&[("gpu".to_string(), 2, vec![7])], None);
        assert!(g.slots["gpu"].starved);
        assert!(!g.plan(&HashMap::from([("gpu", 5)])));
        g.unstarve();
        assert!(g.plan(&HashMap::from([("gpu", 5)])));
        let asks = std::mem::take(&mut g.acquire);
        g.failed(&asks, Vec::new());
        assert!(!g.slots["gpu"].acquiring);
        // Nothing to run: the held slot goes back with the next write.
        assert!(g.plan(&HashMap::new()));
        assert_eq!(g.take_releases(), vec![("gpu".to_string(), vec![7])]);
        assert!(g.slots["gpu"].held.is_empty());
    }

    #[test]
    fn a_lost_node_takes_no_slot_while_items_still_run_here() {
        let mut g = groups(true);
        g.slots.get_mut("gpu").unwrap().active = 1;
        g.lost();
        assert!(g.reconcile);
        assert!(!g.plan(&HashMap::from([("gpu", 1)])));
        g.slots.get_mut("gpu").unwrap().active = 0;
        g.plan(&HashMap::from([("gpu", 1)]));
        assert_eq!(g.acquire, vec![("gpu".to_string(), 2, 1)]);
        // The store's word replaces what was held.
        g.committed(
            &[],
            Some(&vec![("gpu".to_string(), 3), ("other".to_string(), 4)]),
        );
        assert_eq!(g.slots["gpu"].held, vec![3]);
    }
}
