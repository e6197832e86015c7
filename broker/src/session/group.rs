//! Shared durable subscriptions: the members of a group share a topic's messages, each batch to one of
//! them, and a member's unacknowledged batches go to the others when it leaves.
//!
//! # Chains, not batches, are shared out
//!
//! A subscriber verifies each publisher chain (publisher key, chain id) batch after batch: a batch missing
//! from the middle is a gap, one served twice a replay. So the unit a group shares out is the **chain**, as
//! Kafka shares out partitions: every batch of a chain goes to the chain's owner, in order, and the owner
//! verifies that chain end to end as any subscriber does. A chain is given an owner when a member's cursor
//! first meets it, to the member owning fewest chains among those whose cursor has not passed it (so the
//! owner reads it in its turn); a member that joins takes chains from the busiest members until the
//! shares are even; a member that leaves gives its chains to the least busy of the others.
//!
//! # Where members read
//!
//! Every member reads the topic's log from the group's **floor** on, and is given the batches of the chains
//! it owns ([`Group::next`]). The floor is the offset below which every batch was acknowledged by the
//! member it went to: the least, over members, of the first batch a member was given and has not
//! acknowledged, or of where its cursor stands. It is what the group commits through the writer, where a
//! durable subscription commits its acked offset; a group that forms again (after a restart, or after its
//! last member left) starts there.
//!
//! A member that is given chains whose unacknowledged batches lie behind its cursor (another member left)
//! must read back: its stream gets a `Rewind` to the offset it reads from again, and from then on skips
//! what it was given before. The client starts its verification over at a `Rewind` (the chains it is given
//! start at their first batch seen), which is what makes a chain that comes back to a member that had it
//! before, after others read on, no false gap: **a rebalance is where a subscriber cannot check that
//! nothing was withheld** (the broker may claim a member left); between rebalances, each member checks its
//! chains as a plain subscription does.
//!
//! # Acks
//!
//! A member's acks are cumulative in the order it was given batches: `Ack { next_offset }` acknowledges
//! every batch it was given before its last `Rewind` that it read, plus the batches after it that end at or
//! before `next_offset` ([`Group::ack`]). An ack read before the client answered the `Rewind` (`Rewound`,
//! [`Group::rewound`]) counts in the stream as it was before. An acknowledged batch is never given to any
//! member again while the group is in memory; batches a member was given and had not acknowledged when it
//! left go to the chains' new owners: delivery is at least once. Each member holds at most
//! [`MAX_UNACKED`] unacknowledged batches: a member that stops acknowledging stops being given batches,
//! and its chains wait for it (they are ordered), until it acknowledges or leaves.
//!
//! Synchronous and without I/O: the subscription streams' tasks call it under its lock, and wait on
//! [`Group::changed`] for a rewind or for room in their window.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use sealpost_protocol::{ChainId, Offset, PublicKey};
use tokio::sync::watch;

use super::durable::{DurableKey, DurableLease, DurableLeases};

/// A publisher chain: the unit a group shares out.
pub type ChainKey = (PublicKey, ChainId);

/// A member of a group, unique in it.
pub type MemberId = u64;

/// Most batches a member may hold unacknowledged before it is given more (JetStream's
/// `max_ack_pending`, counted in batches).
pub const MAX_UNACKED: usize = 1024;

/// Most chains a group keeps track of. Past it, chains with nothing unacknowledged are forgotten and every
/// member rewinds to where it stands (so that none of them misses a chain it is given again).
pub const MAX_CHAINS: usize = 100_000;

/// The groups served now, broker-wide.
#[derive(Debug, Default)]
pub struct Groups {
    groups: Mutex<HashMap<DurableKey, Arc<Group>>>,
}

impl Groups {
    /// The group named `key`, made if none is held now. A group is forgotten once it has no member and
    /// no one holds it (a subscriber about to join does), so that two subscribers joining at once join
    /// one group.
    pub fn group(&self, key: &DurableKey) -> Arc<Group> {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        groups.retain(|_, group| Arc::strong_count(group) > 1 || !group.is_empty());
        groups.entry(key.clone()).or_insert_with(|| Arc::new(Group::new(key.clone()))).clone()
    }

    /// How many groups have members now.
    pub fn len(&self) -> usize {
        let groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        groups.values().filter(|group| !group.is_empty()).count()
    }

