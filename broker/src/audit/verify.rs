//! The verifier: does a sequence of audit files form one intact, closed log signed by a given key?
//!
//! It reads the files in the order given and checks, line by line:
//! - every line is an entry or a checkpoint in exactly the form the writer writes;
//! - every entry's `hash` is the hash of its contents, its `seq` is one more than the entry before it and
//!   its `prev` is that entry's hash (across files too: a missing, extra or reordered file breaks this);
//! - every checkpoint's hash, its signature by the key, its number and `prev` (the checkpoint before it),
//!   and that it covers exactly the last entry before it;
//! - the structure of runs: the log begins with a `start` entry (seq 1); after a final checkpoint the
//!   next line is a `start` entry at the beginning of the next file; a file that ends without a checkpoint
//!   (a run that was killed), or with a torn last line, is followed by a file that begins with a `restart`
//!   entry whose `count` is the length of that torn line (0 if none);
//! - closure: the last line of the last file is a final checkpoint. Without it the log is reported
//!   "not closed": it was truncated, or the broker was killed or is still running, after the time of its
//!   last checkpoint.
//!
//! It stops at the first finding and names it (file, line, seq, what is wrong): after a break, nothing
//! later can be trusted to mean what it says.
//!
//! What it cannot see: a log cut back to an earlier clean close, with every later file deleted, is a valid
//! shorter log (compare the last checkpoint it prints with one kept elsewhere); and anything rewritten and
//! re-signed by someone who holds the audit key.

use std::fmt;
use std::path::{Path, PathBuf};

use super::checkpoint::Checkpoint;
use super::digest::Digest;
use super::entry::{Action, Record};
use super::key::AuditPublicKey;
use super::rfc3339;
use crate::{Error, Result};

/// The first thing wrong with a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The file.
    pub file: PathBuf,
    /// The line, from 1.
    pub line: u64,
    /// The `seq` of the entry (for a checkpoint: of the entry it covers), when known.
    pub seq: Option<u64>,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// What the verifier read and found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Files read.
    pub files: usize,
    /// Intact entries read before the finding, if any.
    pub entries: u64,
    /// Intact checkpoints read before the finding, if any.
    pub checkpoints: u64,
    /// The last intact checkpoint.
    pub last_checkpoint: Option<Checkpoint>,
    /// Things worth knowing that are not tampering: empty files, runs that were killed and restarted.
    pub notes: Vec<String>,
    /// The first thing wrong; `None` when the log is intact and closed.
    pub finding: Option<Finding>,
}

/// Verifies `files`, in this order, against `key`. An error means the files could not be read (nothing
/// was checked); findings are in the report.
pub fn verify_files(key: &AuditPublicKey, files: &[PathBuf]) -> Result<Report> {
    if files.is_empty() {
        return Err(Error::Audit("no audit files to verify".into()));
    }
    let mut v = Verifier::new(key, Mode::Whole);
    for path in files {
        let bytes =
            std::fs::read(path).map_err(|e| Error::Audit(format!("cannot read {}: {e}", path.display())))?;
        if let Err(f) = v.file(path, &bytes) {
            v.report.finding = Some(f);
            return Ok(v.report);
        }
    }
    v.close();
    Ok(v.report)
}

/// Verifies every `audit-NNNNNN.jsonl` in `dir`, in the order of their numbers.
pub fn verify_dir(key: &AuditPublicKey, dir: &Path) -> Result<Report> {
    let files: Vec<PathBuf> = super::list_files(dir)?.into_iter().map(|(_, p)| p).collect();
    if files.is_empty() {
        return Err(Error::Audit(format!("no audit-NNNNNN.jsonl files in {}", dir.display())));
    }
    verify_files(key, &files)
}

/// Where the newest files of a log leave off, for a writer that continues it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tail {
    /// `seq` and `hash` of the last intact entry.
    pub last_entry: Option<(u64, Digest)>,
    /// The last checkpoint.
    pub last_checkpoint: Option<Checkpoint>,
    /// The log ends with a final checkpoint and no torn line.
    pub closed: bool,
    /// Length of the torn line at the end, if any.
    pub torn: Option<u64>,
}

