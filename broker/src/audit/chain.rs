//! The chain's state: the decisions of the writer, without I/O or a clock.
//!
//! [`Chain`] gives each entry its `seq` and `prev`, and says when a checkpoint is due: after
//! `checkpoint_entries` entries, or `checkpoint_seconds` after the last checkpoint even if nothing was
//! written since (a heartbeat: the time of the last checkpoint bounds when the writer was last known
//! alive). Time comes in as an argument, so every decision is tested without a clock or a sleep.

use super::checkpoint::Checkpoint;
use super::digest::Digest;
use super::entry::{Entry, Record};
use super::key::AuditKey;

/// Where a log left off: the last entry and the last checkpoint, if any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// `seq` and `hash` of the last intact entry.
    pub last_entry: Option<(u64, Digest)>,
    /// Number and hash of the last checkpoint.
    pub last_checkpoint: Option<(u64, Digest)>,
}

/// When checkpoints are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// A checkpoint after this many entries (at least 1).
    pub every_entries: u64,
    /// A checkpoint this many milliseconds after the last one, entries or not.
    pub every_millis: u64,
}

/// The chain's state.
#[derive(Debug)]
pub struct Chain {
    policy: CheckpointPolicy,
    last_seq: u64,
    last_hash: Digest,
    checkpoint_number: u64,
    checkpoint_hash: Digest,
    since_checkpoint: u64,
    last_checkpoint_at: u64,
}

impl Chain {
    /// A chain that continues `resume` (a new log with [`Resume::default`]), its heartbeat counted from
    /// `now`.
    pub fn new(policy: CheckpointPolicy, resume: Resume, now: u64) -> Chain {
        let (last_seq, last_hash) = resume.last_entry.unwrap_or((0, Digest::ZERO));
        let (checkpoint_number, checkpoint_hash) = resume.last_checkpoint.unwrap_or((0, Digest::ZERO));
        Chain {
            policy,
            last_seq,
            last_hash,
            checkpoint_number,
            checkpoint_hash,
            since_checkpoint: 0,
            last_checkpoint_at: now,
        }
    }

    /// Places `entry` after the last one.
    pub fn seal(&mut self, entry: Entry, now: u64) -> Record {
        let record = Record::seal(entry, self.last_seq + 1, now, self.last_hash);
        self.last_seq = record.seq;
        self.last_hash = record.hash;
        self.since_checkpoint += 1;
        record
    }

    /// Whether a checkpoint is due at `now`.
    pub fn checkpoint_due(&self, now: u64) -> bool {
        self.since_checkpoint >= self.policy.every_entries.max(1) || now >= self.heartbeat_at()
    }

    /// When the next heartbeat checkpoint is due.
    pub fn heartbeat_at(&self) -> u64 {
        self.last_checkpoint_at.saturating_add(self.policy.every_millis)
    }

    /// Signs a checkpoint of everything so far (`last`: the final one of a clean close).
    pub fn checkpoint(&mut self, key: &AuditKey, now: u64, last: bool) -> Checkpoint {
        let c = Checkpoint::sign(
            key,
            self.checkpoint_number + 1,
            now,
            (self.last_seq, self.last_hash),
            self.checkpoint_hash,
            last,
        );
        self.checkpoint_number = c.number;
        self.checkpoint_hash = c.hash;
        self.since_checkpoint = 0;
        self.last_checkpoint_at = now;
        c
    }

    /// `seq` and `hash` of the last entry (0 and [`Digest::ZERO`] before the first).
    pub fn last_entry(&self) -> (u64, Digest) {
        (self.last_seq, self.last_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::entry::Action;

    const POLICY: CheckpointPolicy = CheckpointPolicy { every_entries: 3, every_millis: 10_000 };

    #[test]
    fn entries_chain_and_checkpoints_cover_the_last_one() {
        let key = AuditKey::from_seed(&[1; 32]);
        let mut chain = Chain::new(POLICY, Resume::default(), 0);
        let a = chain.seal(Entry::new(Action::Start), 1);
        let b = chain.seal(Entry::new(Action::Connect).at(5), 2);
        assert_eq!((a.seq, a.prev, b.seq, b.prev, b.time), (1, Digest::ZERO, 2, a.hash, 5));
        let c1 = chain.checkpoint(&key, 3, false);
        assert_eq!((c1.number, c1.seq, c1.entry_hash, c1.prev), (1, 2, b.hash, Digest::ZERO));
        let c2 = chain.checkpoint(&key, 4, true);
        assert_eq!((c2.number, c2.seq, c2.prev, c2.last), (2, 2, c1.hash, true));
    }

    #[test]
    fn checkpoint_due_after_n_entries_or_t_idle() {
        let key = AuditKey::from_seed(&[1; 32]);
        let mut chain = Chain::new(POLICY, Resume::default(), 1_000);
        for t in [1_000, 5_000, 10_999] {
            assert!(!chain.checkpoint_due(t), "{t}");
        }
        assert!(chain.checkpoint_due(11_000), "heartbeat with no entries at all");
        chain.checkpoint(&key, 11_000, false);
        chain.seal(Entry::new(Action::Connect), 11_001);
        chain.seal(Entry::new(Action::Connect), 11_002);
        assert!(!chain.checkpoint_due(11_002));
        chain.seal(Entry::new(Action::Connect), 11_003);
        assert!(chain.checkpoint_due(11_003), "after every_entries");
        chain.checkpoint(&key, 11_003, false);
        assert_eq!(chain.heartbeat_at(), 21_003);
    }

    #[test]
    fn a_resumed_chain_continues_seq_and_both_hashes() {
        let key = AuditKey::from_seed(&[1; 32]);
        let resume =
            Resume { last_entry: Some((41, Digest([4; 32]))), last_checkpoint: Some((6, Digest([6; 32]))) };
        let mut chain = Chain::new(POLICY, resume, 0);
        let r = chain.seal(Entry::new(Action::Restart), 0);
        assert_eq!((r.seq, r.prev), (42, Digest([4; 32])));
        let c = chain.checkpoint(&key, 0, false);
        assert_eq!((c.number, c.prev, c.seq), (7, Digest([6; 32]), 42));
    }
}