    /// Whether no group has a member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One shared durable subscription.
#[derive(Debug)]
pub struct Group {
    key: DurableKey,
    state: Mutex<State>,
    /// Bumped when a member may have a rewind waiting or room in its window again.
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// The lease of the durable subscription's name, held while the group has members (shared with
    /// them, so that it is given back after the last one's last commit).
    lease: Option<Arc<DurableLease>>,
    /// Everything below it was acknowledged; `None` until the first member joins.
    floor: Option<Offset>,
    /// The floor last handed to the writer, and whether a commit is with it.
    committed: Offset,
    committing: bool,
    members: BTreeMap<MemberId, Member>,
    chains: HashMap<ChainKey, Chain>,
    next_id: MemberId,
}

#[derive(Debug)]
struct Member {
    /// The next offset its cursor reads.
    cursor: Offset,
    /// Batches given and not acknowledged, in the order given: (generation, first offset, end, chain).
    pending: VecDeque<Given>,
    /// How many chains it owns.
    owned: usize,
    /// Its stream's generation: bumped by each `Rewind`.
    generation: u64,
    /// The generation its acks count in: bumped by each `Rewound`.
    acks_in: u64,
    /// A `Rewind` to send before anything else.
    rewind: Option<Offset>,
}

#[derive(Debug, Clone, Copy)]
struct Given {
    /// When it was given.
    at: Instant,
    generation: u64,
    offset: Offset,
    end: Offset,
    chain: ChainKey,
}

#[derive(Debug)]
struct Chain {
    /// Who is given its batches now; `None` while the group has no member.
    owner: Option<MemberId>,
    /// Its owner is given its batches from this offset on (before it: acknowledged, or given already).
    from: Offset,
    /// Every batch of it below this offset was acknowledged.
    acked: Offset,
}

/// What a member's cursor does with the item it read.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Deliver it.
    Deliver,
    /// Not this member's: go on to the next item.
    Skip,
    /// Deliver nothing more of this read: the member must rewind, its window is full, or it left.
    Stop,
}