/// Reads the newest files of a log, trusting where the first of them starts, and checks the rest as
/// [`verify_files`] does. A finding means the tail is damaged (not merely unclosed).
pub(crate) fn read_tail(key: &AuditPublicKey, files: &[(PathBuf, Vec<u8>)]) -> Result<Tail, Finding> {
    let mut v = Verifier::new(key, Mode::Tail);
    for (path, bytes) in files {
        v.file(path, bytes)?;
    }
    let anchored = v.entries_anchored;
    Ok(Tail {
        last_entry: anchored.then_some((v.next_seq - 1, v.prev)),
        closed: v.last == Last::Checkpoint { last: true } && v.torn.is_none(),
        last_checkpoint: v.report.last_checkpoint,
        torn: v.torn,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// From the beginning of the log.
    Whole,
    /// From wherever the first file starts.
    Tail,
}

/// What the last line read was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Last {
    /// Nothing yet, at the beginning of the log.
    Nothing,
    /// Nothing yet, in the middle of a log (tail mode): no rule about what came before applies.
    Unknown,
    Entry,
    Checkpoint {
        last: bool,
    },
}

struct Verifier<'k> {
    key: &'k AuditPublicKey,
    entries_anchored: bool,
    checkpoints_anchored: bool,
    next_seq: u64,
    prev: Digest,
    next_checkpoint: u64,
    checkpoint_prev: Digest,
    last: Last,
    file_start: bool,
    torn: Option<u64>,
    /// Where the end of the log is: file and last line number.
    end: (PathBuf, u64),
    report: Report,
}

