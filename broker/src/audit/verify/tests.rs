//! Tampering with a log, every way the module docs claim to detect, and where it is reported.

use std::path::PathBuf;

use super::*;
use crate::audit::testing::{closed_log, key, lines, write_lines};
use crate::audit::AuditKey;

fn verify(files: &[PathBuf]) -> Report {
    verify_files(&key().public_key(), files).unwrap()
}

fn finding(files: &[PathBuf]) -> Finding {
    let report = verify(files);
    match report.finding {
        Some(f) => f,
        None => panic!("no finding: {:?}", report.notes),
    }
}

/// Replaces the first character of the value of `"name":` in `line` by another one.
fn edit_field(line: &str, name: &str) -> Option<String> {
    let at = line.find(&format!("\"{name}\":"))? + name.len() + 3;
    let mut chars: Vec<char> = line.chars().collect();
    let i = if chars[at] == '"' { at + 1 } else { at };
    chars[i] = match chars[i] {
        '0' => '1',
        '9' => '8',
        c if c.is_ascii_digit() => '0',
        'a' => 'b',
        'f' => 'a',
        't' => 'f',
        _ => 'a',
    };
    Some(chars.into_iter().collect())
}

const ENTRY_FIELDS: [&str; 12] = [
    "seq",
    "time",
    "principal",
    "fingerprint",
    "remote",
    "action",
    "topic",
    "decision",
    "reason",
    "count",
    "prev",
    "hash",
];
const CHECKPOINT_FIELDS: [&str; 8] =
    ["checkpoint", "time", "seq", "entry_hash", "prev", "final", "hash", "sig"];

#[test]
fn a_clean_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let files = closed_log(dir.path(), 10, 1 << 20);
    let report = verify(&files);
    assert_eq!(report.finding, None);
    assert_eq!((report.files, report.entries), (1, 11));
    // 10 decisions and the start entry: checkpoints after entries 4, 8, and the final one after 11.
    assert_eq!(report.checkpoints, 3);
    assert!(report.last_checkpoint.unwrap().last);
}

#[test]
fn editing_any_field_of_any_line_is_reported_at_that_line() {
    let dir = tempfile::tempdir().unwrap();
    let files = closed_log(dir.path(), 6, 1 << 20);
    let original = lines(&files[0]);
    let mut edits = 0;
    for (i, line) in original.iter().enumerate() {
        let fields: &[&str] =
            if line.starts_with("{\"checkpoint\"") { &CHECKPOINT_FIELDS } else { &ENTRY_FIELDS };
        for name in fields {
            let Some(edited) = edit_field(line, name) else { continue };
            let mut tampered = original.clone();
            tampered[i] = edited;
            write_lines(&files[0], &tampered);
            let f = finding(&files);
            assert_eq!(
                (f.file.as_path(), f.line),
                (files[0].as_path(), i as u64 + 1),
                "{name} of line {i}: {f}"
            );
            edits += 1;
        }
    }
    assert!(edits > 70, "{edits}");
}

#[test]
fn an_edit_rehashed_without_the_key_is_caught_by_the_next_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let files = closed_log(dir.path(), 6, 1 << 20);
    let mut tampered = lines(&files[0]);
    // Entry 2 (line 2) says alice0 was allowed; make it a refusal, and recompute every hash after it.
    let mut prev = Record::parse(&tampered[0]).unwrap().hash;
    for line in tampered.iter_mut() {
        if line.starts_with("{\"checkpoint\"") {
            break;
        }
        let mut r = Record::parse(line).unwrap();
        if r.seq == 2 {
            r.entry = r.entry.refuse("LIMIT_EXCEEDED");
        }
        if r.seq > 1 {
            r = Record::seal(r.entry, r.seq, r.time, prev);
        }
        prev = r.hash;
        line.clear();
        r.render(line);
        line.pop();
    }
    write_lines(&files[0], &tampered);
    let f = finding(&files);
    assert_eq!(f.line, 5, "{f}");
    assert!(f.what.contains("checkpoint 1 covers entry 4"), "{f}");
}

#[test]
fn deleting_any_line_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let files = closed_log(dir.path(), 7, 1 << 20);
    let original = lines(&files[0]);
    let is_checkpoint = |i: usize| original[i].starts_with("{\"checkpoint\"");
    for i in 0..original.len() {
        let mut tampered = original.clone();
        let removed = tampered.remove(i);
        write_lines(&files[0], &tampered);
        let f = finding(&files);
        // An entry is missed where it was; a checkpoint, at the next one (which no longer chains), or at
        // the end if it was the final one.
        let expected_line = match (i..original.len()).skip(1).find(|&j| is_checkpoint(j)) {
            _ if !is_checkpoint(i) => i + 1,
            Some(next) => next,
            None => original.len() - 1,
        };
        assert_eq!(f.line, expected_line as u64, "removing line {} ({removed}): {f}", i + 1);
        if i == 0 {
            assert!(f.what.contains("where 1 was expected"), "{f}");
        }
        if i == original.len() - 1 {
            assert!(f.what.contains("not closed"), "{f}");
        }
    }
    // The newest entry, before the final checkpoint: that checkpoint no longer covers the last entry.
    let newest = original.iter().rposition(|l| !l.starts_with("{\"checkpoint\"")).unwrap();
    let seq = Record::parse(&original[newest]).unwrap().seq;
    let mut tampered = original.clone();
    tampered.remove(newest);
    write_lines(&files[0], &tampered);
    let f = finding(&files);
    assert_eq!(f.line, newest as u64 + 1, "{f}");
    assert!(
        f.what.contains(&format!("covers entry {seq} but the last entry before it is {}", seq - 1)),
        "{f}"
    );
}

