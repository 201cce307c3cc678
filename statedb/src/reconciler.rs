//! A generic reconciler: pushes the rows of a table into some target (for
//! the agent: an eBPF map) and writes each row's outcome back as its
//! [`Status`].
//!
//! Shape follows cilium/statedb's reconciler: writers insert rows with
//! [`Status::Pending`]; the reconciler follows the table's changes and calls
//! [`Target::update`] for pending rows and [`Target::delete`] for deleted
//! ones, then writes [`Status::Done`] or [`Status::Error`]. Rows that are
//! done or failed are skipped when they show up in the change stream, so
//! the reconciler's own status writes do not trigger more work; failures
//! are retried from an in-memory queue with capped exponential backoff. A
//! full pass ([`Target::prune`] with every row, then `update` of every row)
//! runs at start and on an interval to repair drift in the target.
//!
//! It does not decide what is desired, and it does not own the target's
//! state: `update`, `delete` and `prune` must be idempotent.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::table::{Changes, Row, Table};
use crate::{Db, Error, Revision};

/// Where a row stands with its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Status {
    /// Written and waiting to be pushed to the target.
    #[default]
    Pending,
    /// The target holds the row as written.
    Done,
    /// The last push failed; it is retried.
    Error { message: String, attempts: u32 },
}

impl Status {
    pub fn is_pending(&self) -> bool {
        matches!(self, Status::Pending)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Pending => f.write_str("pending"),
            Status::Done => f.write_str("done"),
            Status::Error { message, attempts } => {
                write!(f, "error (attempt {attempts}): {message}")
            }
        }
    }
}

/// A row that carries its own reconciliation status.
pub trait Reconcilable: Row {
    fn status(&self) -> &Status;
    fn set_status(&mut self, status: Status);
}

/// What rows are reconciled into. Every operation must be idempotent.
pub trait Target<R>: Send {
    type Error: fmt::Display;
    /// Make the target hold `row` (create or update).
    fn update(&mut self, row: &R) -> Result<(), Self::Error>;
    /// Remove `row` from the target; a row it does not hold is not an error.
    fn delete(&mut self, row: &R) -> Result<(), Self::Error>;
    /// Remove from the target everything that is not in `desired` (every
    /// row of the table).
    fn prune(&mut self, desired: &[R]) -> Result<(), Self::Error>;
}

/// Timing of a [`Reconciler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcilerConfig {
    /// Time between full passes.
    pub full_interval: Duration,
    /// Delay before the first retry of a failed operation; doubles with
    /// each further failure...
    pub retry_min: Duration,
    /// ...up to this.
    pub retry_max: Duration,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            full_interval: Duration::from_secs(60),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(60),
        }
    }
}

impl ReconcilerConfig {
    /// The delay before retry number `attempts` (1 = first failure).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.retry_min
            .saturating_mul(1u32 << doublings)
            .min(self.retry_max)
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Successful `update` calls.
    pub updated: usize,
    /// Successful `delete` calls.
    pub deleted: usize,
    /// Successful `prune` calls.
    pub pruned: usize,
    /// Failed calls of any kind.
    pub errors: usize,
}

impl std::ops::AddAssign for Round {
    fn add_assign(&mut self, other: Round) {
        self.updated += other.updated;
        self.deleted += other.deleted;
        self.pruned += other.pruned;
        self.errors += other.errors;
    }
}

enum RetryOp<R> {
    Update,
    /// The row as it was deleted.
    Delete(R),
}

struct Retry<R> {
    attempts: u32,
    due: Instant,
    op: RetryOp<R>,
}

/// The outcome of one `update`, to be written back as status.
struct UpdateOutcome {
    pk: Vec<u8>,
    revision: Revision,
    attempts_before: u32,
    result: Result<(), String>,
}

/// Reconciles one table into one target. Drive it step by step
/// ([`reconcile_incremental`](Self::reconcile_incremental),
/// [`reconcile_full`](Self::reconcile_full), [`next_wakeup`](Self::next_wakeup))
/// from an actor, or hand it to a task with [`run`](Self::run).
pub struct Reconciler<R: Reconcilable, T: Target<R>> {
    db: Db,
    table: Table<R>,
    target: T,
    config: ReconcilerConfig,
    changes: Changes<R>,
    retries: HashMap<Vec<u8>, Retry<R>>,
    /// Attempts and due time of a failed prune, retried as a full pass.
    prune_retry: Option<(u32, Instant)>,
    /// Fired by the owner when something the target depends on changed
    /// (not the table itself): [`run`](Self::run) then does a full pass.
    full_trigger: Option<Arc<Notify>>,
}

