//! The task list's status counts are a shared snapshot, refreshed in the
//! background: the server runs in this process over an
//! [`InterceptedStorage`] that counts (and may hold or fail) every
//! `count_tasks_by_status`, with a manual clock for the counts' age, so no
//! test sleeps past a max age and none asserts on time.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use common::{dispatch_body, dispatched_id, eventually, request, request_text};
use tasktrail::async_worker::AsyncWorker;
use tasktrail::prelude::*;
use tasktrail::ManualClock;
use tasktrail_core::intercept::{InterceptedStorage, StorageCall};
use tasktrail_server::agent::SimulatedAgent;
use tasktrail_server::ui::DashboardOptions;
use tasktrail_server::{router, ui, Dispatcher};

/// The max age every test runs with; the manual clock moves past it.
const MAX_AGE: Duration = Duration::from_secs(5);

/// Watches `count_tasks_by_status`: how many ran, and a gate that holds
/// them, and a switch that fails them.
#[derive(Debug, Default)]
struct CountProbe {
    counts: AtomicUsize,
    failing: AtomicBool,
    held: Mutex<bool>,
    released: Condvar,
}

impl CountProbe {
    fn before(&self, call: StorageCall) -> Result<(), StorageError> {
        if call != StorageCall::CountTasksByStatus {
            return Ok(());
        }
        self.counts.fetch_add(1, Ordering::SeqCst);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while *held {
            held = self
                .released
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(StorageError::Unavailable {
                source: "the count's store is down".into(),
            });
        }
        Ok(())
    }

    fn counts(&self) -> usize {
        self.counts.load(Ordering::SeqCst)
    }

    fn hold(&self) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = true;
    }

    fn release(&self) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.released.notify_all();
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

/// The API and the dashboard in this process, on 127.0.0.1.
struct Dashboard {
    address: SocketAddr,
    probe: Arc<CountProbe>,
    clock: ManualClock,
    storage: Arc<dyn Storage>,
    _runtime: tokio::runtime::Runtime,
}

impl Dashboard {
    fn start(inner: impl Storage + 'static) -> Self {
        let probe = Arc::new(CountProbe::default());
        let hook = Arc::clone(&probe);
        let storage: Arc<dyn Storage> = Arc::new(InterceptedStorage::new(inner, move |call| {
            hook.before(call)
        }));
        let clock = ManualClock::starting_at(tasktrail::Clock::now(&tasktrail::SystemClock));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let address = runtime.block_on(async {
            let worker = AsyncWorker::boot(Worker::builder(Arc::clone(&storage)))
                .await
                .expect("boot");
            let dispatcher = Dispatcher::new(worker, Arc::new(SimulatedAgent));
            let app = router(Arc::clone(&dispatcher)).merge(ui::router_with(
                dispatcher,
                DashboardOptions {
                    counts_max_age: MAX_AGE,
                    clock: Arc::new(clock.clone()),
                    ..DashboardOptions::default()
                },
            ));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let address = listener.local_addr().expect("address");
            tokio::spawn(async move { axum::serve(listener, app).await });
            address
        });
        Self {
            address,
            probe,
            clock,
            storage,
            _runtime: runtime,
        }
    }

    fn memory() -> Self {
        Self::start(MemoryStorage::new())
    }

    /// A page's body; panics unless `200`.
    fn page(&self, path: &str) -> Page {
        let (status, body) = request_text(self.address, "GET", path, None);
        assert_eq!(status, 200, "{path}: {body}");
        Page(body)
    }

    /// Dispatches a task that ends at once with `outcome`; returns when
    /// every row is final.
    fn dispatch(&self, issue: u32, outcome: &str) -> TaskId {
        let id = dispatched_id(&request(
            self.address,
            "POST",
            "/tasks",
            Some(&dispatch_body(issue, 0, outcome)),
        ));
        assert!(eventually(Duration::from_secs(20), || {
            self.storage
                .list_tasks(&TaskFilter::default())
                .expect("list")
                .iter()
                .all(|row| row.status.is_final())
        }));
        id
    }

