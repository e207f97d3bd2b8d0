//! Adversarial review of issue 12 (resumable rounds, mailbox zones, budgets, bounded reads).
//! Each test names the finding it shows; a failing test is a finding still open.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use voyage_tests::dates::date;

use async_trait::async_trait;
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use serde_json::{json, Value};
use voyage_core::deps::Deps;
use voyage_core::exchange::push::SyncRequest;
use voyage_core::exchange::sync::{self, RoundReport};
use voyage_core::model::AvailabilityOverride;
use voyage_core::ports::{
    Clock, Condition, Index, Item, Key, Page, Query, StoreError, SystemClock, Table, TxWrite,
};
use voyage_core::store::Store;
use voyage_tests::graph::{email, GraphWorld, CLIENT_SECRET};

async fn idle_world(extra: &[(&str, &str)]) -> (GraphWorld, String, String) {
    let w = GraphWorld::start(extra).await;
    let (key, conn) = w.tenant_with_connection("acme", "ann", CLIENT_SECRET).await;
    let id = conn["id"].as_str().unwrap().to_string();
    (w, key, id)
}

fn request(connection: &str) -> SyncRequest {
    SyncRequest {
        company_id: "acme".into(),
        connection_id: connection.into(),
        subscription_id: String::new(),
        reason: "notification".into(),
    }
}

async fn round_with(deps: &Deps, connection: &str) -> RoundReport {
    sync::handle(deps, &request(connection)).await.unwrap()
}

/// One invocation whose budget is already spent: one page, then a checkpoint.
async fn one_page(deps: &Deps, connection: &str) -> RoundReport {
    sync::handle_until(deps, &request(connection), Instant::now())
        .await
        .unwrap()
}

async fn overrides(w: &GraphWorld, connection: &str) -> Vec<AvailabilityOverride> {
    w.app
        .local
        .deps
        .store
        .overrides_for_connection("acme", "ann", connection)
        .await
        .unwrap()
}

fn ids(of: &[AvailabilityOverride]) -> HashSet<String> {
    of.iter().map(|o| o.external_event_id.clone()).collect()
}

fn day_at(days: i64, hour: u32) -> DateTime<Utc> {
    (Utc::now() + Duration::days(days))
        .date_naive()
        .and_hms_opt(hour, 0, 0)
        .unwrap()
        .and_utc()
}

async fn make_cursor_due_for_rebase(w: &GraphWorld, conn: &str) {
    let store = &w.app.local.deps.store;
    let mut cursor = store.get_cursor("acme", conn).await.unwrap().unwrap();
    cursor.based_at = Some(store.now() - Duration::days(2));
    store.save_cursor(&mut cursor).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// A table that forwards to the world's table, so a second `Deps` can share its data under
// another clock (another Lambda instance's, skewed; or a frozen one).

struct Shared(Arc<Deps>);

#[async_trait]
impl Table for Shared {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        self.0.store.table().get(key).await
    }
    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Item>, StoreError> {
        self.0.store.table().batch_get(keys).await
    }
    async fn put(&self, item: Item, condition: Condition) -> Result<(), StoreError> {
        self.0.store.table().put(item, condition).await
    }
    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        self.0.store.table().delete(key, condition).await
    }
    async fn batch_write(&self, puts: Vec<Item>, deletes: Vec<Key>) -> Result<(), StoreError> {
        self.0.store.table().batch_write(puts, deletes).await
    }
    async fn transact(&self, writes: Vec<TxWrite>) -> Result<(), StoreError> {
        self.0.store.table().transact(writes).await
    }
    async fn query(&self, query: Query) -> Result<Page, StoreError> {
        self.0.store.table().query(query).await
    }
    async fn query_index(&self, index: Index, query: Query) -> Result<Page, StoreError> {
        self.0.store.table().query_index(index, query).await
    }
    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        self.0.store.table().purge_expired(now).await
    }
}

/// The system clock shifted by `offset_ms` (negative: behind), or frozen at `frozen_ms`.
struct OddClock {
    offset_ms: AtomicI64,
    frozen_ms: AtomicI64,
}