impl<'k> Verifier<'k> {
    fn new(key: &'k AuditPublicKey, mode: Mode) -> Verifier<'k> {
        let whole = mode == Mode::Whole;
        Verifier {
            key,
            entries_anchored: whole,
            checkpoints_anchored: whole,
            next_seq: 1,
            prev: Digest::ZERO,
            next_checkpoint: 1,
            checkpoint_prev: Digest::ZERO,
            last: if whole { Last::Nothing } else { Last::Unknown },
            file_start: true,
            torn: None,
            end: (PathBuf::new(), 0),
            report: Report::default(),
        }
    }

    fn file(&mut self, path: &Path, bytes: &[u8]) -> Result<(), Finding> {
        self.report.files += 1;
        self.file_start = true;
        if bytes.is_empty() {
            self.report
                .notes
                .push(format!("{}: empty (a run killed before its first write)", path.display()));
            return Ok(());
        }
        let mut n = 0u64;
        // Only the last chunk can lack its newline.
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            n += 1;
            self.end = (path.to_owned(), n);
            let finding =
                |seq: Option<u64>, what: String| Finding { file: path.to_owned(), line: n, seq, what };
            let Some(body) = chunk.strip_suffix(b"\n") else {
                // A last line without its newline: torn by a kill or a crash mid-write.
                if self.torn.is_some() {
                    return Err(finding(None, "a second torn line before any restart entry".into()));
                }
                self.torn = Some(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
                continue;
            };
            let text = std::str::from_utf8(body).map_err(|_| finding(None, "not UTF-8".into()))?;
            if text.starts_with("{\"checkpoint\":") {
                let c = Checkpoint::parse(text).map_err(|e| finding(None, e))?;
                let seq = c.seq;
                self.checkpoint(c).map_err(|e| finding(Some(seq), e))?;
            } else {
                let r = Record::parse(text).map_err(|e| finding(None, e))?;
                let seq = r.seq;
                self.entry(r).map_err(|e| finding(Some(seq), e))?;
            }
            self.file_start = false;
        }
        Ok(())
    }

    fn entry(&mut self, r: Record) -> Result<(), String> {
        if r.canonical_hash() != r.hash {
            return Err("the entry's hash does not match its contents: it was edited".into());
        }
        if self.entries_anchored {
            if r.seq != self.next_seq {
                return Err(format!(
                    "seq {} where {} was expected: an entry is missing, repeated or out of order",
                    r.seq, self.next_seq
                ));
            }
            if r.prev != self.prev {
                return Err(format!(
                    "prev is not the hash of entry {}: an entry before it was removed, replaced or reordered",
                    self.next_seq - 1
                ));
            }
        }
        let action = r.entry.action();
        match self.last {
            Last::Unknown => {}
            Last::Nothing if action != Action::Start => {
                return Err("the log does not begin with a start entry: its beginning is missing".into())
            }
            Last::Nothing => {}
            Last::Checkpoint { last: true } if !self.file_start => {
                return Err("an entry after the final checkpoint, in the same file".into())
            }
            Last::Checkpoint { last: true } if action != Action::Start => {
                return Err("the run after a clean close does not begin with a start entry".into())
            }
            Last::Checkpoint { last: true } => {}
            Last::Entry | Last::Checkpoint { last: false } => {
                if action == Action::Start {
                    return Err("a start entry without a final checkpoint before it: the end of the run \
                                before is missing"
                        .into());
                }
                if action == Action::Restart {
                    if !self.file_start {
                        return Err("a restart entry in the middle of a file".into());
                    }
                    let torn = self.torn.unwrap_or(0);
                    if r.entry.count_value() != Some(torn) {
                        return Err(format!(
                            "the restart entry counts {:?} torn bytes, the file before ends with {torn}",
                            r.entry.count_value()
                        ));
                    }
                } else if self.file_start && (self.torn.is_some() || self.last == Last::Entry) {
                    return Err("the file before ends without a checkpoint (truncated?) and this file does \
                                not begin with a restart entry"
                        .into());
                }
            }
        }
        if action == Action::Restart {
            self.report.notes.push(format!(
                "entry {}: restart after a run that was not closed (killed or crashed); entries it had not \
                 flushed are lost{}",
                r.seq,
                match self.torn {
                    Some(n) => format!(", and its last file ends with a torn line of {n} bytes"),
                    None => String::new(),
                }
            ));
        }
        self.entries_anchored = true;
        self.next_seq = r.seq + 1;
        self.prev = r.hash;
        self.last = Last::Entry;
        self.torn = None;
        self.report.entries += 1;
        Ok(())
    }

    fn checkpoint(&mut self, c: Checkpoint) -> Result<(), String> {
        if c.canonical_hash() != c.hash {
            return Err(format!(
                "checkpoint {}: its hash does not match its contents: it was edited",
                c.number
            ));
        }
        if !c.signed_by(self.key) {
            return Err(format!(
                "checkpoint {}: the signature does not verify with this key: forged, or signed by another key",
                c.number
            ));
        }
        if self.checkpoints_anchored {
            if c.number != self.next_checkpoint {
                return Err(format!(
                    "checkpoint {} where {} was expected: a checkpoint is missing or out of order",
                    c.number, self.next_checkpoint
                ));
            }
            if c.prev != self.checkpoint_prev {
                return Err(format!(
                    "checkpoint {} does not chain from checkpoint {}",
                    c.number,
                    self.next_checkpoint - 1
                ));
            }
        }
        match self.last {
            Last::Nothing => {
                return Err("the log begins with a checkpoint: its beginning is missing".into());
            }
            Last::Checkpoint { last: true } => {
                return Err(format!("checkpoint {} after the final checkpoint", c.number));
            }
            _ if self.file_start && (self.torn.is_some() || self.last == Last::Entry) => {
                return Err("the file before ends without a checkpoint (truncated?) and this file begins \
                            with a checkpoint"
                    .into());
            }
            _ => {}
        }
        if self.entries_anchored {
            let last = (self.next_seq - 1, self.prev);
            if (c.seq, c.entry_hash) != last {
                return Err(format!(
                    "checkpoint {} covers entry {} but the last entry before it is {}{}: entries were \
                     removed, added or changed after it was signed",
                    c.number,
                    c.seq,
                    last.0,
                    if c.seq == last.0 { " with another hash" } else { "" }
                ));
            }
        } else {
            self.entries_anchored = true;
            self.next_seq = c.seq + 1;
            self.prev = c.entry_hash;
        }
        self.checkpoints_anchored = true;
        self.next_checkpoint = c.number + 1;
        self.checkpoint_prev = c.hash;
        self.last = Last::Checkpoint { last: c.last };
        self.report.checkpoints += 1;
        self.report.last_checkpoint = Some(c);
        Ok(())
    }

    /// The end of the log: it must be a final checkpoint.
    fn close(&mut self) {
        if self.last == (Last::Checkpoint { last: true }) && self.torn.is_none() {
            return;
        }
        let after = match &self.report.last_checkpoint {
            Some(c) => format!(
                "after {} (checkpoint {}, covering entry {})",
                rfc3339::to_string(c.time),
                c.number,
                c.seq
            ),
            None => "before its first checkpoint".into(),
        };
        let torn = match self.torn {
            Some(n) => format!(", its last line torn ({n} bytes)"),
            None => String::new(),
        };
        let (file, line) = self.end.clone();
        self.report.finding = Some(Finding {
            file,
            line,
            seq: self.entries_anchored.then_some(self.next_seq - 1),
            what: format!(
                "not closed: the log ends without a final checkpoint{torn}: truncated, or the broker was \
                 killed or is still running, {after}"
            ),
        });
    }
}

#[cfg(test)]
mod tests;