#[test]
fn swapping_two_lines_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let files = closed_log(dir.path(), 7, 1 << 20);
    let original = lines(&files[0]);
    for i in 0..original.len() - 1 {
        for j in i + 1..original.len() {
            let mut tampered = original.clone();
            tampered.swap(i, j);
            write_lines(&files[0], &tampered);
            let f = finding(&files);
            let entries =
                !original[i].starts_with("{\"checkpoint\"") && !original[j].starts_with("{\"checkpoint\"");
            // Two entries: at the first of them. An entry and a checkpoint: at the first, or at the
            // checkpoint that no longer covers the entry before it.
            if entries {
                assert_eq!(f.line, i as u64 + 1, "swapping lines {} and {}: {f}", i + 1, j + 1);
            } else {
                assert!(
                    f.line == i as u64 + 1 || f.line == j as u64 + 1,
                    "swapping {} and {}: {f}",
                    i + 1,
                    j + 1
                );
            }
        }
    }
}

#[test]
fn truncating_anywhere_is_reported_as_not_closed() {
    let dir = tempfile::tempdir().unwrap();
    let files = closed_log(dir.path(), 5, 1 << 20);
    let bytes = std::fs::read(&files[0]).unwrap();
    let mut cuts: Vec<usize> = vec![0];
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            cuts.push(i + 1); // at the line boundary
            cuts.push(i + 2); // one byte into the next line
        }
    }
    cuts.extend((0..bytes.len()).step_by(97));
    cuts.retain(|&c| c < bytes.len());
    for cut in cuts {
        std::fs::write(&files[0], &bytes[..cut]).unwrap();
        let f = finding(&files);
        assert!(f.what.contains("not closed"), "cut at {cut}: {f}");
    }
    // Removing just the final checkpoint: the time of the last one before it is named.
    std::fs::write(&files[0], &bytes).unwrap();
    let mut all = lines(&files[0]);
    all.pop();
    write_lines(&files[0], &all);
    let f = finding(&files);
    assert!(f.what.contains("not closed") && f.what.contains("after 2026-12-05T"), "{f}");
    assert_eq!(f.seq, Some(6), "{f}");
}

#[test]
fn a_forged_or_foreign_checkpoint_signature_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let files = closed_log(dir.path(), 5, 1 << 20);
    let original = lines(&files[0]);
    let at = original.iter().position(|l| l.starts_with("{\"checkpoint\"")).unwrap();
    // Another signature on the same fields (only the signature changes).
    let mut tampered = original.clone();
    let c = Checkpoint::parse(&original[at]).unwrap();
    let mut forged = Checkpoint { sig: [7; 64], ..c.clone() };
    tampered[at].clear();
    forged.render(&mut tampered[at]);
    tampered[at].pop();
    write_lines(&files[0], &tampered);
    let f = finding(&files);
    assert!(f.line == at as u64 + 1 && f.what.contains("signature"), "{f}");
    // Signed by another key.
    let other = AuditKey::from_seed(&[9; 32]);
    forged = Checkpoint::sign(&other, c.number, c.time, (c.seq, c.entry_hash), c.prev, c.last);
    tampered[at].clear();
    forged.render(&mut tampered[at]);
    tampered[at].pop();
    write_lines(&files[0], &tampered);
    let f = finding(&files);
    assert!(f.line == at as u64 + 1 && f.what.contains("another key"), "{f}");
    // And the intact log does not verify with another key either.
    write_lines(&files[0], &original);
    let report = verify_files(&other.public_key(), &files).unwrap();
    assert!(report.finding.unwrap().what.contains("signature"));
}

#[test]
fn files_out_of_order_or_missing_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let files = closed_log(dir.path(), 60, 4096);
    assert!(files.len() >= 3, "{files:?}");
    assert_eq!(verify(&files).finding, None);
    let (a, b, c) = (files[0].clone(), files[1].clone(), files[2].clone());
    let rest: Vec<PathBuf> = files[3..].to_vec();
    let with = |head: &[&PathBuf]| -> Vec<PathBuf> {
        head.iter().map(|p| (*p).clone()).chain(rest.clone()).collect()
    };
    let f = finding(&with(&[&b, &a, &c]));
    assert_eq!((f.file.as_path(), f.line), (b.as_path(), 1), "{f}");
    let f = finding(&with(&[&a, &c]));
    assert_eq!((f.file.as_path(), f.line), (c.as_path(), 1), "{f}");
    let f = finding(&with(&[&b, &c]));
    assert!(f.file == b && f.what.contains("where 1 was expected"), "{f}");
    // The last file missing: the one before ends with a checkpoint that is not final.
    let f = finding(&files[..files.len() - 1]);
    assert!(f.what.contains("not closed"), "{f}");
    // The same file twice.
    let f = finding(&[a.clone(), a.clone()]);
    assert_eq!((f.file.as_path(), f.line), (a.as_path(), 1), "{f}");
}

#[test]
fn lines_after_the_final_checkpoint_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let files = closed_log(dir.path(), 3, 1 << 20);
    let mut tampered = lines(&files[0]);
    let first = tampered[0].clone();
    tampered.push(first);
    write_lines(&files[0], &tampered);
    let f = finding(&files);
    assert_eq!(f.line, tampered.len() as u64, "{f}");
}

#[test]
fn unreadable_files_cannot_be_checked() {
    let dir = tempfile::tempdir().unwrap();
    assert!(verify_files(&key().public_key(), &[dir.path().join("missing.jsonl")]).is_err());
    assert!(verify_files(&key().public_key(), &[]).is_err());
    assert!(verify_dir(&key().public_key(), dir.path()).is_err());
}
