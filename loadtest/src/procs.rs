//! Worker processes: this binary re-executed with a hidden `--worker` flag, one per
//! share of the connections, because each process can only hold as many sockets as its
//! fd limit allows.
//!
//! A worker talks to its parent in lines on stdout (`workers::WorkerMessage`) and is
//! told to stop by a line on stdin or by stdin closing (which also happens when the
//! parent dies, so a worker never outlives it by more than its own time limit).

use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its stdout reached EOF: it has exited or is about to.
    done: bool,
}

/// The running workers. Dropping this kills whatever still runs, so an early return
/// (error or panic) never leaves thousands of sockets held by orphans.
pub struct Procs {
    list: Vec<Proc>,
    rx: Receiver<(usize, Option<String>)>,
}

impl Procs {
    /// Starts one worker per command, with stdin and stdout piped and stderr shared.
    pub fn spawn(commands: Vec<Command>) -> io::Result<Procs> {
        let (tx, rx) = mpsc::channel();
        let mut procs = Procs { list: Vec::with_capacity(commands.len()), rx };
        for (i, mut cmd) in commands.into_iter().enumerate() {
            let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
            let stdout = child.stdout.take().expect("stdout is piped");
            let tx = tx.clone();
            // One thread per worker process (not per connection) just to turn its
            // blocking pipe into messages the parent can wait on with a timeout.
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((i, Some(line))).is_err() {
                        return;
                    }
                }
                let _ = tx.send((i, None));
            });
            procs.list.push(Proc { stdin: child.stdin.take(), child, done: false });
        }
        Ok(procs)
    }

    pub fn all_done(&self) -> bool {
        self.list.iter().all(|p| p.done)
    }

    pub fn is_done(&self, i: usize) -> bool {
        self.list[i].done
    }

    /// The next line from any worker, waiting up to `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<(usize, String)> {
        match self.rx.recv_timeout(timeout) {
            Ok(msg) => self.note(msg),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                // Every reader thread has finished, so every worker has closed stdout.
                self.list.iter_mut().for_each(|p| p.done = true);
                thread::sleep(timeout); // nothing more will come; do not spin
                None
            }
        }
    }

    /// The next line if one is waiting.
    pub fn try_recv(&mut self) -> Option<(usize, String)> {
        loop {
            match self.rx.try_recv() {
                Ok(msg) => {
                    if let Some(line) = self.note(msg) {
                        return Some(line);
                    }
                }
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    self.list.iter_mut().for_each(|p| p.done = true);
                    return None;
                }
            }
        }
    }

    fn note(&mut self, (i, line): (usize, Option<String>)) -> Option<(usize, String)> {
        match line {
            Some(line) => Some((i, line)),
            None => {
                self.list[i].done = true;
                None
            }
        }
    }

    pub fn tell_stop(&mut self, i: usize) {
        if let Some(mut stdin) = self.list[i].stdin.take() {
            // Failing means it already exited; dropping stdin sends EOF either way.
            let _ = stdin.write_all(b"stop\n");
        }
    }

    pub fn tell_stop_all(&mut self) {
        (0..self.list.len()).for_each(|i| self.tell_stop(i));
    }

    /// Kills the workers still running and collects every exit status.
    pub fn reap(&mut self) -> io::Result<Vec<ExitStatus>> {
        let mut statuses = Vec::with_capacity(self.list.len());
        for (i, p) in self.list.iter_mut().enumerate() {
            if !p.done {
                eprintln!("wshub-load: worker {i} did not finish in time; killing it");
                let _ = p.child.kill();
            }
            statuses.push(p.child.wait()?);
        }
        Ok(statuses)
    }

    /// Receives lines until every worker is done or `deadline` passes.
    pub fn drain_until(&mut self, deadline: Instant, mut on_line: impl FnMut(usize, String)) {
        while !self.all_done() && Instant::now() < deadline {
            if let Some((i, line)) = self.recv(Duration::from_millis(100)) {
                on_line(i, line);
            }
        }
        // Lines that arrived together with the last EOF.
        while let Some((i, line)) = self.try_recv() {
            on_line(i, line);
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.list {
            if matches!(p.child.try_wait(), Ok(None)) {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}

/// In a worker: a flag that turns true when the parent says stop (a line on stdin, or
/// stdin closing). One blocking thread is simpler than putting stdin in the poll.
pub fn stop_flag_from_stdin() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    thread::spawn(move || {
        let _ = io::Read::read(&mut io::stdin(), &mut [0u8; 64]);
        flag.store(true, Ordering::SeqCst);
    });
    stop
}