    /// Moves the clock past the max age.
    fn age_the_counts(&self) {
        self.clock.advance(
            chrono::Duration::from_std(MAX_AGE).expect("fits") + chrono::Duration::seconds(1),
        );
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        // No count is left waiting on the gate past the test.
        self.probe.release();
    }
}

/// A task-list page as text, with the figures a person reads off it.
#[derive(Debug)]
struct Page(String);

impl Page {
    /// The number shown for `data-count="{key}"` (`all` or a status);
    /// `None` when the page shows no number there.
    fn count(&self, key: &str) -> Option<u64> {
        let marker = format!("data-count=\"{key}\"");
        let at = self.0.find(&marker)?;
        let link = &self.0[at..at + self.0[at..].find("</a>")?];
        let number = &link[link.find("<b>")? + 3..];
        number[..number.find("</b>")?].parse().ok()
    }

    fn is_stale(&self) -> bool {
        self.0.contains("data-stale=\"true\"")
    }

    fn shows_task(&self, id: TaskId) -> bool {
        self.0.contains(&format!("data-id=\"{id}\""))
    }

    fn counted_at(&self) -> Option<&str> {
        let marker = "data-counted-at=\"";
        let at = self.0.find(marker)? + marker.len();
        Some(&self.0[at..at + self.0[at..].find('"')?])
    }
}

#[test]
fn the_first_view_waits_for_its_count_and_shows_exact_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = SqliteStorage::open(dir.path().join("trail.db")).expect("open");
    for dashboard in [Dashboard::memory(), Dashboard::start(sqlite)] {
        dashboard.dispatch(1, "success");
        dashboard.dispatch(2, "success");
        dashboard.dispatch(3, "failure");
        assert_eq!(dashboard.probe.counts(), 0, "nothing counted before a view");
        let page = dashboard.page("/");
        assert_eq!(dashboard.probe.counts(), 1);
        assert_eq!(page.count("all"), Some(3), "{page:?}");
        assert_eq!(page.count("success"), Some(2));
        assert_eq!(page.count("failure"), Some(1));
        assert_eq!(page.count("running"), Some(0));
        assert!(!page.is_stale());
        assert!(page.0.contains("counted 0s ago"), "{page:?}");
        // Each repo is its own snapshot, counted on its first view.
        let other = dashboard.page("/?repo=acme/other");
        assert_eq!(dashboard.probe.counts(), 2);
        assert_eq!(other.count("all"), Some(0));
        let widgets = dashboard.page("/ui/tasks/live?repo=acme/widgets&status=failure");
        assert_eq!(dashboard.probe.counts(), 3);
        assert_eq!(widgets.count("all"), Some(3));
        assert_eq!(widgets.count("failure"), Some(1));
    }
}

#[test]
fn a_view_of_a_fresh_snapshot_counts_nothing() {
    let dashboard = Dashboard::memory();
    dashboard.dispatch(1, "success");
    let first = dashboard.page("/");
    assert_eq!(dashboard.probe.counts(), 1);
    // The same key, whatever the status filter, page or live refresh.
    for path in [
        "/",
        "/ui/tasks",
        "/?status=success",
        "/ui/tasks/live",
        "/?page=2",
    ] {
        for _ in 0..3 {
            let page = dashboard.page(path);
            assert_eq!(page.count("all"), Some(1), "{path}");
            assert_eq!(page.counted_at(), first.counted_at(), "{path}");
        }
    }
    // Within the max age, still none.
    dashboard.clock.advance(chrono::Duration::seconds(4));
    dashboard.page("/");
    // A view that would have started a count has had the time to run it:
    // this view waits for a count of its own (a new key).
    dashboard.page("/?repo=acme/widgets");
    assert_eq!(dashboard.probe.counts(), 2, "only the new key was counted");
}

