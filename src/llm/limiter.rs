//! A concurrency limit with two queueing classes. Interactive waiters are always served
//! before background ones, and `reserved` slots can only go to interactive calls, so a job
//! that saturates the upstream never makes a rerank wait for a whole LLM call.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::Priority;

/// The limiter; share it with `Arc`.
#[derive(Debug)]
pub struct PriorityLimiter {
    capacity: usize,
    reserved: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    available: usize,
    interactive: VecDeque<oneshot::Sender<Permit>>,
    background: VecDeque<oneshot::Sender<Permit>>,
}

/// A held slot; dropping it hands the slot to the next waiter.
#[derive(Debug)]
pub struct Permit {
    limiter: Option<Arc<PriorityLimiter>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(l) = self.limiter.take() {
            l.release();
        }
    }
}

impl PriorityLimiter {
    /// `capacity` concurrent calls, of which `reserved` only for interactive ones
    /// (clamped so background work always has at least one slot).
    pub fn new(capacity: usize, reserved: usize) -> Arc<Self> {
        let capacity = capacity.max(1);
        let reserved = reserved.min(capacity - 1);
        Arc::new(PriorityLimiter {
            capacity,
            reserved,
            state: Mutex::new(State {
                available: capacity,
                interactive: VecDeque::new(),
                background: VecDeque::new(),
            }),
        })
    }

    /// Total slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.lock().available
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a slot. Cancel-safe: a slot handed to a dropped waiter is passed on.
    pub async fn acquire(self: &Arc<Self>, priority: Priority) -> Permit {
        let rx = {
            let mut st = self.lock();
            let can_take = match priority {
                Priority::Interactive => st.available > 0,
                Priority::Background => st.available > self.reserved && st.interactive.is_empty(),
            };
            if can_take {
                st.available -= 1;
                return Permit {
                    limiter: Some(self.clone()),
                };
            }
            let (tx, rx) = oneshot::channel();
            match priority {
                Priority::Interactive => st.interactive.push_back(tx),
                Priority::Background => st.background.push_back(tx),
            }
            rx
        };
        match rx.await {
            Ok(permit) => permit,
            // The limiter dropped our sender without a slot: cannot happen while `self` lives.
            Err(_) => Permit { limiter: None },
        }
    }

    fn release(self: Arc<Self>) {
        let mut st = self.lock();
        loop {
            // Interactive waiters first; background ones only beyond the reserve.
            let next = match st.interactive.pop_front() {
                Some(tx) => Some(tx),
                None if st.available >= self.reserved => st.background.pop_front(),
                None => None,
            };
            let Some(tx) = next else {
                st.available += 1;
                return;
            };
            match tx.send(Permit {
                limiter: Some(self.clone()),
            }) {
                Ok(()) => return,
                Err(mut permit) => {
                    // That waiter is gone: keep the slot and try the next one.
                    permit.limiter = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn limit_holds_and_slots_return() {
        let l = PriorityLimiter::new(2, 0);
        let a = l.acquire(Priority::Background).await;
        let _b = l.acquire(Priority::Background).await;
        assert_eq!(l.available(), 0);
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire(Priority::Background).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(l.available(), 0);
    }

    #[tokio::test]
    async fn interactive_waiters_go_first_and_reserve_is_kept() {
        let l = PriorityLimiter::new(3, 1);
        // Background may take only capacity - reserved = 2 slots.
        let b1 = l.acquire(Priority::Background).await;
        let _b2 = l.acquire(Priority::Background).await;
        let l2 = l.clone();
        let b3 = tokio::spawn(async move { l2.acquire(Priority::Background).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !b3.is_finished(),
            "the reserved slot is not for background work"
        );
        // An interactive call gets the reserved slot at once.
        let i1 = tokio::time::timeout(Duration::from_millis(100), l.acquire(Priority::Interactive))
            .await
            .unwrap();
        // Now everything is taken; queue an interactive waiter behind the background one.
        let l3 = l.clone();
        let i2 = tokio::spawn(async move { l3.acquire(Priority::Interactive).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(b1);
        let _i2 = tokio::time::timeout(Duration::from_secs(1), i2)
            .await
            .unwrap()
            .unwrap();
        assert!(!b3.is_finished(), "the interactive waiter was served first");
        drop(i1);
        // Freed slot is the reserved one: background still waits...
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!b3.is_finished());
        drop(_b2);
        // ...until a non-reserved slot frees.
        tokio::time::timeout(Duration::from_secs(1), b3)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn cancelled_waiters_do_not_leak_slots() {
        let l = PriorityLimiter::new(1, 0);
        let p = l.acquire(Priority::Interactive).await;
        let l2 = l.clone();
        let w = tokio::spawn(async move { l2.acquire(Priority::Interactive).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        w.abort();
        let _ = w.await;
        drop(p);
        assert_eq!(l.available(), 1);
        let _again =
            tokio::time::timeout(Duration::from_millis(100), l.acquire(Priority::Background))
                .await
                .unwrap();
    }
}