impl Group {
    fn new(key: DurableKey) -> Group {
        Group { key, state: Mutex::default(), changed: watch::Sender::new(0) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The durable subscription's name.
    pub fn key(&self) -> &DurableKey {
        &self.key
    }

    /// Whether it has no member.
    pub fn is_empty(&self) -> bool {
        self.state().members.is_empty()
    }

    /// How many members it has.
    pub fn members(&self) -> usize {
        self.state().members.len()
    }

    /// Changes when a member may have a rewind to send or room in its window: wait on it while idle.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Adds a member. The group's first member takes the durable name's lease from `leases` (none: an
    /// exclusive subscriber of the name is reading it; stand by and try again when a lease is released)
    /// and sets the floor to `start()` (the committed offset, else where `from` points). The member's
    /// cursor starts at the floor; it takes chains from the busiest members until the shares are even.
    pub fn join(
        &self,
        leases: &Arc<DurableLeases>,
        start: impl FnOnce() -> Offset,
    ) -> Option<(MemberId, Arc<DurableLease>, Offset)> {
        let mut state = self.state();
        if state.lease.is_none() {
            state.lease = Some(Arc::new(leases.try_take(self.key.clone())?));
        }
        let lease = state.lease.clone()?;
        let floor = *state.floor.get_or_insert_with(start);
        let id = state.next_id;
        state.next_id += 1;
        state.members.insert(
            id,
            Member {
                cursor: floor,
                pending: VecDeque::new(),
                owned: 0,
                generation: 0,
                acks_in: 0,
                rewind: None,
            },
        );
        state.rebalance_to(id, floor);
        if state.members.len() == 1 {
            state.committed = floor;
        }
        Some((id, lease, floor))
    }

    /// What `member`'s cursor does with the item it read at `offset..end`, of `chain` (`None`: a lost range,
    /// which every member is told of, or a batch whose header cannot be read, which every member judges),
    /// at `now`.
    pub fn next(
        &self,
        member: MemberId,
        (offset, end): (Offset, Offset),
        chain: Option<ChainKey>,
        now: Instant,
    ) -> Step {
        let mut state = self.state();
        let floor = state.floor.unwrap_or(Offset::ZERO);
        let state = &mut *state;
        let Some(me) = state.members.get(&member) else { return Step::Stop };
        if me.rewind.is_some() {
            return Step::Stop;
        }
        let Some(chain) = chain else {
            if let Some(me) = state.members.get_mut(&member) {
                me.cursor = end;
            }
            return Step::Deliver;
        };
        if !state.chains.contains_key(&chain) {
            // First met: to the least busy member that will read it (whose cursor has not passed it).
            let owner = state
                .members
                .iter()
                .filter(|(_, m)| m.cursor <= offset && m.rewind.is_none())
                .min_by_key(|(&id, m)| (m.owned, id != member, id))
                .map_or(member, |(&id, _)| id);
            state.chains.insert(chain, Chain { owner: Some(owner), from: offset, acked: offset });
            if let Some(m) = state.members.get_mut(&owner) {
                m.owned += 1;
            }
            if state.chains.len() > MAX_CHAINS {
                state.forget_idle_chains(floor);
                self.bump();
                if !state.chains.contains_key(&chain) {
                    return Step::Stop;
                }
            }
        }
        let (Some(me), Some(c)) = (state.members.get_mut(&member), state.chains.get_mut(&chain)) else {
            return Step::Stop;
        };
        if c.owner != Some(member) || offset < c.from {
            me.cursor = end;
            return Step::Skip;
        }
        if me.pending.len() >= MAX_UNACKED {
            return Step::Stop;
        }
        c.from = end;
        me.pending.push_back(Given { at: now, generation: me.generation, offset, end, chain });
        me.cursor = end;
        Step::Deliver
    }

    /// When `member` was given the oldest batch it has not acknowledged, if it holds one.
    pub fn oldest_unacknowledged(&self, member: MemberId) -> Option<Instant> {
        self.state().members.get(&member)?.pending.front().map(|given| given.at)
    }

    /// The offset `member` must rewind to, if it must: send `Rewind` with it before anything else. Its
    /// cursor is there already.
    pub fn take_rewind(&self, member: MemberId) -> Option<Offset> {
        let mut state = self.state();
        let me = state.members.get_mut(&member)?;
        let to = me.rewind.take()?;
        me.generation += 1;
        Some(to)
    }

    /// `member` acknowledged up to `next_offset` (see the module documentation).
    pub fn ack(&self, member: MemberId, next_offset: Offset) {
        let mut state = self.state();
        let state = &mut *state;
        let Some(me) = state.members.get_mut(&member) else { return };
        let was_full = me.pending.len() >= MAX_UNACKED;
        let acks_in = me.acks_in;
        while let Some(given) = me.pending.front().copied() {
            if given.generation > acks_in || (given.generation == acks_in && given.end > next_offset) {
                break;
            }
            me.pending.pop_front();
            if let Some(chain) = state.chains.get_mut(&given.chain) {
                chain.acked = chain.acked.max(given.end);
            }
        }
        let opened = was_full && me.pending.len() < MAX_UNACKED;
        state.raise_floor();
        if opened {
            self.bump();
        }
    }

    /// `member`'s client read a `Rewind`: its acks count in the stream after it from now on. `false` if it
    /// answered more rewinds than it was sent (a protocol violation).
    pub fn rewound(&self, member: MemberId) -> bool {
        let mut state = self.state();
        let Some(me) = state.members.get_mut(&member) else { return true };
        if me.acks_in >= me.generation {
            return false;
        }
        me.acks_in += 1;
        true
    }

    /// The floor to commit through the writer, if it moved since the last commit and none is with the
    /// writer. Tell [`commit_done`](Self::commit_done) the answer.
    pub fn next_commit(&self) -> Option<Offset> {
        let mut state = self.state();
        state.raise_floor();
        let floor = state.floor?;
        if state.committing || floor <= state.committed {
            return None;
        }
        state.committing = true;
        Some(floor)
    }

    /// The writer answered the commit of `floor` that [`next_commit`](Self::next_commit) gave.
    pub fn commit_done(&self, floor: Offset, stored: bool) {
        let mut state = self.state();
        state.committing = false;
        if stored {
            state.committed = state.committed.max(floor);
        }
    }

    /// Removes `member`: its chains go to the least busy of the others, which rewind to read their
    /// unacknowledged batches. The last member's leaving keeps the floor where it stood.
    pub fn leave(&self, member: MemberId) {
        let mut guard = self.state();
        guard.raise_floor();
        if guard.members.remove(&member).is_none() {
            return;
        }
        let floor = guard.floor.unwrap_or(Offset::ZERO);
        let state = &mut *guard;
        let orphans: Vec<ChainKey> =
            state.chains.iter().filter(|(_, c)| c.owner == Some(member)).map(|(k, _)| *k).collect();
        for key in orphans {
            let heir = state.members.iter().min_by_key(|(&id, m)| (m.owned, id)).map(|(&id, _)| id);
            let Some(chain) = state.chains.get_mut(&key) else { continue };
            chain.owner = heir;
            chain.from = chain.acked.max(floor);
            let Some(heir) = heir.and_then(|id| state.members.get_mut(&id)) else { continue };
            heir.owned += 1;
            // Always a rewind, even when the heir has not read that far: its client starts verifying over,
            // so a chain it had before and comes back to it after others read on is no false gap.
            let to = heir.rewind.unwrap_or(heir.cursor).min(chain.from);
            heir.rewind = Some(to);
            heir.cursor = to;
        }
        if state.members.is_empty() {
            state.lease = None;
        }
        drop(guard);
        self.bump();
    }
}

impl State {
    /// Raises the floor to the least, over members, of the first unacknowledged batch given or the
    /// cursor. It never falls: members start at it, rewind to it or above, and are given batches above it.
    fn raise_floor(&mut self) {
        let least = self
            .members
            .values()
            .map(|m| m.pending.front().map_or(m.cursor, |given| given.offset.min(m.cursor)))
            .min();
        if let (Some(least), Some(floor)) = (least, self.floor.as_mut()) {
            *floor = (*floor).max(least);
        }
    }

    /// Moves chains to the new member `joiner` from members owning more than an even share. The joiner's
    /// cursor is at the floor, behind every chain's first unacknowledged batch, so it needs no rewind; what
    /// the busy member was given of a moved chain and not acknowledged is given to the joiner again.
    fn rebalance_to(&mut self, joiner: MemberId, floor: Offset) {
        let share = self.chains.len().div_ceil(self.members.len().max(1));
        let mut moved = 0;
        for chain in self.chains.values_mut() {
            if moved >= share {
                break;
            }
            let Some(owner) = chain.owner else {
                // A chain of a group whose members all left: the first to join takes it.
                chain.owner = Some(joiner);
                chain.from = chain.acked.max(floor);
                moved += 1;
                continue;
            };
            let Some(busy) = self.members.get_mut(&owner).filter(|m| m.owned > share) else { continue };
            busy.owned -= 1;
            chain.owner = Some(joiner);
            chain.from = chain.acked.max(floor);
            moved += 1;
        }
        if let Some(joined) = self.members.get_mut(&joiner) {
            joined.owned += moved;
        }
    }

    /// Forgets the chains with nothing unacknowledged and below the floor (they are given an owner again
    /// when next met), and rewinds every member to its cursor so that its client starts verifying over.
    fn forget_idle_chains(&mut self, floor: Offset) {
        let members = &mut self.members;
        self.chains.retain(|_, chain| {
            let idle = chain.acked >= chain.from && chain.from <= floor;
            if idle {
                if let Some(owner) = chain.owner.and_then(|id| members.get_mut(&id)) {
                    owner.owned -= 1;
                }
            }
            !idle
        });
        for member in members.values_mut() {
            member.rewind = Some(member.rewind.unwrap_or(member.cursor));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DurableKey {
        ("demo.chat".parse().unwrap(), "bob".parse().unwrap(), "workers".to_owned())
    }

    fn chain(n: u8) -> ChainKey {
        (sealpost_protocol::SigningKey::from_bytes(&[n; 32]).public_key(), ChainId([n; 16]))
    }

    /// A group of `n` members starting at offset 0, and its leases.
    fn group(n: usize) -> (Arc<Group>, Arc<DurableLeases>, Vec<MemberId>, Vec<Arc<DurableLease>>) {
        let leases = Arc::new(DurableLeases::default());
        let group = Groups::default().group(&key());
        let mut ids = Vec::new();
        let mut held = Vec::new();
        for _ in 0..n {
            let (id, lease, floor) = group.join(&leases, || Offset(0)).expect("joins");
            assert_eq!(floor, Offset(0));
            ids.push(id);
            held.push(lease);
        }
        (group, leases, ids, held)
    }

    /// A log of batches of one message each, at offsets 0.., whose chains are `chains[i]`.
    fn log(chains: &[u8]) -> Vec<(Offset, Offset, ChainKey)> {
        chains.iter().enumerate().map(|(i, &c)| (Offset(i as u64), Offset(i as u64 + 1), chain(c))).collect()
    }

    /// What `member` is given reading `log` from its cursor `from`, until a stop.
    fn read(group: &Group, member: MemberId, log: &[(Offset, Offset, ChainKey)], from: u64) -> Vec<u64> {
        let mut given = Vec::new();
        for &(offset, end, chain) in log.iter().skip(from as usize) {
            match group.next(member, (offset, end), Some(chain), Instant::now()) {
                Step::Deliver => given.push(offset.0),
                Step::Skip => {}
                Step::Stop => break,
            }
        }
        given
    }

    #[test]
    fn each_batch_goes_to_one_member_and_each_chain_to_the_same_member() {
        let (group, _, ids, _) = group(3);
        let log = log(&[1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6]);
        let given: Vec<_> = ids.iter().map(|&id| read(&group, id, &log, 0)).collect();
        let mut all: Vec<u64> = given.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..12).collect::<Vec<_>>(), "every batch once: {given:?}");
        for member in &given {
            assert_eq!(member.len(), 4, "two chains each: {given:?}");
            let chains: std::collections::HashSet<_> = member.iter().map(|&o| log[o as usize].2).collect();
            assert_eq!(chains.len(), 2, "whole chains: {given:?}");
        }
    }

    #[test]
    fn the_floor_is_the_first_batch_given_and_not_acknowledged() {
        let (group, _, ids, _) = group(2);
        let log = log(&[1, 2, 1, 2, 1, 2]);
        let a = read(&group, ids[0], &log, 0);
        let b = read(&group, ids[1], &log, 0);
        assert_eq!((a.clone(), b.clone()), (vec![0, 2, 4], vec![1, 3, 5]));
        assert_eq!(group.next_commit(), None, "nothing acknowledged");
        group.ack(ids[0], Offset(5));
        assert_eq!(group.next_commit(), Some(Offset(1)), "b's offset 1 is the first not acknowledged");
    }

    #[test]
    fn the_floor_moves_when_the_oldest_batch_is_acknowledged_and_commits_go_one_at_a_time() {
        let (group, _, ids, _) = group(2);
        let log = log(&[1, 2, 1, 2, 1, 2]);
        read(&group, ids[0], &log, 0);
        read(&group, ids[1], &log, 0);
        group.ack(ids[1], Offset(4)); // b's 1 and 3
        assert_eq!(group.next_commit(), None, "a's 0 is not acknowledged");
        group.ack(ids[0], Offset(3)); // a's 0 and 2
        assert_eq!(group.next_commit(), Some(Offset(4)), "a's 4 is next");
        group.ack(ids[0], Offset(6));
        assert_eq!(group.next_commit(), None, "one commit at a time");
        group.commit_done(Offset(4), true);
        assert_eq!(group.next_commit(), Some(Offset(5)), "b's 5");
        group.commit_done(Offset(5), true);
        group.ack(ids[1], Offset(6));
        assert_eq!(group.next_commit(), Some(Offset(6)));
    }

    #[test]
    fn a_member_that_leaves_hands_its_unacknowledged_batches_to_another_which_rewinds() {
        let (group, _, ids, _) = group(2);
        let log = log(&[1, 2, 1, 2, 1, 2]);
        assert_eq!(read(&group, ids[0], &log, 0), vec![0, 2, 4]);
        assert_eq!(read(&group, ids[1], &log, 0), vec![1, 3, 5]);
        group.ack(ids[0], Offset(1)); // a acknowledged offset 0 only
        let mut changed = group.changed();
        changed.mark_unchanged();
        group.leave(ids[0]);
        assert!(changed.has_changed().unwrap(), "the heir is woken");
        assert_eq!(group.take_rewind(ids[1]), Some(Offset(1)), "back to chain 1's first unacknowledged");
        assert_eq!(group.take_rewind(ids[1]), None, "once");
        // b reads again from 1: chain 1 from 2 on, nothing of its own chain 2 twice.
        assert_eq!(read(&group, ids[1], &log, 1), vec![2, 4]);
        // b's acks before it answered the rewind count in the stream before it.
        group.ack(ids[1], Offset(6));
        assert_eq!(group.next_commit(), Some(Offset(2)), "offsets 0, 1, 3, 5 acknowledged: 2 holds it");
        group.commit_done(Offset(2), true);
        assert!(group.rewound(ids[1]));
        assert!(!group.rewound(ids[1]), "one Rewound per Rewind");
        group.ack(ids[1], Offset(5));
        assert_eq!(group.next_commit(), Some(Offset(6)), "everything acknowledged");
    }

    #[test]
    fn a_member_that_joins_takes_an_even_share_and_the_last_to_leave_gives_the_lease_back() {
        let (group, leases, ids, held) = group(1);
        let log = log(&[1, 2, 3, 4]);
        assert_eq!(read(&group, ids[0], &log, 0), vec![0, 1, 2, 3]);
        group.ack(ids[0], Offset(4));
        let (joiner, lease, floor) = group.join(&leases, || unreachable!("the group has a floor")).unwrap();
        assert_eq!(floor, Offset(4));
        let more = log_from(4, &[1, 2, 3, 4]);
        let a = read(&group, ids[0], &more, 4);
        let b = read(&group, joiner, &more, 4);
        assert_eq!((a.len(), b.len()), (2, 2), "{a:?} {b:?}");
        assert!(leases.try_take(key()).is_none(), "the group holds the name");
        group.leave(ids[0]);
        group.leave(joiner);
        assert!(group.is_empty());
        assert!(leases.try_take(key()).is_none(), "held until the members' last commits are done");
        drop((held, lease));
        assert!(leases.try_take(key()).is_some());
    }

    fn log_from(first: u64, chains: &[u8]) -> Vec<(Offset, Offset, ChainKey)> {
        let mut log = log(&vec![0; first as usize]);
        log.extend(
            chains
                .iter()
                .enumerate()
                .map(|(i, &c)| (Offset(first + i as u64), Offset(first + i as u64 + 1), chain(c))),
        );
        log
    }

    #[test]
    fn subscribers_joining_at_once_join_one_group_and_an_unheld_empty_group_is_forgotten() {
        let groups = Groups::default();
        let leases = Arc::new(DurableLeases::default());
        let first = groups.group(&key());
        let second = groups.group(&key());
        assert!(Arc::ptr_eq(&first, &second), "the first has not joined yet: still one group");
        let (a, _lease_a, _) = first.join(&leases, || Offset(0)).unwrap();
        let (b, _lease_b, _) = second.join(&leases, || Offset(0)).unwrap();
        assert_eq!(first.members(), 2);
        first.leave(a);
        second.leave(b);
        drop((first, second));
        assert!(groups.is_empty());
        let again = groups.group(&key());
        assert_eq!(again.members(), 0, "a new group");
    }

    #[test]
    fn an_exclusive_subscriber_and_a_group_of_one_name_exclude_each_other() {
        let leases = Arc::new(DurableLeases::default());
        let exclusive = leases.try_take(key()).unwrap();
        let group = Groups::default().group(&key());
        assert!(group.join(&leases, || Offset(0)).is_none(), "stands by");
        drop(exclusive);
        let (_, lease, _) = group.join(&leases, || Offset(0)).expect("joins");
        drop(lease);
        assert!(leases.try_take(key()).is_none(), "the group holds it");
    }

    #[test]
    fn a_member_that_does_not_acknowledge_is_given_at_most_its_window() {
        let (group, _, ids, _) = group(1);
        let chains = vec![1; MAX_UNACKED + 5];
        let log = log(&chains);
        assert_eq!(read(&group, ids[0], &log, 0).len(), MAX_UNACKED);
        let mut changed = group.changed();
        changed.mark_unchanged();
        group.ack(ids[0], Offset(3));
        assert!(changed.has_changed().unwrap(), "woken: room again");
        assert_eq!(read(&group, ids[0], &log, MAX_UNACKED as u64).len(), 3);
    }

    #[test]
    fn the_oldest_unacknowledged_batch_is_dated() {
        let (group, _, ids, _) = group(1);
        let t0 = Instant::now();
        assert_eq!(group.oldest_unacknowledged(ids[0]), None);
        assert_eq!(group.next(ids[0], (Offset(0), Offset(1)), Some(chain(1)), t0), Step::Deliver);
        let t1 = t0 + std::time::Duration::from_secs(1);
        assert_eq!(group.next(ids[0], (Offset(1), Offset(2)), Some(chain(1)), t1), Step::Deliver);
        assert_eq!(group.oldest_unacknowledged(ids[0]), Some(t0));
        group.ack(ids[0], Offset(1));
        assert_eq!(group.oldest_unacknowledged(ids[0]), Some(t1));
        group.ack(ids[0], Offset(2));
        assert_eq!(group.oldest_unacknowledged(ids[0]), None);
    }

    #[test]
    fn lost_ranges_and_unreadable_batches_go_to_every_member() {
        let (group, _, ids, _) = group(2);
        for &id in &ids {
            assert_eq!(group.next(id, (Offset(0), Offset(10)), None, Instant::now()), Step::Deliver);
        }
        assert_eq!(group.next_commit(), Some(Offset(10)));
    }
}