#[test]
fn concurrent_views_of_a_stale_snapshot_start_exactly_one_count() {
    let dashboard = Arc::new(Dashboard::memory());
    dashboard.dispatch(1, "success");
    assert_eq!(dashboard.page("/").count("all"), Some(1));
    let newer = dashboard.dispatch(2, "success");
    dashboard.age_the_counts();
    // The refresh the views start cannot finish until released: every view
    // below renders without it.
    dashboard.probe.hold();
    let views: Vec<_> = (0..16)
        .map(|_| {
            let dashboard = Arc::clone(&dashboard);
            thread::spawn(move || dashboard.page("/"))
        })
        .collect();
    for view in views {
        let page = view.join().expect("a view");
        // The snapshot it has: the old count, not stale, and the new row.
        assert_eq!(page.count("all"), Some(1), "{page:?}");
        assert!(!page.is_stale());
        assert!(page.shows_task(newer));
    }
    assert!(eventually(Duration::from_secs(20), || dashboard
        .probe
        .counts()
        >= 2));
    // Views while it runs start none either.
    for _ in 0..4 {
        assert_eq!(dashboard.page("/ui/tasks/live").count("all"), Some(1));
    }
    dashboard.probe.release();
    assert!(
        eventually(Duration::from_secs(20), || dashboard.page("/").count("all")
            == Some(2)),
        "the refresh landed"
    );
    assert_eq!(
        dashboard.probe.counts(),
        2,
        "one count for the first view, one refresh"
    );
}

#[test]
fn after_a_dispatch_and_the_max_age_the_counts_move() {
    let dashboard = Dashboard::memory();
    let empty = dashboard.page("/");
    assert_eq!(empty.count("all"), Some(0));
    dashboard.dispatch(1, "success");
    // Within the max age the page shows the snapshot (and the new row).
    let fresh = dashboard.page("/");
    assert_eq!(fresh.count("all"), Some(0));
    assert_eq!(fresh.counted_at(), empty.counted_at());
    dashboard.age_the_counts();
    assert!(
        eventually(Duration::from_secs(20), || {
            let page = dashboard.page("/");
            page.count("all") == Some(1) && page.count("success") == Some(1)
        }),
        "the counts moved"
    );
    let moved = dashboard.page("/");
    assert_ne!(moved.counted_at(), empty.counted_at());
    assert_eq!(dashboard.probe.counts(), 2);
}

#[test]
fn a_failing_count_keeps_the_last_numbers_and_marks_them_stale() {
    let dashboard = Dashboard::memory();
    dashboard.dispatch(1, "success");
    let counted = dashboard.page("/");
    assert_eq!(counted.count("all"), Some(1));
    let newer = dashboard.dispatch(2, "failure");
    dashboard.probe.fail(true);
    dashboard.age_the_counts();
    assert!(
        eventually(Duration::from_secs(20), || dashboard.page("/").is_stale()),
        "the failed refresh shows"
    );
    let stale = dashboard.page("/");
    assert_eq!(stale.count("all"), Some(1), "the last numbers are kept");
    assert_eq!(stale.counted_at(), counted.counted_at());
    assert!(stale.0.contains("the last count failed"), "{stale:?}");
    assert!(stale.shows_task(newer), "the rows still render");
    // A first view whose count fails renders its rows without numbers.
    let uncounted = dashboard.page("/?repo=acme/widgets");
    assert!(uncounted.is_stale());
    assert_eq!(uncounted.count("all"), None);
    assert!(uncounted.shows_task(newer));
    // Once the store answers, the next refresh after the max age lands.
    dashboard.probe.fail(false);
    dashboard.age_the_counts();
    assert!(
        eventually(Duration::from_secs(20), || {
            let page = dashboard.page("/");
            page.count("all") == Some(2) && !page.is_stale()
        }),
        "the counts recovered"
    );
}
