//! A fixed pool of CPU threads for preprocessing (image decode, resize, patchify, tokenise:
//! what `Service::submit` does), sized to the cores.
//!
//! tokio's blocking pool grows to hundreds of threads on demand; CPU-bound decodes there would
//! all run at once, each holding its decoded pixels, so memory would grow with the number of
//! requests instead of the number of cores. Here at most `threads` preprocess at a time and
//! the rest wait in the queue holding only their encoded bytes (the queue itself is bounded by
//! the server's limit on requests being prepared).

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::error::ApiError;

type Job = Box<dyn FnOnce() + Send>;

pub struct CpuPool {
    queue: Mutex<mpsc::Sender<Job>>,
    threads: usize,
}

impl CpuPool {
    /// Starts `threads` workers (at least one). They exit when the pool is dropped.
    pub fn new(threads: usize) -> CpuPool {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ocrvl-prep-{i}"))
                .spawn(move || loop {
                    // The lock is held only to take the next job, not while running it.
                    let next = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    match next {
                        // A panicking job (a bug) must not take the worker with it; its
                        // caller sees the dropped reply as an internal error.
                        Ok(job) => drop(std::panic::catch_unwind(AssertUnwindSafe(job))),
                        Err(_) => return,
                    }
                });
            if spawned.is_err() && i == 0 {
                // Not even one thread: jobs then run nowhere; `run` reports it.
                break;
            }
        }
        CpuPool {
            queue: Mutex::new(tx),
            threads,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a pool thread and waits for its result without blocking the async runtime.
    pub async fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R, ApiError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.queue
            .lock()
            .map_err(|_| ApiError::internal("the preprocessing pool is poisoned"))?
            .send(job)
            .map_err(|_| ApiError::internal("the preprocessing pool has stopped"))?;
        rx.await
            .map_err(|_| ApiError::internal("preprocessing ended without an answer (a bug; see the log)"))
    }
}

/// The machine's cores, the default pool size.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_jobs_and_survives_a_panic() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let pool = CpuPool::new(2);
        rt.block_on(async {
            assert_eq!(pool.run(|| 6 * 7).await.unwrap(), 42);
            assert!(pool.run(|| -> u8 { panic!("boom") }).await.is_err());
            // The workers are still there.
            let all: Vec<_> = (0..8).map(|i| pool.run(move || i * 2)).collect();
            for (i, f) in all.into_iter().enumerate() {
                assert_eq!(f.await.unwrap(), i * 2);
            }
        });
    }
}
