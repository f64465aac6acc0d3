//! The tasks a worker has in flight, and the ones whose `Task<Running>`
//! handle went away without a finish.
//!
//! Every [`Task<Running>`](crate::Task) carries a ticket issued by its
//! worker's [`InFlightTasks`]. A finish settles the ticket; dropping the
//! handle without a finish (a panic unwinding through the handler, a
//! cancelled future, an early `?` return) drops the ticket unsettled, which
//! moves the task to the abandoned list and wakes the worker. No IO happens
//! in `Drop`: the worker interrupts abandoned rows at its next tick
//! ([`RegisteredWorker::interrupt_abandoned`](crate::RegisteredWorker::interrupt_abandoned)).
//!
//! A worker that is itself killed runs no `Drop` at all; its rows are left to
//! the dead-worker sweep of another worker, as before.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::clock::Timestamp;
use crate::ids::TaskId;

type Waker = Box<dyn Fn() + Send + Sync>;

/// One worker's in-flight bookkeeping. Shared by the worker and the tickets
/// of its running tasks.
#[derive(Default)]
pub(crate) struct InFlightTasks {
    state: Mutex<InFlightState>,
    waker: Mutex<Option<Waker>>,
}

#[derive(Debug, Default)]
struct InFlightState {
    running: BTreeSet<TaskId>,
    abandoned: Vec<AbandonedTask>,
}

/// A task whose handle was dropped without a finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AbandonedTask {
    pub(crate) id: TaskId,
    /// Set once the interrupting UPDATE committed, while its `[recovery]`
    /// report still has to be built (the row could not be read back yet).
    pub(crate) interrupted: Option<(Timestamp, u32)>,
}

impl fmt::Debug for InFlightTasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlightTasks")
            .field("state", &*self.lock())
            .finish_non_exhaustive()
    }
}

impl InFlightTasks {
    fn lock(&self) -> MutexGuard<'_, InFlightState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_waker(&self, waker: Waker) {
        *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker);
    }

    fn wake(&self) {
        if let Some(waker) = &*self.waker.lock().unwrap_or_else(PoisonError::into_inner) {
            waker();
        }
    }

    /// Ids of the tasks started and neither finished nor abandoned.
    pub(crate) fn running(&self) -> Vec<TaskId> {
        self.lock().running.iter().copied().collect()
    }

    /// Ids of the abandoned tasks not yet interrupted and reported.
    pub(crate) fn abandoned(&self) -> Vec<TaskId> {
        self.lock().abandoned.iter().map(|task| task.id).collect()
    }

    pub(crate) fn take_abandoned(&self) -> Vec<AbandonedTask> {
        std::mem::take(&mut self.lock().abandoned)
    }

    /// Puts back abandoned tasks a tick could not finish handling.
    pub(crate) fn requeue_abandoned(&self, tasks: impl IntoIterator<Item = AbandonedTask>) {
        self.lock().abandoned.extend(tasks);
    }

    /// Forgets a running task (its row is no longer this worker's concern).
    pub(crate) fn forget(&self, id: TaskId) {
        self.lock().running.remove(&id);
    }
}

/// The in-flight ticket a `Task<Running>` carries. Settled by a finish;
/// dropped unsettled, it reports the task abandoned.
pub(crate) struct InFlightTicket {
    tasks: Arc<InFlightTasks>,
    id: TaskId,
    settled: bool,
}

impl InFlightTicket {
    pub(crate) fn issue(tasks: &Arc<InFlightTasks>, id: TaskId) -> Self {
        tasks.lock().running.insert(id);
        Self {
            tasks: Arc::clone(tasks),
            id,
            settled: false,
        }
    }

    /// The finish reached the row (it updated it, or found it no longer
    /// this worker's): nothing is left to do for this task.
    pub(crate) fn settle(mut self) {
        self.settled = true;
        self.tasks.forget(self.id);
    }
}

impl fmt::Debug for InFlightTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlightTicket")
            .field("id", &self.id)
            .field("settled", &self.settled)
            .finish()
    }
}

impl Drop for InFlightTicket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        {
            let mut state = self.tasks.lock();
            // A task the worker already interrupted (at stop) is not running
            // any more: nothing to report.
            if !state.running.remove(&self.id) {
                return;
            }
            state.abandoned.push(AbandonedTask {
                id: self.id,
                interrupted: None,
            });
        }
        self.tasks.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn abandoned_tasks_taken_and_put_back_are_abandoned_again() {
        let tasks = Arc::new(InFlightTasks::default());
        let id = TaskId::new_random();
        drop(InFlightTicket::issue(&tasks, id));
        let taken = tasks.take_abandoned();
        assert_eq!(
            taken.iter().map(|task| task.id).collect::<Vec<_>>(),
            vec![id]
        );
        assert!(tasks.abandoned().is_empty());
        tasks.requeue_abandoned(taken);
        assert_eq!(tasks.abandoned(), vec![id]);
    }

    #[test]
    fn a_ticket_shows_its_task_and_whether_it_is_settled() {
        let tasks = Arc::new(InFlightTasks::default());
        let id = TaskId::new_random();
        let ticket = InFlightTicket::issue(&tasks, id);
        assert_eq!(
            format!("{ticket:?}"),
            format!("InFlightTicket {{ id: {id:?}, settled: false }}")
        );
        ticket.settle();
    }

    #[test]
    fn the_debug_output_shows_the_state() {
        let shown = format!("{:?}", InFlightTasks::default());
        assert!(shown.starts_with("InFlightTasks {"), "{shown}");
        assert!(shown.contains("running: {}"), "{shown}");
        assert!(shown.contains("abandoned: []"), "{shown}");
    }

    #[test]
    fn a_settled_ticket_leaves_nothing_behind_and_an_unsettled_one_is_abandoned_once() {
        let tasks = Arc::new(InFlightTasks::default());
        let woken = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&woken);
        tasks.set_waker(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        let finished = TaskId::new_time_ordered();
        let dropped = TaskId::new_time_ordered();
        let settled = InFlightTicket::issue(&tasks, finished);
        let unsettled = InFlightTicket::issue(&tasks, dropped);
        assert_eq!(tasks.running().len(), 2);

        settled.settle();
        assert_eq!(tasks.running(), vec![dropped]);
        assert!(tasks.abandoned().is_empty());
        assert_eq!(woken.load(Ordering::SeqCst), 0);

        drop(unsettled);
        assert!(tasks.running().is_empty());
        assert_eq!(tasks.abandoned(), vec![dropped]);
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        assert_eq!(tasks.take_abandoned().len(), 1);
        assert!(tasks.abandoned().is_empty());
    }

    #[test]
    fn dropping_a_ticket_whose_task_was_already_forgotten_reports_nothing() {
        let tasks = Arc::new(InFlightTasks::default());
        let id = TaskId::new_time_ordered();
        let ticket = InFlightTicket::issue(&tasks, id);
        tasks.forget(id);
        drop(ticket);
        assert!(tasks.abandoned().is_empty());
    }
}
