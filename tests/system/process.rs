//! A server in a child process: started, waited for until it says where it listens, stopped. The one way
//! the system tests, `broker/tests/dev.rs` and the load bench start a process and wait for its ready line.
//!
//! [`ServerProcess::start`] spawns a command with its standard error piped and returns once the process has
//! printed its ready line: a line holding [`Ready`]'s marker followed by the address it listens on. It
//! guarantees:
//!
//! - **Bounded.** The wait ends at the deadline, or as soon as the process closes its standard error (it
//!   exited) without printing the line; either way the process is killed and the caller panics with what
//!   it printed. [`terminate`](ServerProcess::terminate) and [`wait_or_kill`](ServerProcess::wait_or_kill)
//!   are bounded the same way.
//! - **Its standard error keeps flowing.** A thread of its own reads it to the end, so the process never
//!   blocks on a full pipe; every line is kept in [`log`](ServerProcess::log) for a test to read later, and
//!   the lines [`Ready::echo`] picks are copied to this process's standard error.
//! - **No orphan.** Dropping a `ServerProcess` kills the process and reaps it.
//!
//! Its end of standard error closing is how an exit is noticed: the servers started here hold it until
//! they exit. It uses the standard library only, because three crates include it (`#[path]`): the system
//! tests, the broker's tests and the load bench.
// Each crate that includes this file uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The marker of the Sealpost broker's ready line (`sealpost-broker serve` and `dev`, the load bench's
/// broker process): `... listening on 127.0.0.1:PORT`.
pub const LISTENING: &str = "listening on ";

/// What a process prints when it is ready, and how long it may take.
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    marker: &'static str,
    within: Duration,
    echo: Option<Echo>,
}

/// Lines of the process's standard error to copy to ours: those `pick` chooses, each after `prefix`.
#[derive(Clone, Copy, Debug)]
struct Echo {
    prefix: &'static str,
    pick: fn(&str) -> bool,
}

impl Ready {
    /// Ready at the first line of standard error that holds `marker` followed by an address (`IP:PORT`, up
    /// to the next whitespace), which must come within `within` of the spawn.
    pub fn new(marker: &'static str, within: Duration) -> Ready {
        Ready { marker, within, echo: None }
    }

    /// Also copies the lines `pick` chooses (the ready line aside) to this process's standard error, each
    /// after `prefix`.
    pub fn echo(self, prefix: &'static str, pick: fn(&str) -> bool) -> Ready {
        Ready { echo: Some(Echo { prefix, pick }), ..self }
    }
}

/// What the thread that reads the child's standard error reports.
enum Event {
    /// The ready line, the text after the marker, and when it was read.
    Ready(String, String, Instant),
    /// Standard error closed: the process exited (or is about to).
    Closed,
}

/// A process started by [`ServerProcess::start`], killed when dropped.
pub struct ServerProcess {
    /// The process (its standard error belongs to the reader thread).
    pub child: Child,
    /// The address from its ready line.
    pub addr: SocketAddr,
    /// Every line it wrote to standard error so far (its log).
    pub log: Arc<Mutex<Vec<String>>>,
    /// When it was spawned, and when its ready line was read.
    pub spawned: Instant,
    pub ready_at: Instant,
    events: Receiver<Event>,
}