impl Clock for OddClock {
    fn now(&self) -> DateTime<Utc> {
        let frozen = self.frozen_ms.load(Ordering::SeqCst);
        if frozen != 0 {
            return Utc.timestamp_millis_opt(frozen).unwrap();
        }
        SystemClock.now() + Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }
}

fn deps_with_clock(w: &GraphWorld, clock: Arc<OddClock>) -> Deps {
    let original = w.app.local.deps.clone();
    let mut deps: Deps = (*original).clone();
    deps.store = Store::new(Arc::new(Shared(original)), clock);
    deps
}

// ---------------------------------------------------------------------------------------

/// FINDING (high): the mailbox zone read at the start of a full listing is not part of the
/// checkpoint. A re-base (daily) whose listing continues in the next invocation resumes with
/// the OLD cursor's `mailbox_time_zone` (`ctx.zone.is_none() || !report.resumed` is false),
/// applies every all-day event of the listing in the old zone, and stores the old zone in the
/// new cursor: a changed mailbox zone is never picked up while re-bases checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_rebase_resumed_in_the_next_invocation_reads_all_day_events_in_the_new_zone() {
    let (w, _key, conn) = idle_world(&[]).await;
    let deps = w.app.local.deps.clone();
    let ann = email("ann");
    w.sim.set_mailbox_time_zone(&ann, "UTC");
    round_with(&deps, &conn).await;
    // The staff member moves to the US west coast and books a two-day conference.
    w.sim.set_mailbox_time_zone(&ann, "Pacific Standard Time");
    let first: NaiveDate = (Utc::now() + Duration::days(10)).date_naive();
    let away = w.sim.staff_create_all_day(
        &ann,
        "Conference",
        first,
        2,
        chrono_tz::America::Los_Angeles,
        "busy",
    );
    make_cursor_due_for_rebase(&w, &conn).await;

    let mut invocations = 0;
    loop {
        invocations += 1;
        let report = one_page(&deps, &conn).await;
        if report.checkpoints == 0 {
            break;
        }
        assert!(invocations < 50, "no end");
    }

    let midnight_la = |d: NaiveDate| {
        chrono_tz::America::Los_Angeles
            .from_local_datetime(&d.and_hms_opt(0, 0, 0).unwrap())
            .earliest()
            .unwrap()
            .with_timezone(&Utc)
    };
    let got = overrides(&w, &conn).await;
    let o = got.iter().find(|o| o.external_event_id == away).unwrap();
    let cursor = deps.store.get_cursor("acme", &conn).await.unwrap().unwrap();
    assert_eq!(
        (o.start, cursor.calendar_time_zone.as_deref()),
        (midnight_la(first), Some("Pacific Standard Time")),
        "after {invocations} invocations"
    );
}

/// GUARD (passes against the simulator): the per-mailbox budget is keyed by the mailbox as
/// each call names it: `calendar.user` for reads, batches and mailboxSettings, but the
/// `users/{segment}` parsed out of Graph's delta links for delta pages. Should a real link
/// name the mailbox otherwise (percent-encoded, by object id, `me`), one mailbox gets two
/// budgets and two semaphores. Kept as a regression test of "one budget per mailbox".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_mailbox_has_one_budget_whatever_form_its_address_takes() {
    let (w, _key, conn) = idle_world(&[("VOYAGE_GRAPH_MAILBOX_BUDGET", "2")]).await;
    let ann = email("ann");
    w.sim.partial_delta(&["showAs"]);
    w.sim
        .staff_create(&ann, "Dentist", day_at(2, 9), day_at(2, 10), "busy");
    w.sim.clear_served();

    // mailboxSettings (1) + the delta page (1) + the batch read of the partial entry (1).
    let outcome = sync::handle(&w.app.local.deps, &request(&conn)).await;

    let mailbox_requests = w
        .sim
        .served()
        .into_iter()
        .filter(|s| s.path.contains("/users/") || s.path.ends_with("$batch"))
        .count();
    assert!(
        mailbox_requests <= 2,
        "a budget of 2 let {mailbox_requests} requests through (outcome {outcome:?}): {:?}",
        w.sim.served()
    );
}

