//! Waiting for a condition: the one polling loop of this crate (a check
//! every so often until it yields a value or a deadline passes), and the
//! interrupt flag every wait honours, so that a lab interrupted by Ctrl-C
//! stops waiting and its Drop guards get to clean up.
//!
//! It is not a scheduler or an async executor: a wait blocks its thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often [`wait_for`] checks.
pub const DEFAULT_EVERY: Duration = Duration::from_millis(10);

/// Set by [`install_interrupt_handler`] on SIGINT/SIGTERM; every wait gives
/// up with [`WaitError::Interrupted`] once it is set.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into [`INTERRUPTED`] (for binaries that own
/// namespaces and processes: the waits end and Drop guards clean up).
pub fn install_interrupt_handler() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Whether SIGINT or SIGTERM arrived (after [`install_interrupt_handler`]).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Why a wait ended without a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("interrupted while waiting for {what}")]
    Interrupted { what: String },
}

/// Calls `check` every `every` until it returns `Some`, for at most
/// `timeout` (it is called at least once, and once more at the deadline).
/// An error from `check` ends the wait at once.
pub fn wait_until<T, E: From<WaitError>>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<Option<T>, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    loop {
        if interrupted() {
            return Err(WaitError::Interrupted {
                what: what.to_string(),
            }
            .into());
        }
        let last_chance = Instant::now() >= deadline;
        if let Some(v) = check()? {
            return Ok(v);
        }
        if last_chance {
            return Err(WaitError::Timeout {
                what: what.to_string(),
                after: timeout,
            }
            .into());
        }
        std::thread::sleep(every.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// [`wait_until`] for a check that cannot fail, every [`DEFAULT_EVERY`].
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, WaitError> {
    wait_until(what, timeout, DEFAULT_EVERY, || Ok(check()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_the_check_yields_it() {
        let mut n = 0;
        let v = wait_for("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(v, Ok(3));
    }

    #[test]
    fn times_out_after_checking_at_the_deadline() {
        let mut calls = 0;
        let started = Instant::now();
        let r = wait_until::<(), WaitError>(
            "nothing",
            Duration::from_millis(50),
            Duration::from_millis(20),
            || {
                calls += 1;
                Ok(None)
            },
        );
        assert!(matches!(r, Err(WaitError::Timeout { .. })), "{r:?}");
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(calls >= 3, "{calls} checks");
    }

    #[derive(Debug, PartialEq)]
    enum CheckError {
        Broken,
        Wait(WaitError),
    }

    impl From<WaitError> for CheckError {
        fn from(e: WaitError) -> Self {
            CheckError::Wait(e)
        }
    }

    #[test]
    fn an_error_of_the_check_ends_the_wait() {
        let r: Result<(), CheckError> = wait_until(
            "a broken check",
            Duration::from_secs(5),
            Duration::from_millis(1),
            || Err(CheckError::Broken),
        );
        assert_eq!(r, Err(CheckError::Broken));
    }
}
