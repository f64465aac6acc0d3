//! The task list's status counts as a shared snapshot, the way Oban Web or
//! Sidekiq's Web UI keep theirs: counted in the background, never per page
//! view.
//!
//! One snapshot per filter ([`CountsKey`]: every row, or one repo; at most
//! [`MAX_REPO_KEYS`] repos, the most recently asked), each with the time it
//! was counted. A page view shows the snapshot it finds. When that is older
//! than the max age (`--dashboard-counts-max-age`), the view starts one
//! refresh on the blocking pool and still renders with what it has: views
//! arriving while a count runs start none (single flight, per key). Only
//! the first view of a key, with nothing counted yet, waits for its count.
//! A failed count keeps the last snapshot, and the page says it is stale.
//! The count is always [`Storage::count_tasks_by_status`]: the same query
//! as before, off the request path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tasktrail::prelude::*;
use tasktrail::{Clock, Timestamp};
use tokio::sync::watch;

/// How old the counts may be before a page view starts a new count, unless
/// `--dashboard-counts-max-age` says otherwise.
pub const DEFAULT_COUNTS_MAX_AGE: Duration = Duration::from_secs(5);

/// How many repos' snapshots are kept: the most recently asked.
pub const MAX_REPO_KEYS: usize = 64;

/// Which rows a snapshot counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CountsKey {
    /// Every row.
    All,
    /// The rows of one `owner/name`.
    Repo(String),
}

impl CountsKey {
    /// The key of a page filtered by `repo` (or not).
    pub fn of(repo: Option<&str>) -> Self {
        match repo {
            Some(repo) => Self::Repo(repo.to_owned()),
            None => Self::All,
        }
    }

    fn repo(&self) -> Option<&str> {
        match self {
            Self::All => None,
            Self::Repo(repo) => Some(repo),
        }
    }
}

/// One successful count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCounts {
    /// Rows of every status.
    pub counts: Vec<(TaskStatus, u64)>,
    /// When the count ended.
    pub counted_at: Timestamp,
}

/// What a page shows of its counts.
#[derive(Debug, Clone)]
pub struct CountsView {
    /// The latest successful count; `None` when none has succeeded yet.
    pub counted: Option<StatusCounts>,
    /// Why the latest count failed, when it failed after `counted` (the
    /// numbers shown are then stale).
    pub failure: Option<String>,
    /// When the page was rendered (the counts' age is measured to it).
    pub shown_at: Timestamp,
}

impl CountsView {
    /// Whether the numbers shown are known to be out of date: the last
    /// count failed.
    pub fn is_stale(&self) -> bool {
        self.failure.is_some()
    }
}

#[derive(Debug)]
struct Entry {
    counted: Option<StatusCounts>,
    failure: Option<String>,
    /// When the last count ended, successful or not (a failing store is
    /// asked again once per max age, not on every view).
    attempted_at: Option<Timestamp>,
    /// Whether a count of this key is running (the single-flight flag).
    refreshing: bool,
    /// How many counts of this key ended (first views wait for the next).
    attempts_finished: u64,
    /// The tick of the last view that asked (the bound keeps the newest).
    last_asked: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<CountsKey, Entry>,
    ticks: u64,
}

/// What a view does, decided under the lock.
#[derive(Debug)]
enum Step {
    /// Render with this.
    Show(CountsView),
    /// Render with this, and start the one refresh of the key.
    ShowAndRefresh(CountsView),
    /// Nothing counted yet: wait for the count that ends after
    /// `attempts_finished` (starting it when `start`).
    Wait { attempts_finished: u64, start: bool },
}

/// The counts snapshots of one dashboard.
#[derive(Debug)]
pub struct CountsSnapshots {
    max_age: Duration,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Bumped whenever a count ends: first views wait on it.
    finished: watch::Sender<u64>,
}