/// FINDING (medium): `remove_vanished` drops overrides with `updated_at < started`, where
/// `started` is one invocation's clock and `updated_at` another's. When a re-base's listing
/// starts right at a checkpoint (catch-up done, deadline passed) the next invocation runs
/// milliseconds later, possibly on an instance whose clock is behind: every busy event it
/// lists is written "before" the listing began and deleted at its end. (The seen-set this
/// replaced did not depend on clocks.) Shown with a 1 s skew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_listing_resumed_on_a_clock_slightly_behind_keeps_the_busy_time_it_listed() {
    let (w, _key, conn) = idle_world(&[]).await;
    let deps = w.app.local.deps.clone();
    let ann = email("ann");
    round_with(&deps, &conn).await;
    let mut made = HashSet::new();
    for h in 0..3 {
        made.insert(w.sim.staff_create(
            &ann,
            "Busy",
            day_at(3, 9 + h),
            day_at(3, 9 + h) + Duration::minutes(30),
            "busy",
        ));
    }
    round_with(&deps, &conn).await;
    assert_eq!(ids(&overrides(&w, &conn).await), made);
    w.sim.max_page_size(1);
    make_cursor_due_for_rebase(&w, &conn).await;

    // This instance runs the catch-up and stops just as the full listing begins.
    let mut invocations = 0;
    loop {
        invocations += 1;
        let report = one_page(&deps, &conn).await;
        assert!(report.checkpoints > 0, "{report:?}");
        let p = deps
            .store
            .get_round_progress("acme", &conn)
            .await
            .unwrap()
            .unwrap();
        if p.full && p.link.is_none() {
            break;
        }
        assert!(invocations < 50);
    }
    // The continuation lands on another instance, its clock a second behind.
    let skewed = deps_with_clock(
        &w,
        Arc::new(OddClock {
            offset_ms: AtomicI64::new(-1000),
            frozen_ms: AtomicI64::new(0),
        }),
    );
    loop {
        invocations += 1;
        let report = one_page(&skewed, &conn).await;
        if report.checkpoints == 0 {
            break;
        }
        assert!(invocations < 50);
    }

    assert_eq!(ids(&overrides(&w, &conn).await), made);
}

/// FINDING (low): with a clock that does not move between rounds (the deterministic
/// simulation's `ManualClock`, or a coarse clock) an override written by an incremental round
/// at T survives a full listing started at T that no longer shows its event
/// (`updated_at < started` is false for equal instants): stale busy time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_full_listing_at_the_same_instant_as_the_last_round_drops_unlisted_busy_time() {
    let (w, _key, conn) = idle_world(&[]).await;
    let frozen = deps_with_clock(
        &w,
        Arc::new(OddClock {
            offset_ms: AtomicI64::new(0),
            frozen_ms: AtomicI64::new(Utc::now().timestamp_millis()),
        }),
    );
    let ann = email("ann");
    round_with(&frozen, &conn).await;
    let gone = w
        .sim
        .staff_create(&ann, "Dentist", day_at(2, 9), day_at(2, 10), "busy");
    round_with(&frozen, &conn).await;
    assert!(ids(&overrides(&w, &conn).await).contains(&gone));
    assert!(w.sim.staff_delete_unreported(&ann, &gone));
    assert_eq!(w.control("delta/expire", json!({})).await, 204);

    let report = round_with(&frozen, &conn).await;

    assert!(report.resynced, "{report:?}");
    assert!(
        !ids(&overrides(&w, &conn).await).contains(&gone),
        "the listing did not show the event; its busy time stayed"
    );
}