impl<R: Reconcilable, T: Target<R>> Reconciler<R, T> {
    /// Registers a change reader on `table`; nothing runs until a step or
    /// [`run`](Self::run) is called.
    pub fn new(db: &Db, table: &Table<R>, target: T, config: ReconcilerConfig) -> Self {
        Reconciler {
            db: db.clone(),
            changes: table.changes(db),
            table: table.clone(),
            target,
            config,
            retries: HashMap::new(),
            prune_retry: None,
            full_trigger: None,
        }
    }

    /// Makes [`run`](Self::run) do a full pass whenever `trigger` is
    /// notified, e.g. when a table the target reads from changes. Several
    /// notifications during one pass cause one more pass, not several.
    pub fn with_full_trigger(mut self, trigger: Arc<Notify>) -> Self {
        self.full_trigger = Some(trigger);
        self
    }

    pub fn target(&self) -> &T {
        &self.target
    }

    pub fn target_mut(&mut self) -> &mut T {
        &mut self.target
    }

    /// When the earliest queued retry is due, if any.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retries
            .values()
            .map(|r| r.due)
            .chain(self.prune_retry.map(|(_, due)| due))
            .min()
    }

    /// Number of queued retries (rows, plus one for a failed prune).
    pub fn pending_retries(&self) -> usize {
        self.retries.len() + usize::from(self.prune_retry.is_some())
    }

    /// Waits until the table has changes this reconciler has not processed.
    pub async fn changed(&mut self) {
        self.changes.wait().await
    }

    /// Processes the changes since the previous step (updates of pending
    /// rows, deletes) and the retries that are due, then writes statuses.
    pub fn reconcile_incremental(&mut self) -> Result<Round, Error> {
        let mut round = Round::default();
        let mut outcomes = Vec::new();
        for change in self.changes.next_batch()? {
            let pk = self.table.primary_key(&change.row);
            if change.deleted {
                self.retries.remove(&pk);
                self.delete(pk, change.row, 0, &mut round);
                continue;
            }
            if !change.row.status().is_pending() {
                // Done, or failed and queued for retry: nothing new.
                continue;
            }
            self.retries.remove(&pk);
            let result = self.target.update(&change.row).map_err(|e| e.to_string());
            outcomes.push(UpdateOutcome {
                pk,
                revision: change.revision,
                attempts_before: 0,
                result,
            });
        }

        let now = Instant::now();
        let due: Vec<Vec<u8>> = self
            .retries
            .iter()
            .filter(|(_, r)| r.due <= now)
            .map(|(pk, _)| pk.clone())
            .collect();
        let primary = self.table.primary_index();
        for pk in due {
            let Some(retry) = self.retries.remove(&pk) else {
                continue;
            };
            let current = self.table.get(&self.db, primary, &pk)?;
            match (retry.op, current) {
                (RetryOp::Delete(row), None) => self.delete(pk, row, retry.attempts, &mut round),
                // Inserted again since: the update path owns it now.
                (RetryOp::Delete(_), Some(_)) => {}
                (RetryOp::Update, Some(entry)) if entry.row.status() != &Status::Done => {
                    let result = self.target.update(&entry.row).map_err(|e| e.to_string());
                    outcomes.push(UpdateOutcome {
                        pk,
                        revision: entry.revision,
                        attempts_before: retry.attempts,
                        result,
                    });
                }
                // Deleted (the delete path owns it) or done meanwhile.
                (RetryOp::Update, _) => {}
            }
        }
        self.write_status(outcomes, &mut round)?;

        if self.prune_retry.is_some_and(|(_, due)| due <= now) {
            round += self.reconcile_full()?;
        }
        Ok(round)
    }

    /// Prunes the target down to the table's rows and updates every row,
    /// whatever its status, then writes statuses. Rows whose status does
    /// not change are not rewritten.
    pub fn reconcile_full(&mut self) -> Result<Round, Error> {
        let mut round = Round::default();
        let entries = self.table.list(&self.db)?;
        let rows: Vec<R> = entries.iter().map(|e| e.row.clone()).collect();
        match self.target.prune(&rows) {
            Ok(()) => {
                round.pruned += 1;
                self.prune_retry = None;
                // Pruning removed whatever deletes were waiting for a retry.
                self.retries
                    .retain(|_, r| !matches!(r.op, RetryOp::Delete(_)));
            }
            Err(e) => {
                round.errors += 1;
                let attempts = self.prune_retry.map_or(0, |(a, _)| a) + 1;
                tracing::warn!(table = self.table.name(), error = %e, attempts, "prune failed");
                self.prune_retry = Some((attempts, Instant::now() + self.config.backoff(attempts)));
            }
        }
        let mut outcomes = Vec::with_capacity(entries.len());
        for entry in entries {
            let pk = self.table.primary_key(&entry.row);
            self.retries.remove(&pk);
            let attempts_before = match entry.row.status() {
                Status::Error { attempts, .. } => *attempts,
                _ => 0,
            };
            let result = self.target.update(&entry.row).map_err(|e| e.to_string());
            outcomes.push(UpdateOutcome {
                pk,
                revision: entry.revision,
                attempts_before,
                result,
            });
        }
        self.write_status(outcomes, &mut round)?;
        Ok(round)
    }

    /// Runs until `shutdown` resolves: a full pass at start, every
    /// `full_interval` and when the [full trigger](Self::with_full_trigger)
    /// fires, an incremental step on every change and when a retry is due.
    /// Returns early only on a database error.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let mut shutdown = std::pin::pin!(shutdown);
        tracing::debug!(table = self.table.name(), "reconciler started");
        let trigger = self.full_trigger.clone();
        self.reconcile_full()?;
        self.reconcile_incremental()?;
        let mut next_full = Instant::now() + self.config.full_interval;
        loop {
            let wake = self.next_retry().map_or(next_full, |r| r.min(next_full));
            let triggered = async {
                match &trigger {
                    Some(t) => t.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.changes.wait() => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = triggered => next_full = Instant::now(),
            }
            if Instant::now() >= next_full {
                self.reconcile_full()?;
                next_full = Instant::now() + self.config.full_interval;
            }
            self.reconcile_incremental()?;
        }
        tracing::debug!(table = self.table.name(), "reconciler stopped");
        Ok(())
    }

    fn delete(&mut self, pk: Vec<u8>, row: R, attempts_before: u32, round: &mut Round) {
        match self.target.delete(&row) {
            Ok(()) => round.deleted += 1,
            Err(e) => {
                round.errors += 1;
                let attempts = attempts_before + 1;
                tracing::warn!(table = self.table.name(), error = %e, attempts, "delete failed");
                self.schedule(pk, attempts, RetryOp::Delete(row));
            }
        }
    }

    fn schedule(&mut self, pk: Vec<u8>, attempts: u32, op: RetryOp<R>) {
        let due = Instant::now() + self.config.backoff(attempts);
        self.retries.insert(pk, Retry { attempts, due, op });
    }

    /// Writes Done/Error for rows not changed since they were pushed, and
    /// queues retries for the failures.
    fn write_status(
        &mut self,
        outcomes: Vec<UpdateOutcome>,
        round: &mut Round,
    ) -> Result<(), Error> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let primary = self.table.primary_index();
        // Its own handle, so that retries can be scheduled while the
        // transaction is open.
        let db = self.db.clone();
        let mut txn = db.write_txn();
        // Failures whose statuses are not committed yet: their retries are
        // scheduled once they are (a later step may fail).
        let mut failed = Vec::new();
        for outcome in outcomes {
            let status = match outcome.result {
                Ok(()) => {
                    round.updated += 1;
                    Status::Done
                }
                Err(message) => {
                    round.errors += 1;
                    let attempts = outcome.attempts_before + 1;
                    tracing::warn!(table = self.table.name(), error = %message, attempts, "update failed");
                    Status::Error { message, attempts }
                }
            };
            let Some(current) = self.table.get(&txn, primary, &outcome.pk)? else {
                continue; // deleted meanwhile: its delete comes as a change
            };
            if current.revision != outcome.revision {
                continue; // rewritten meanwhile: its change comes next
            }
            if let Status::Error { attempts, .. } = &status {
                failed.push((outcome.pk, *attempts));
            }
            if current.row.status() != &status {
                let mut row = current.row;
                row.set_status(status);
                self.table.insert(&mut txn, row)?;
                // Each status stands alone: a large round is committed in
                // steps, which keeps sled's memory down.
                if txn.checkpoint_when_full()? {
                    self.schedule_retries(&mut failed);
                }
            }
        }
        txn.commit()?;
        self.schedule_retries(&mut failed);
        Ok(())
    }

    fn schedule_retries(&mut self, failed: &mut Vec<(Vec<u8>, u32)>) {
        for (pk, attempts) in failed.drain(..) {
            self.schedule(pk, attempts, RetryOp::Update);
        }
    }
}

#[cfg(test)]
#[path = "reconciler_tests.rs"]
mod tests;
