//! Questions for Redis whose answer someone is waiting for (a presence across the
//! cluster, a ticket taken from Redis): the bus's third thread, with its own Redis
//! connection, runs them one after the other. Whoever asks never waits: it queues a
//! [`Job`] and returns; the job hands its answer back itself (routed to the connection
//! that asked, or through a shard's inbox), so a shard thread is never blocked on Redis.
//!
//! Kept apart from the publisher so that a question never waits behind a pipeline of
//! publications, nor a publication behind a slow question.

use std::time::Instant;

use crossbeam_channel::{select, Receiver};
use redis::{Client, Connection, RedisError, RedisResult};

use super::bus::{connect, Backoff};
use super::Cluster;

/// Jobs waiting for the thread at most; past that, asking is refused (`Busy`) and the
/// asker answers "overloaded" at once rather than queueing without bound.
pub(super) const CAPACITY: usize = 1024;

/// One question and what to do with its answer. Runs on the ask thread with the Redis
/// connection, or with `None` while Redis cannot be reached (it must then answer its
/// asker that the cluster is unavailable). It always answers its asker itself; an `Err`
/// it returns only tells the thread whether the connection may be broken.
pub(crate) type Job = Box<dyn FnOnce(Option<&mut Connection>) -> RedisResult<()> + Send>;

/// The ask queue was full: the asker should answer "overloaded" now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Busy;

impl Cluster {
    /// Queues `job` for the ask thread, without waiting.
    pub(crate) fn ask(&self, job: Job) -> Result<(), Busy> {
        self.asks.try_send(job).map_err(|_| Busy)
    }
}

/// The ask thread: runs each job as it comes, until stopped. It connects when a job
/// needs Redis; after a failure it does not try again before the back-off delay, and the
/// jobs in between are told at once that Redis is unreachable, so none of them waits
/// for a connect timeout each.
pub(super) fn answer(client: Client, jobs: Receiver<Job>, stop: Receiver<()>) {
    let mut connection: Option<Connection> = None;
    let mut backoff = Backoff::new();
    let mut retry_at = Instant::now();
    loop {
        let job = select! {
            recv(jobs) -> job => match job {
                Ok(job) => job,
                Err(_) => return,
            },
            recv(stop) -> _ => return,
        };
        if connection.is_none() && Instant::now() >= retry_at {
            match connect(&client) {
                Ok(fresh) => {
                    backoff.reset();
                    connection = Some(fresh);
                }
                Err(e) => {
                    log::debug!("cluster: questions for Redis cannot be asked: {e}");
                    retry_at = Instant::now() + backoff.next_delay();
                }
            }
        }
        if let Err(e) = job(connection.as_mut()) {
            if broken(&e) {
                log::debug!("cluster: the ask connection failed: {e}");
                connection = None;
            }
        }
    }
}

/// Whether an error means the connection can no longer be trusted (rather than Redis
/// answering one command with an error).
fn broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With nothing listening, every job is still run, at once, and told Redis is not
    /// there; the thread stops when its queue closes.
    #[test]
    fn while_redis_cannot_be_reached_each_job_is_told_so_without_waiting() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let client = Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(CAPACITY);
        let (_stop, stopped) = crossbeam_channel::bounded(0);
        let thread = std::thread::spawn(move || answer(client, queue, stopped));
        let (told, answers) = crossbeam_channel::unbounded();
        for _ in 0..3 {
            let told = told.clone();
            jobs.send(Box::new(move |connection: Option<&mut Connection>| {
                told.send(connection.is_some()).unwrap();
                Ok(())
            }))
            .unwrap();
        }
        let seen: Vec<bool> = answers.iter().take(3).collect();
        assert_eq!(seen, [false, false, false]);
        drop(jobs);
        thread.join().unwrap();
    }
}