/// FINDING (medium, pre-existing but now load-bearing): the bounded conflict read assumes
/// sessions last at most 31 days (`start - 31 days`), which only the platform's input is
/// checked against. A staff member who stretches a booked event in Outlook past 31 days has
/// the move accepted; a later move of another session into the stretched one's tail is not
/// seen as overlapping it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_session_stretched_past_31_days_in_outlook_is_refused_and_written_back() {
    let (w, _key, conn) = idle_world(&[]).await;
    let deps = w.app.local.deps.clone();
    let platform = w.app.key("platform", true).await;
    round_with(&deps, &conn).await;
    let book = |id: &'static str, start: String, end: String| {
        let w = &w;
        let platform = platform.clone();
        async move {
            let body = json!({
                "action": "created",
                "session": {
                    "id": id, "company_id": "acme", "staff_id": "ann",
                    "start": start, "end": end, "time_zone": "UTC",
                    "title": "Consultation",
                }
            });
            let (status, out) = w
                .app
                .call("POST", "/v1/exchange/outbound", &platform, Some(body))
                .await;
            assert_eq!(status, 200, "{out}");
            out["event_id"].as_str().unwrap().to_string()
        }
    };
    let at = |t: &str| json!({"dateTime": format!("{t}.0000000"), "timeZone": "UTC"});
    let (d0, d50) = (date(0), date(50));
    let e1 = book("s1", format!("{d0}T09:00:00Z"), format!("{d0}T10:00:00Z")).await;
    let e2 = book("s2", format!("{d50}T09:00:00Z"), format!("{d50}T10:00:00Z")).await;
    round_with(&deps, &conn).await;

    // s1 stretched to 40 days in Outlook: longer than a session may last (31 days, the
    // limit the conflict check's bounded read rests on), so the move is refused and the
    // event written back; nothing can then overlap s1 unseen.
    assert_eq!(
        w.staff(
            "PATCH",
            "ann",
            &e1,
            "",
            Some(json!({"start": at(&format!("{d0}T09:00:00", d0 = date(0))), "end": at(&format!("{d40}T09:00:00", d40 = date(40)))}))
        )
        .await,
        200
    );
    round_with(&deps, &conn).await;
    let s1 = deps.store.get_session("acme", "s1").await.unwrap();
    assert_eq!(
        s1.end.to_rfc3339(),
        format!("{d0}T10:00:00+00:00", d0 = date(0))
    );
    assert!(
        s1.history.iter().any(|h| h.command == "reject_reschedule"),
        "{:?}",
        s1.history
    );
    let live = w.live_events("ann").await;
    let event = live.iter().find(|e| e["id"] == e1.as_str()).unwrap();
    assert!(
        event["end"]["dateTime"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{d0}T10:00:00", d0 = date(0))),
        "written back: {event}"
    );
    // A move of s2 is checked against s1's real times: onto them, it is refused.
    assert_eq!(
        w.staff(
            "PATCH",
            "ann",
            &e2,
            "",
            Some(json!({"start": at(&format!("{d0}T09:30:00", d0 = date(0))), "end": at(&format!("{d0}T10:30:00", d0 = date(0)))}))
        )
        .await,
        200
    );
    round_with(&deps, &conn).await;
    let s2 = deps.store.get_session("acme", "s2").await.unwrap();
    assert_eq!(
        s2.start.to_rfc3339(),
        format!("{d50}T09:00:00+00:00", d50 = date(50))
    );
    assert!(
        s2.history.iter().any(|h| h.command == "reject_reschedule"),
        "{:?}",
        s2.history
    );
}

