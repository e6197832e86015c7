//! Publisher chains in a topic's log: each chain (publisher key, chain id) has a subject of its own, so
//! its last batch is one last-by-subject request, and the batch of a given first sequence number a binary
//! search over the chain's messages (they are in the stream in sequence-number order). This broker's
//! appends not yet synced count too (the [`Store`](crate::store::Store) contract).

use sealpost_protocol::{ChainId, PublicKey, Topic};

use super::log::{self, TopicLog};
use super::{names, JetStreamStore};
use crate::store::PublisherRecord;
use crate::Result;

impl JetStreamStore {
    /// The record of the last batch of `chain` of `publisher` on `topic`.
    pub(super) fn chain_head(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        chain: ChainId,
    ) -> Result<Option<PublisherRecord>> {
        let log = self.log(topic);
        if !self.state(&log, false)?.exists {
            return Ok(None);
        }
        let subject = self.names.chain_subject(topic, publisher, chain);
        if let Some(u) = self.unsynced(&log).into_iter().rev().find(|u| u.subject == subject) {
            return Ok(Some(u.record));
        }
        Ok(self.last_on(&log, subject)?.map(|(_, head)| head))
    }

    /// The record of the batch of `chain` of `publisher` on `topic` that starts at `first_seq`.
    pub(super) fn chain_record(
        &self,
        topic: &Topic,
        publisher: &PublicKey,
        chain: ChainId,
        first_seq: u64,
    ) -> Result<Option<PublisherRecord>> {
        let log = self.log(topic);
        if !self.state(&log, false)?.exists {
            return Ok(None);
        }
        let subject = self.names.chain_subject(topic, publisher, chain);
        if let Some(u) =
            self.unsynced(&log).into_iter().find(|u| u.subject == subject && u.record.first_seq == first_seq)
        {
            return Ok(Some(u.record));
        }
        let Some((head_seq, head)) = self.last_on(&log, subject.clone())? else { return Ok(None) };
        if head.first_seq <= first_seq {
            return Ok((head.first_seq == first_seq).then_some(head));
        }
        // Search the sequences before its head.
        let (mut lo, mut hi) = (1, head_seq);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.next_on(&log, subject.clone(), mid)? {
                Some((seq, record)) if seq < hi => {
                    if record.first_seq == first_seq {
                        return Ok(Some(record));
                    }
                    if record.first_seq < first_seq {
                        lo = seq + 1;
                    } else {
                        hi = mid;
                    }
                }
                _ => hi = mid,
            }
        }
        Ok(None)
    }

    /// The last batch on `subject` of `log`'s stream, with its sequence.
    fn last_on(&self, log: &TopicLog, subject: String) -> Result<Option<(u64, PublisherRecord)>> {
        let last = self.get(log, log::At::Last(subject))?;
        last.map(|m| Ok((m.sequence, names::record_of(&m.headers)?))).transpose()
    }

    /// The first batch on `subject` at sequence `seq` or after, with its sequence.
    fn next_on(&self, log: &TopicLog, subject: String, seq: u64) -> Result<Option<(u64, PublisherRecord)>> {
        let next = self.get(log, log::At::Next { seq, subject })?;
        next.map(|m| Ok((m.sequence, names::record_of(&m.headers)?))).transpose()
    }
}