impl CountsSnapshots {
    /// Snapshots older than `max_age` (on `clock`) are counted again.
    pub fn new(max_age: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            max_age,
            clock,
            state: Mutex::new(State::default()),
            finished: watch::Sender::new(0),
        }
    }

    /// How old the counts may get before a view starts a new count.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The counts of `repo`'s rows (every row with `None`) for one page
    /// view, counted in `storage` when stale (in the background) or when
    /// never counted (waited for).
    pub async fn view(
        self: &Arc<Self>,
        storage: &Arc<dyn Storage>,
        repo: Option<&str>,
    ) -> CountsView {
        let key = CountsKey::of(repo);
        let mut waited_past: Option<u64> = None;
        loop {
            // Subscribed before deciding: a count ending in between is seen.
            let mut finished = self.finished.subscribe();
            match self.step(&key, waited_past) {
                Step::Show(view) => return view,
                Step::ShowAndRefresh(view) => {
                    self.spawn_count(Arc::clone(storage), key);
                    return view;
                }
                Step::Wait {
                    attempts_finished,
                    start,
                } => {
                    if start {
                        self.spawn_count(Arc::clone(storage), key.clone());
                    }
                    waited_past = Some(attempts_finished);
                    // The sender lives as long as `self`: this never errs.
                    let _ = finished.changed().await;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The decision of one view: touches the key (making it the most
    /// recently asked), keeps the bound, and claims the refresh when one is
    /// due and none runs.
    fn step(&self, key: &CountsKey, waited_past: Option<u64>) -> Step {
        let now = self.clock.now();
        let mut state = self.lock();
        state.ticks += 1;
        let tick = state.ticks;
        let entry = state.entries.entry(key.clone()).or_insert_with(|| Entry {
            counted: None,
            failure: None,
            attempted_at: None,
            refreshing: false,
            attempts_finished: 0,
            last_asked: tick,
        });
        entry.last_asked = tick;
        let view = CountsView {
            counted: entry.counted.clone(),
            failure: entry.failure.clone(),
            shown_at: now,
        };
        let step = if entry.counted.is_some() {
            let due = entry
                .attempted_at
                .is_none_or(|at| age(at, now) >= self.max_age);
            if due && !entry.refreshing {
                entry.refreshing = true;
                Step::ShowAndRefresh(view)
            } else {
                Step::Show(view)
            }
        } else if waited_past.is_some_and(|past| entry.attempts_finished > past) {
            // The count this view waited for failed: the rows render
            // without counts, and say why.
            Step::Show(view)
        } else {
            let start = !entry.refreshing;
            entry.refreshing = true;
            Step::Wait {
                attempts_finished: entry.attempts_finished,
                start,
            }
        };
        evict_beyond_bound(&mut state, key);
        step
    }

    /// Counts `key` on the blocking pool; the result lands in the snapshot
    /// whatever happens (a panic included), and waiting views are woken.
    fn spawn_count(self: &Arc<Self>, storage: Arc<dyn Storage>, key: CountsKey) {
        let landing = Landing {
            snapshots: Arc::clone(self),
            key,
            result: None,
        };
        tokio::task::spawn_blocking(move || {
            let mut landing = landing;
            landing.result = Some(storage.count_tasks_by_status(landing.key.repo()));
        });
    }

    fn land(&self, key: &CountsKey, result: Option<Result<Vec<(TaskStatus, u64)>, StorageError>>) {
        let now = self.clock.now();
        {
            let mut state = self.lock();
            // A key evicted meanwhile is not brought back (the bound holds);
            // a view asking again counts it again.
            if let Some(entry) = state.entries.get_mut(key) {
                entry.refreshing = false;
                entry.attempted_at = Some(now);
                entry.attempts_finished += 1;
                match result {
                    Some(Ok(counts)) => {
                        entry.counted = Some(StatusCounts {
                            counts,
                            counted_at: now,
                        });
                        entry.failure = None;
                    }
                    Some(Err(error)) => entry.failure = Some(error.to_string()),
                    None => entry.failure = Some("the count did not run to its end".to_owned()),
                }
            }
        }
        self.finished
            .send_modify(|ended| *ended = ended.wrapping_add(1));
    }

    /// How many keys hold a snapshot or a running count (the bound's test).
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.lock().entries.len()
    }
}

/// Puts a count's result into the snapshot when dropped: after the count,
/// or while unwinding from a panic in it (then as a failure), so the
/// single-flight flag is never left set.
struct Landing {
    snapshots: Arc<CountsSnapshots>,
    key: CountsKey,
    result: Option<Result<Vec<(TaskStatus, u64)>, StorageError>>,
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.snapshots.land(&self.key, self.result.take());
    }
}

/// Drops the least recently asked repos beyond [`MAX_REPO_KEYS`] (never
/// `asked`, never [`CountsKey::All`]).
fn evict_beyond_bound(state: &mut State, asked: &CountsKey) {
    loop {
        let repos = state
            .entries
            .keys()
            .filter(|key| matches!(key, CountsKey::Repo(_)))
            .count();
        if repos <= MAX_REPO_KEYS {
            return;
        }
        let oldest = state
            .entries
            .iter()
            .filter(|(key, _)| matches!(key, CountsKey::Repo(_)) && *key != asked)
            .min_by_key(|(_, entry)| entry.last_asked)
            .map(|(key, _)| key.clone());
        match oldest {
            Some(key) => {
                state.entries.remove(&key);
            }
            None => return,
        }
    }
}

/// `to - from`, never negative (a clock stepping back reads as fresh).
pub fn age(from: Timestamp, to: Timestamp) -> Duration {
    (to - from).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tasktrail::ManualClock;

    fn snapshots(max_age: Duration) -> (Arc<CountsSnapshots>, ManualClock) {
        let clock = ManualClock::starting_at(tasktrail::Clock::now(&tasktrail::SystemClock));
        (
            Arc::new(CountsSnapshots::new(max_age, Arc::new(clock.clone()))),
            clock,
        )
    }

    #[test]
    fn only_the_most_recently_asked_repos_are_kept() {
        let (snapshots, _) = snapshots(DEFAULT_COUNTS_MAX_AGE);
        snapshots.step(&CountsKey::All, None);
        for repo in 0..(MAX_REPO_KEYS + 10) {
            snapshots.step(&CountsKey::Repo(format!("acme/{repo}")), None);
            // The first repo stays the most recently asked.
            snapshots.step(&CountsKey::Repo("acme/0".to_owned()), None);
        }
        assert_eq!(snapshots.keys(), MAX_REPO_KEYS + 1);
        let state = snapshots.lock();
        assert!(state.entries.contains_key(&CountsKey::All));
        assert!(state
            .entries
            .contains_key(&CountsKey::Repo("acme/0".to_owned())));
        assert!(state
            .entries
            .contains_key(&CountsKey::Repo(format!("acme/{}", MAX_REPO_KEYS + 9))));
        assert!(!state
            .entries
            .contains_key(&CountsKey::Repo("acme/1".to_owned())));
    }

    #[test]
    fn a_snapshot_is_refreshed_once_past_the_max_age_and_a_failure_keeps_it() {
        let (snapshots, clock) = snapshots(Duration::from_secs(5));
        let key = CountsKey::All;
        assert!(matches!(
            snapshots.step(&key, None),
            Step::Wait { start: true, .. }
        ));
        // A second first view waits for the same count.
        assert!(matches!(
            snapshots.step(&key, None),
            Step::Wait { start: false, .. }
        ));
        snapshots.land(&key, Some(Ok(vec![(TaskStatus::Success, 3)])));
        assert!(matches!(snapshots.step(&key, Some(0)), Step::Show(_)));
        clock.advance(chrono::Duration::seconds(5));
        assert!(matches!(
            snapshots.step(&key, None),
            Step::ShowAndRefresh(_)
        ));
        assert!(matches!(snapshots.step(&key, None), Step::Show(_)));
        snapshots.land(
            &key,
            Some(Err(StorageError::Unavailable {
                source: "down".into(),
            })),
        );
        let Step::Show(view) = snapshots.step(&key, None) else {
            panic!("a failed count is retried only after the max age");
        };
        assert!(view.is_stale());
        assert_eq!(
            view.counted.map(|counted| counted.counts),
            Some(vec![(TaskStatus::Success, 3)])
        );
        // A count that panicked clears the flag too.
        clock.advance(chrono::Duration::seconds(5));
        assert!(matches!(
            snapshots.step(&key, None),
            Step::ShowAndRefresh(_)
        ));
        snapshots.land(&key, None);
        clock.advance(chrono::Duration::seconds(5));
        assert!(matches!(
            snapshots.step(&key, None),
            Step::ShowAndRefresh(_)
        ));
    }
}
