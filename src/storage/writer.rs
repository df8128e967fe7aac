//! The writer thread of a persistent backend (RocksDB, file): rooms queue jobs, one thread
//! takes them in groups (group commit across rooms) and answers each once it is durable.

use std::sync::mpsc as std_mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use super::{AppendDone, StorageError};
use crate::ids::RoomKey;

/// The answer of a job that a caller waits for.
pub(super) type Reply = std_mpsc::Sender<Result<(), StorageError>>;

/// Most jobs written as one group.
const MAX_GROUP: usize = 4096;

pub(super) enum Job {
    Append {
        key: RoomKey,
        seq: u64,
        bytes: Vec<u8>,
        done: AppendDone,
    },
    /// Writes a snapshot and drops the log entries it covers.
    Fold {
        key: RoomKey,
        seq: u64,
        snapshot: Vec<u8>,
        done: Reply,
    },
    Delete {
        key: RoomKey,
        done: Reply,
    },
    /// Sent before a room is loaded: everything queued for the room's previous incarnation has
    /// been written (or refused) once it is answered, and the room may append again.
    Reopen {
        key: RoomKey,
        done: Reply,
    },
}

/// The queue to the writer thread, and the thread. Unbounded in jobs, bounded in bytes: appends
/// take room in the rooms' shared [`super::WriteBudget`] before they are queued, and folds and
/// deletes wait for their reply.
pub(super) struct JobQueue {
    jobs: Mutex<Option<std_mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl JobQueue {
    /// Starts the thread `name` running `write` over the queue.
    pub fn start(
        name: &str,
        write: impl FnOnce(&std_mpsc::Receiver<Job>) + Send + 'static,
    ) -> std::io::Result<JobQueue> {
        let (tx, rx) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || write(&rx))?;
        Ok(JobQueue {
            jobs: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues an append; `done` runs once it is durable, or at once if the queue is closed.
    pub fn append(&self, key: &RoomKey, seq: u64, bytes: Vec<u8>, done: AppendDone) {
        let job = Job::Append {
            key: key.clone(),
            seq,
            bytes,
            done,
        };
        if let Err(Job::Append { key, done, .. }) = self.submit(job) {
            done(Err(closed(&key, "storage is closed")));
        }
    }

    /// Writes a fold and waits for it.
    pub fn fold(&self, key: &RoomKey, seq: u64, snapshot: &[u8]) -> Result<(), StorageError> {
        self.call(key, |done| Job::Fold {
            key: key.clone(),
            seq,
            snapshot: snapshot.to_vec(),
            done,
        })
    }

    /// Deletes everything of the room and waits for it.
    pub fn delete(&self, key: &RoomKey) -> Result<(), StorageError> {
        self.call(key, |done| Job::Delete {
            key: key.clone(),
            done,
        })
    }

    /// Waits until everything queued for the room is written (before it is loaded again).
    pub fn reopen(&self, key: &RoomKey) -> Result<(), StorageError> {
        self.call(key, |done| Job::Reopen {
            key: key.clone(),
            done,
        })
    }

    fn submit(&self, job: Job) -> Result<(), Job> {
        match lock(&self.jobs).as_ref() {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Queues a job that answers on a channel and waits for the answer.
    fn call(&self, key: &RoomKey, make: impl FnOnce(Reply) -> Job) -> Result<(), StorageError> {
        let (tx, rx) = std_mpsc::channel();
        self.submit(make(tx))
            .map_err(|_| closed(key, "storage is closed"))?;
        rx.recv()
            .unwrap_or_else(|_| Err(closed(key, "storage writer stopped")))
    }

    /// Closes the queue and waits until the thread has written everything queued.
    pub fn stop(&self) {
        lock(&self.jobs).take();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

/// The next group of jobs: the first one waited for, then whatever else is queued already.
/// `None` once the queue is closed and empty.
pub(super) fn next_group(jobs: &std_mpsc::Receiver<Job>) -> Option<Vec<Job>> {
    let first = jobs.recv().ok()?;
    let mut group = vec![first];
    group.extend(jobs.try_iter().take(MAX_GROUP - 1));
    Some(group)
}

fn closed(key: &RoomKey, what: &str) -> StorageError {
    StorageError::Io {
        room: key.to_string(),
        source: std::io::Error::other(what.to_owned()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