impl ServerProcess {
    /// Spawns `command` with its standard error piped (its other streams as `command` says) and waits until
    /// it prints its ready line. Panics (after killing it) if the process fails to spawn, exits first, does
    /// not print the line in time or prints no address after the marker.
    pub fn start(command: &mut Command, ready: Ready) -> ServerProcess {
        let spawned = Instant::now();
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stderr = child.stderr.take().unwrap_or_else(|| unreachable!("standard error is piped"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, events) = mpsc::channel();
        let lines = log.clone();
        let Ready { marker, within, echo } = ready;
        thread::spawn(move || {
            let mut ready_seen = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let read_at = Instant::now();
                let after = line.split_once(marker).map(|(_, after)| after.to_string());
                lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(line.clone());
                match after {
                    Some(after) if !ready_seen => {
                        ready_seen = true;
                        let _ = tx.send(Event::Ready(line, after, read_at));
                    }
                    _ => {
                        if let Some(Echo { prefix, pick }) = echo {
                            if pick(&line) {
                                eprintln!("{prefix}{line}");
                            }
                        }
                    }
                }
            }
            let _ = tx.send(Event::Closed);
        });
        let deadline = spawned + within;
        let failure = match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Ready(line, after, ready_at)) => {
                match after.split_whitespace().next().unwrap_or("").parse::<SocketAddr>() {
                    Ok(addr) => return ServerProcess { child, addr, log, spawned, ready_at, events },
                    Err(e) => format!("printed no address after {marker:?} ({e}): {line}"),
                }
            }
            Ok(Event::Closed) | Err(RecvTimeoutError::Disconnected) => {
                format!("exited before printing {marker:?}")
            }
            Err(RecvTimeoutError::Timeout) => format!("did not print {marker:?} within {within:?}"),
        };
        let _ = child.kill();
        let _ = child.wait();
        panic!("{command:?} {failure}; its standard error:\n{}", text(&log));
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to standard error so far, one line per line.
    pub fn log_text(&self) -> String {
        text(&self.log)
    }

    /// Waits at most `within` for the process to exit (after it was asked to stop): its status, or `None`
    /// if it is still running.
    pub fn wait_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            match self.events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Event::Ready(..)) => continue,
                Ok(Event::Closed) | Err(RecvTimeoutError::Disconnected) => {
                    return Some(
                        self.child.wait().unwrap_or_else(|e| panic!("waiting for the process: {e}")),
                    );
                }
                Err(RecvTimeoutError::Timeout) => return None,
            }
        }
    }

    /// Waits at most `within` for the process to exit (after it was asked to stop), and kills it if it has
    /// not: its status if it exited by itself.
    pub fn wait_or_kill(mut self, within: Duration) -> Option<ExitStatus> {
        self.wait_within(within)
        // Dropped: killed and reaped if still running.
    }

    /// SIGTERM (with kill(1)), then waits at most `within` for the process to exit. Panics (after killing
    /// it) if it does not.
    pub fn terminate(mut self, within: Duration) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill(1): {e}"));
        assert!(sent.success(), "kill -TERM {} failed", self.pid());
        match self.wait_within(within) {
            Some(status) => status,
            None => panic!("the process did not exit within {within:?} of SIGTERM"),
        }
    }

    /// SIGKILL: no shutdown path runs. Returns once the process is reaped.
    pub fn kill(mut self) {
        self.child.kill().unwrap_or_else(|e| panic!("cannot kill the process: {e}"));
        self.child.wait().unwrap_or_else(|e| panic!("waiting for the killed process: {e}"));
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines, each ended by a newline.
fn text(log: &Mutex<Vec<String>>) -> String {
    let lines = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell that prints `stderr` to its standard error, then waits for its standard input to close.
    fn shell(stderr: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", &format!("printf '{stderr}' >&2; exec cat")]).stdin(Stdio::piped());
        command
    }

    fn ready() -> Ready {
        Ready::new(LISTENING, Duration::from_secs(30))
    }

    #[test]
    fn start_returns_at_the_ready_line_with_its_address_and_keeps_the_log() {
        let mut process =
            ServerProcess::start(&mut shell("booting\\nlistening on 127.0.0.1:7 now\\n"), ready());
        assert_eq!(process.addr, SocketAddr::from(([127, 0, 0, 1], 7)));
        assert!(process.ready_at >= process.spawned);
        assert_eq!(process.log_text(), "booting\nlistening on 127.0.0.1:7 now\n");
        drop(process.child.stdin.take());
        let status = process.wait_or_kill(Duration::from_secs(30));
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
    }

    #[test]
    fn a_process_that_exits_before_its_ready_line_fails_at_once_with_what_it_printed() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo 'no config' >&2; exit 3"]);
        let started = Instant::now();
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ServerProcess::start(&mut command, ready());
        }));
        let message = failed.err().and_then(|e| e.downcast::<String>().ok()).map(|m| *m).unwrap_or_default();
        assert!(message.contains("exited before printing") && message.contains("no config"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(30), "it waited for the deadline");
    }

    #[test]
    fn dropping_kills_and_reaps_the_process() {
        let process = ServerProcess::start(&mut shell("listening on 127.0.0.1:7\\n"), ready());
        let pid = process.pid();
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        drop(process);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} is still there");
    }
}
