//! Waiting with deadlines. Every wait names what it waited for and, when it gives
//! up, the last state it saw.
//!
//! Layer 0: imports only `error`.

use std::future::Future;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
#[error("timed out after {}s waiting for {what}; last seen: {last}", .after.as_secs())]
pub struct WaitError {
    pub what: String,
    pub after: Duration,
    pub last: String,
}

/// Poll `check` until it returns Ok or `timeout` passes. `check` returns Err(state)
/// while the condition does not hold; that state is reported on timeout. Polls
/// every 200 ms at first, then less often (up to every second).
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, check: F) -> Result<T, WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    poll(
        what,
        timeout,
        Duration::from_millis(200),
        Duration::from_secs(1),
        check,
    )
    .await
}

/// `until` polling every `every`, without backing off: for a wait that clients
/// sit through (paused poolers), where each poll's lateness is theirs.
pub async fn until_every<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    check: F,
) -> Result<T, WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    poll(what, timeout, every, every, check).await
}

async fn poll<T, F, Fut>(
    what: &str,
    timeout: Duration,
    first: Duration,
    most: Duration,
    mut check: F,
) -> Result<T, WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut interval = first;
    loop {
        let last = match check().await {
            Ok(v) => return Ok(v),
            Err(state) => state,
        };
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Err(WaitError {
                what: what.to_string(),
                after: elapsed,
                last,
            });
        }
        tracing::debug!("waiting for {what}: {last}");
        tokio::time::sleep(interval.min(timeout - elapsed)).await;
        interval = (interval * 3 / 2).min(most);
    }
}

impl From<WaitError> for crate::error::Failure {
    fn from(e: WaitError) -> Self {
        crate::error::Failure::error(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_the_value_once_the_condition_holds() {
        let n = AtomicU32::new(0);
        let v = until("the third try", Duration::from_secs(10), || async {
            let i = n.fetch_add(1, Ordering::SeqCst);
            if i >= 2 {
                Ok(i)
            } else {
                Err(format!("try {i}"))
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 2);
    }

    #[tokio::test]
    async fn timeout_names_what_and_the_last_state() {
        let e = until::<(), _, _>("etcd quorum", Duration::from_millis(300), || async {
            Err("2 of 3 endpoints healthy".to_string())
        })
        .await
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("waiting for etcd quorum"), "{msg}");
        assert!(
            msg.ends_with("last seen: 2 of 3 endpoints healthy"),
            "{msg}"
        );
    }
}