/// FINDING (high): Google. A checkpoint stores `resynced` and a resumed sync restores it into
/// `report.resynced`, which is also the guard of the 410 handler (`FullSyncRequired if
/// !report.resynced`). A full sync that began because the sync token expired and then
/// checkpointed can therefore never recover from its saved page token expiring: every
/// invocation resumes, gets 410, and fails, until the checkpoint's 48 h TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_google_a_resync_whose_page_token_expires_starts_over_instead_of_failing() {
    use voyage_core::google::sync;
    use voyage_simulators::google::SANDBOX_PRIVATE_KEY;
    use voyage_tests::google::{day, timed, GoogleWorld};

    let w = GoogleWorld::start(&[("VOYAGE_SYNC_BUDGET", "1ms")]).await;
    let (_tenant, conn) = w
        .tenant_with_connection("acme", "ann", SANDBOX_PRIVATE_KEY)
        .await;
    let events: Vec<Value> = (0..600)
        .map(|i| {
            let d = day(1 + (i % 150) as i64);
            let minute = (i / 150) % 60;
            timed(
                "Busy",
                &format!("{d}T10:{minute:02}:00Z"),
                &format!("{d}T10:{minute:02}:30Z"),
            )
        })
        .collect();
    w.sim
        .seed_events(&voyage_tests::google::email("ann"), events)
        .unwrap();
    let deps = w.app.local.deps.clone();
    let id = conn["id"].as_str().unwrap().to_string();
    let run = || async {
        let mut c = deps.store.get_connection("acme", &id).await.unwrap();
        sync::sync_connection(&deps, &mut c).await
    };
    // A first sync, finished across invocations.
    for _ in 0..20 {
        if !run().await.unwrap().continues {
            break;
        }
    }
    // The sync token expires: the next sync is a full one, and it checkpoints.
    w.control("POST", "sync-tokens/expire", json!({})).await;
    let report = run().await.unwrap();
    assert!(report.resynced && report.continues, "{report:?}");
    // Its saved page token expires too before the continuation runs.
    w.control("POST", "sync-tokens/expire", json!({})).await;

    let mut outcomes = Vec::new();
    for _ in 0..20 {
        let r = run().await.unwrap();
        let done = !r.continues;
        outcomes.push((r.pages, r.skipped.clone()));
        if done {
            break;
        }
    }
    // (Google failures come back as `skipped` with the recorded error.)
    assert!(
        outcomes.iter().all(|(_, skipped)| skipped.is_none()),
        "the sync fails on its saved page token: {outcomes:?}"
    );
    let again = run().await.unwrap();
    assert!(
        again.skipped.is_none(),
        "and keeps failing on every retry: {again:?}"
    );
}

/// FINDING (medium): `busy_times` reads an all-day event's local midnight with
/// `from_local_datetime(..).earliest()`, which is `None` when midnight does not exist (a DST
/// gap at 00:00: Cuba, Lebanon, Egypt, Chile...). `None` sends the entry to `removals`: an
/// all-day busy event that starts (or ends) on such a day is not busy at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_an_all_day_event_on_a_day_whose_midnight_is_skipped_is_still_busy() {
    use chrono::LocalResult;
    let (w, _key, conn) = idle_world(&[]).await;
    let ann = email("ann");
    // The first day in the window whose midnight one of these zones skips (spring forward at
    // 00:00). One zone alone leaves half the year without such a day in the window (Cuba
    // only in March); these five leave none but a few days of early September.
    let zones = [
        ("Cuba Standard Time", chrono_tz::America::Havana),
        ("Middle East Standard Time", chrono_tz::Asia::Beirut),
        ("Azores Standard Time", chrono_tz::Atlantic::Azores),
        ("Egypt Standard Time", chrono_tz::Africa::Cairo),
        ("Pacific SA Standard Time", chrono_tz::America::Santiago),
    ];
    let today = Utc::now().date_naive();
    let Some((gap_day, (windows_name, zone))) =
        (1..180).map(|d| today + Duration::days(d)).find_map(|d| {
            zones
                .into_iter()
                .find(|(_, zone)| {
                    matches!(
                        zone.from_local_datetime(&d.and_hms_opt(0, 0, 0).unwrap()),
                        LocalResult::None
                    )
                })
                .map(|z| (d, z))
        })
    else {
        // tzdata names no skipped midnight in the next 180 days (early September).
        eprintln!("no zone skips a midnight in the window from {today}: nothing to try");
        return;
    };
    w.sim.set_mailbox_time_zone(&ann, windows_name);
    let holiday = w
        .sim
        .staff_create_all_day(&ann, "Holiday", gap_day, 1, zone, "busy");

    let report = round_with(&w.app.local.deps, &conn).await;

    assert!(
        ids(&overrides(&w, &conn).await).contains(&holiday),
        "the all-day event on {gap_day} is not busy: {report:?}"
    );
}
