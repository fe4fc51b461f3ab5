//! Admission: a prompt waits here, as an async permit and not a thread, until the batch has rows
//! for it. This is the one count of waiting prompts: past `--max-queue`, requests get 429.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

pub struct Queue(Arc<Inner>);

struct Inner {
    /// One permit per batch row; a prompt holds its rows from admission to its end.
    rows: Arc<Semaphore>,
    total_rows: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Prompts of one request counted as waiting until each is admitted (or the request ends).
pub struct Tickets {
    queue: Arc<Inner>,
    left: AtomicUsize,
}

impl Queue {
    pub fn new(rows: usize, max_waiting: usize) -> Queue {
        Queue(Arc::new(Inner {
            rows: Arc::new(Semaphore::new(rows)),
            total_rows: rows,
            waiting: AtomicUsize::new(0),
            max_waiting,
        }))
    }

    /// Prompts waiting for rows.
    pub fn waiting(&self) -> usize {
        self.0.waiting.load(Ordering::SeqCst)
    }

    /// Rows held by admitted prompts.
    pub fn rows_in_use(&self) -> usize {
        self.0.total_rows.saturating_sub(self.0.rows.available_permits())
    }

    /// Counts `prompts` as waiting, or refuses them all with 429 when the queue is full.
    pub fn enter(&self, prompts: usize) -> Result<Tickets, ApiError> {
        let q = &self.0;
        let before = q.waiting.fetch_add(prompts, Ordering::SeqCst);
        if before + prompts > q.max_waiting {
            q.waiting.fetch_sub(prompts, Ordering::SeqCst);
            return Err(ApiError::queue_full(q.max_waiting));
        }
        Ok(Tickets { queue: self.0.clone(), left: AtomicUsize::new(prompts) })
    }
}

impl Tickets {
    /// Waits (first come, first served) for `rows` rows for one prompt, which then no longer
    /// counts as waiting.
    pub async fn admit(&self, rows: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        let n = u32::try_from(rows).map_err(|_| ApiError::internal("too many rows"))?;
        let permit = self.queue.rows.clone().acquire_many_owned(n).await;
        self.leave_one();
        permit.map_err(|_| ApiError::unavailable("the server is shutting down"))
    }

    fn leave_one(&self) {
        let took = self.left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1)).is_ok();
        if took {
            self.queue.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Tickets {
    fn drop(&mut self) {
        let left = self.left.swap(0, Ordering::SeqCst);
        self.queue.waiting.fetch_sub(left, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_prompts_are_counted_once_and_refused_past_the_limit() {
        let q = Queue::new(2, 3);
        let a = q.enter(2).unwrap();
        assert_eq!(q.waiting(), 2);
        assert_eq!(q.enter(2).err().map(|e| e.status.as_u16()), Some(429));
        let held = a.admit(2).await.unwrap();
        assert_eq!((q.waiting(), q.rows_in_use()), (1, 2));
        // The second prompt waits for rows without a thread; the request ending forgets it.
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), a.admit(1)).await;
        assert!(pending.is_err(), "no row was free");
        drop(a);
        assert_eq!(q.waiting(), 0);
        drop(held);
        assert_eq!(q.rows_in_use(), 0);
    }
}
