//! Second adversarial review of the calendar seam (issue #13), after the mends of c067763.

#![allow(dead_code, unused_imports)]

use std::time::Duration;

use serde_json::{json, Value};
use voyage_core::model::SessionStatus;
use voyage_simulators::Fault;
use voyage_tests::calendars::{apply_change, at, change_body, fault, Cal, CalendarsWorld, COMPANY};
use voyage_tests::graph::email;

use std::sync::Arc;

use voyage_core::google::api::{Channel, EventsPage, GoogleEvent, ListRequest, WatchRequest};
use voyage_core::google::{GoogleApi, GoogleError, GoogleEventWrite, ServiceAccount};

/// The next `count` requests of `cal` matching `method` and `path` fail with `status` (400:
/// refused, not retried by the clients).
fn fails(w: &CalendarsWorld, cal: Cal, method: &str, path: &str, status: u16, count: u32) {
    match cal {
        Cal::Exchange => w.graph.add_fault(fault(method, path, status, count)),
        Cal::Google => w.google.add_fault(fault(method, path, status, count)),
    }
}

/// Lets the system settle: every sync of `connections` twice, the commit job (after the
/// grace), every sync again.
async fn settle(w: &CalendarsWorld, connections: &[(Cal, &str)]) {
    for _ in 0..2 {
        for (cal, conn) in connections {
            w.sync(*cal, conn).await;
        }
        w.drain_outbound().await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.commit_pending_cancellations().await;
    for _ in 0..2 {
        for (cal, conn) in connections {
            w.sync(*cal, conn).await;
        }
        w.drain_outbound().await;
    }
}

fn other(cal: Cal) -> Cal {
    match cal {
        Cal::Exchange => Cal::Google,
        Cal::Google => Cal::Exchange,
    }
}

// ---------------------------------------------------------------------------------------
// A session given to another staff member
// ---------------------------------------------------------------------------------------

/// ann -> bob -> ann. Giving the booking to bob deletes ann's Google event (soft: it keeps
/// the derived id). Giving it back creates the same id in ann's calendar: 409, the event is
/// read, it is cancelled, and `booked_at` (the session's first `platform.created`, before
/// that deletion) says "the staff member deleted it after the booking": the booking goes
/// into pending cancellation instead of being written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review2_a_booking_given_back_to_its_first_staff_member_is_written_to_their_google_calendar(
) {
    let w = CalendarsWorld::start().await;
    w.connect(Cal::Google, "ann").await;
    w.connect(Cal::Google, "bob").await;
    w.change("created", "s1", 9).await;
    let (status, out) = w.post_change(change_body("updated", "s1", "bob", 9)).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(w.shown(Cal::Google, "bob", "s1").len(), 1, "{out}");
    let (status, out) = w.post_change(change_body("updated", "s1", "ann", 9)).await;
    assert_eq!(status, 200, "{out}");
    let s = w.session("s1").await;
    assert_eq!(
        s.status,
        SessionStatus::Confirmed,
        "given back to ann, the booking is being cancelled: {out} {:?}",
        s.history
    );
    assert_eq!(w.shown(Cal::Google, "ann", "s1").len(), 1, "{out}");
    assert!(w.shown(Cal::Google, "bob", "s1").is_empty());
}

/// The booking is given to bob; ann's event is deleted first, then bob's calendar cannot be
/// written (the change answers `failed`, to be sent again). The mapping still links the
/// session to ann's (now deleted) event, so ann's next sync reads that deletion - our own -
/// as the staff member's, and bob's booking goes into pending cancellation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review2_a_booking_given_to_another_staff_member_whose_calendar_write_failed_is_not_cancelled_by_the_first_calendar(
) {
    let mut broken = Vec::new();
    for cal in Cal::BOTH {
        let w = CalendarsWorld::start().await;
        let ann = w.connect(cal, "ann").await;
        w.connect(cal, "bob").await;
        w.change("created", "s1", 9).await;
        w.sync(cal, &ann).await;
        // bob's calendar refuses the create.
        fails(&w, cal, "POST", "bob", 400, 1);
        let (status, out) = w.post_change(change_body("updated", "s1", "bob", 9)).await;
        assert_eq!(status, 200, "{out}");
        assert_eq!(out["calendars"][0]["outcome"], "failed", "{cal:?}: {out}");
        // Before the platform sends the change again, ann's calendar syncs.
        w.sync(cal, &ann).await;
        let s = w.session("s1").await;
        if s.status != SessionStatus::Confirmed {
            broken.push(format!(
                "{cal:?}: bob's booking is {:?} because of ann's calendar: {:?}",
                s.status, s.history
            ));
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

/// The booking is given to bob, and ann's calendar refuses the deletion of her event. The
/// removal comes first: the change answers `failed` (nothing is written in bob's calendar, so
/// the booking never shows twice), and the same change sent again removes ann's event and
/// writes bob's. (At review time the removal was best effort and never retried: ann kept a
/// live event of bob's booking for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review2_a_booking_given_to_another_staff_member_leaves_no_event_with_ann_even_when_the_first_removal_failed(
) {
    let w = CalendarsWorld::start().await;
    let ann = w.connect(Cal::Google, "ann").await;
    let bob = w.connect(Cal::Google, "bob").await;
    w.change("created", "s1", 9).await;
    w.sync(Cal::Google, &ann).await;
    fails(&w, Cal::Google, "DELETE", "ann", 400, 1);
    let (status, out) = w.post_change(change_body("updated", "s1", "bob", 9)).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["calendars"][0]["outcome"], "failed", "{out}");
    assert!(w.shown(Cal::Google, "bob", "s1").is_empty(), "{out}");
    // The platform sends the change again, as a `failed` outcome asks.
    let (status, out) = w.post_change(change_body("updated", "s1", "bob", 9)).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(w.shown(Cal::Google, "bob", "s1").len(), 1, "{out}");
    settle(&w, &[(Cal::Google, &ann), (Cal::Google, &bob)]).await;
    // Even a full resync of ann's calendar.
    w.google.add_fault(fault("GET", "/events", 410, 1));
    w.sync(Cal::Google, &ann).await;
    assert!(
        w.shown(Cal::Google, "ann", "s1").is_empty(),
        "ann's calendar keeps bob's booking for good: {:?} (answer {out})",
        w.shown(Cal::Google, "ann", "s1")
    );
}

// ---------------------------------------------------------------------------------------
// Follow-ups into the other calendar that fail
// ---------------------------------------------------------------------------------------

/// The staff member moves the booking in one calendar; the follow-up write into the other
/// calendar fails once (best effort, logged, never retried). That calendar's event is
/// unchanged, so no later sync round of it sees anything: it shows the old time for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review2_a_move_reaches_the_other_calendar_even_when_the_first_follow_up_write_failed() {
    let mut broken = Vec::new();
    for moved_in in Cal::BOTH {
        let (w, exchange, google) = CalendarsWorld::both().await;
        let conns = [
            (Cal::Exchange, exchange.as_str()),
            (Cal::Google, google.as_str()),
        ];
        let conn_of = |c: Cal| {
            if c == Cal::Exchange {
                &exchange
            } else {
                &google
            }
        };
        w.change("created", "s1", 9).await;
        settle(&w, &conns).await;
        let e = w.one_event(moved_in, "ann", "s1");
        w.staff_move(moved_in, "ann", &e, 14);
        let follower = other(moved_in);
        let method = if follower == Cal::Exchange {
            "PATCH"
        } else {
            "PUT"
        };
        fails(&w, follower, method, "/events", 400, 1);
        w.sync(moved_in, conn_of(moved_in)).await;
        assert_eq!(w.session("s1").await.start, at(14), "{moved_in:?}");
        settle(&w, &conns).await;
        let s = w.session("s1").await;
        assert_eq!(s.start, at(14), "{moved_in:?}: {:?}", s.history);
        let shown = w.shown(follower, "ann", "s1");
        if shown.len() != 1 || shown[0].start != at(14) {
            broken.push(format!(
                "moved in {moved_in:?}: {follower:?} shows {shown:?} for a booking at 14:00"
            ));
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

/// The staff member deletes the booking in one calendar; the grace passes and the
/// cancellation is committed; its follow-up delete in the other calendar fails once. The
/// other calendar keeps a live event of a cancelled booking for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review2_a_committed_cancellation_reaches_the_other_calendar_even_when_the_first_follow_up_failed(
) {
    let mut broken = Vec::new();
    for deleted_in in Cal::BOTH {
        let (w, exchange, google) = CalendarsWorld::both().await;
        let conns = [
            (Cal::Exchange, exchange.as_str()),
            (Cal::Google, google.as_str()),
        ];
        w.change("created", "s1", 9).await;
        settle(&w, &conns).await;
        let e = w.one_event(deleted_in, "ann", "s1");
        w.staff_delete(deleted_in, "ann", &e);
        let conn = if deleted_in == Cal::Exchange {
            &exchange
        } else {
            &google
        };
        w.sync(deleted_in, conn).await;
        assert_eq!(
            w.session("s1").await.status,
            SessionStatus::PendingCancellation
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        fails(&w, other(deleted_in), "DELETE", "/events", 400, 1);
        w.commit_pending_cancellations().await;
        assert_eq!(w.session("s1").await.status, SessionStatus::Cancelled);
        settle(&w, &conns).await;
        let shown = w.shown(other(deleted_in), "ann", "s1");
        if !shown.is_empty() {
            broken.push(format!(
                "deleted in {deleted_in:?}: {:?} keeps the cancelled booking's event {shown:?}",
                other(deleted_in)
            ));
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

// ---------------------------------------------------------------------------------------
// Google as it really answers: another clock, cancelled events reduced to their id
// ---------------------------------------------------------------------------------------

/// The Google client of the world, with what real Google does differently from the
/// simulator: its clock runs `ahead` of ours (every `updated` it reports is that much
/// later), and, with `bare_cancelled`, an incremental listing gives a cancelled event as its
/// id and status only ("only `id` is guaranteed on them").
struct RealGoogle {
    inner: Arc<dyn GoogleApi>,
    ahead: chrono::Duration,
    bare_cancelled: bool,
    /// The next update is sent only after this long (it reaches Google after whatever is
    /// written meanwhile).
    hold_next_update: std::sync::Mutex<Option<Duration>>,
}

impl RealGoogle {
    fn shift(&self, mut e: GoogleEvent) -> GoogleEvent {
        if let Some(t) = e.updated_at() {
            e.updated = Some((t + self.ahead).to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
        e
    }
}

#[async_trait::async_trait]
impl GoogleApi for RealGoogle {
    async fn list_events(
        &self,
        account: &ServiceAccount,
        subject: &str,
        request: &ListRequest,
    ) -> Result<EventsPage, GoogleError> {
        let mut page = self.inner.list_events(account, subject, request).await?;
        let bare = self.bare_cancelled && request.sync_token.is_some();
        page.items = page
            .items
            .into_iter()
            .map(|e| {
                if bare && e.is_cancelled() {
                    GoogleEvent {
                        id: e.id,
                        status: e.status,
                        ..Default::default()
                    }
                } else {
                    self.shift(e)
                }
            })
            .collect();
        Ok(page)
    }
    async fn watch(
        &self,
        account: &ServiceAccount,
        subject: &str,
        request: &WatchRequest,
    ) -> Result<Channel, GoogleError> {
        self.inner.watch(account, subject, request).await
    }
    async fn stop_channel(
        &self,
        account: &ServiceAccount,
        subject: &str,
        channel_id: &str,
        resource_id: &str,
    ) -> Result<(), GoogleError> {
        self.inner
            .stop_channel(account, subject, channel_id, resource_id)
            .await
    }
    async fn insert_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event: &GoogleEventWrite,
    ) -> Result<GoogleEvent, GoogleError> {
        let e = self
            .inner
            .insert_event(account, subject, calendar_id, event)
            .await?;
        Ok(self.shift(e))
    }
    async fn update_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event_id: &str,
        etag: Option<&str>,
        event: &GoogleEventWrite,
    ) -> Result<GoogleEvent, GoogleError> {
        let hold = self.hold_next_update.lock().unwrap().take();
        if let Some(hold) = hold {
            tokio::time::sleep(hold).await;
        }
        let e = self
            .inner
            .update_event(account, subject, calendar_id, event_id, etag, event)
            .await?;
        Ok(self.shift(e))
    }
    async fn get_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event_id: &str,
    ) -> Result<GoogleEvent, GoogleError> {
        let e = self
            .inner
            .get_event(account, subject, calendar_id, event_id)
            .await?;
        Ok(self.shift(e))
    }
    async fn delete_event(
        &self,
        account: &ServiceAccount,
        subject: &str,
        calendar_id: &str,
        event_id: &str,
        etag: Option<&str>,
    ) -> Result<(), GoogleError> {
        self.inner
            .delete_event(account, subject, calendar_id, event_id, etag)
            .await
    }
}

/// The world's dependencies with [`RealGoogle`] as the Google client.
fn real_google(
    w: &CalendarsWorld,
    ahead: chrono::Duration,
    bare_cancelled: bool,
) -> voyage_core::deps::Deps {
    real_google_holding(w, ahead, bare_cancelled, None)
}

/// [`real_google`], whose next update is held back `hold` before it is sent.
fn real_google_holding(
    w: &CalendarsWorld,
    ahead: chrono::Duration,
    bare_cancelled: bool,
    hold: Option<Duration>,
) -> voyage_core::deps::Deps {
    let mut deps = (*w.app.local.deps).clone();
    deps.google = Some(Arc::new(RealGoogle {
        inner: w.app.local.deps.google.clone().unwrap(),
        ahead,
        bare_cancelled,
        hold_next_update: std::sync::Mutex::new(hold),
    }));
    deps
}

/// A cancelled booking is booked again a moment later. `booked_at` compares Google's clock
/// (the deleted event's `updated`) with ours (the history's `platform.created`): with
/// Google's clock two seconds ahead, our own cancellation looks like the staff member's
/// deletion after the booking, and the new booking goes into pending cancellation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review2_a_cancelled_booking_booked_again_is_confirmed_when_googles_clock_runs_ahead_of_ours(
) {
    let w = CalendarsWorld::start().await;
    w.connect(Cal::Google, "ann").await;
    let deps = real_google(&w, chrono::Duration::seconds(2), false);
    apply_change(&deps, change_body("created", "s1", "ann", 9)).await;
    apply_change(&deps, change_body("cancelled", "s1", "ann", 9)).await;
    let out = apply_change(&deps, change_body("created", "s1", "ann", 10)).await;
    let s = w.session("s1").await;
    assert_eq!(
        s.status,
        SessionStatus::Confirmed,
        "{out:?}: {:?}",
        s.history
    );
    assert_eq!(w.shown(Cal::Google, "ann", "s1").len(), 1, "{out:?}");
}

/// The review's race (a cancellation read before a re-booking, reconciled after it) with an
/// incremental listing that gives the cancelled event as its id only, as Google may: no
/// `updated`, so the stale-read guard cannot see that the read is older than the
/// re-booking's write, and the Google mapping (not retired by the re-booking, the id being
/// reused) still links the event: the new booking goes into pending cancellation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review2_a_bare_cancellation_read_before_a_rebooking_does_not_put_the_new_booking_into_pending(
) {
    let w = CalendarsWorld::start().await;
    let conn = w.connect(Cal::Google, "ann").await;
    let deps = real_google(&w, chrono::Duration::zero(), true);
    w.change("created", "s1", 9).await;
    w.change("cancelled", "s1", 9).await;
    w.google.add_fault(Fault {
        method: Some("GET".into()),
        path_contains: Some("/events".into()),
        status: None,
        retry_after: None,
        latency_ms: Some(1500),
        count: 1,
        after: 0,
        lose_answer: false,
    });
    let mut connection = w
        .app
        .local
        .deps
        .store
        .get_connection(COMPANY, &conn)
        .await
        .unwrap();
    let (synced, out) = tokio::join!(
        voyage_core::google::sync::sync_connection(&deps, &mut connection),
        async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            w.change("created", "s1", 10).await
        }
    );
    assert_eq!(out["session_status"], "confirmed", "{out}");
    // The race ran: the late listing read the old event's deletion.
    let report = synced.expect("the sync failed");
    assert!(report.events >= 1, "the sync read nothing: {report:?}");
    let s = w.session("s1").await;
    assert_eq!(
        s.status,
        SessionStatus::Confirmed,
        "the old event's deletion hit the new booking: {:?}",
        s.history
    );
}

// ---------------------------------------------------------------------------------------
// Pending cancellations and the calendar that started them
// ---------------------------------------------------------------------------------------

/// The staff member deletes the booking's event in both calendars, then restores it in
/// Google only. Decision (README, "Two calendars, one booking"): a pending cancellation is
/// ended by a restore in the calendar whose deletion started it; the other calendar's
/// deletion stood too, so the cancellation is committed - and then no calendar may keep a
/// live event of the cancelled booking: the one restored in Google is deleted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review2_a_booking_deleted_in_both_calendars_and_restored_in_the_other_one_is_cancelled_with_no_event_left(
) {
    let (w, exchange, google) = CalendarsWorld::both().await;
    let conns = [
        (Cal::Exchange, exchange.as_str()),
        (Cal::Google, google.as_str()),
    ];
    w.change("created", "s1", 9).await;
    w.sync(Cal::Exchange, &exchange).await;
    w.sync(Cal::Google, &google).await;
    let e = w.one_event(Cal::Exchange, "ann", "s1");
    let g = w.one_event(Cal::Google, "ann", "s1");
    w.staff_delete(Cal::Exchange, "ann", &e);
    w.staff_delete(Cal::Google, "ann", &g);
    w.sync(Cal::Exchange, &exchange).await;
    w.sync(Cal::Google, &google).await;
    assert_eq!(
        w.session("s1").await.status,
        SessionStatus::PendingCancellation
    );
    w.staff_restore(Cal::Google, "ann", &g);
    settle(&w, &conns).await;
    let s = w.session("s1").await;
    assert_eq!(s.status, SessionStatus::Cancelled, "{:?}", s.history);
    for cal in Cal::BOTH {
        assert!(
            w.shown(cal, "ann", "s1").is_empty(),
            "{cal:?} keeps an event"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Two platform changes of one session written at once
// ---------------------------------------------------------------------------------------

/// The platform moves the booking to 10:00 (v2) and, a moment later, to 11:00 (v3); v2's
/// Google write reaches Google last. It gets 412, re-reads and writes 10:00 over v3's
/// 11:00 (Google's writer has no "superseded" check, unlike Exchange's); its closing commit,
/// retried on fresh state, records v2's etag with v3's times. Google shows 10:00, and the
/// next sync takes our own stale write for a staff move: the booking goes back to 10:00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review2_an_older_platform_change_written_to_google_last_does_not_move_the_booking_back() {
    let w = CalendarsWorld::start().await;
    let conn = w.connect(Cal::Google, "ann").await;
    let with_version = |action: &str, hour: u32, v: u64| {
        let mut b = change_body(action, "s1", "ann", hour);
        b["session"]["version"] = json!(v);
        b
    };
    let (status, out) = w.post_change(with_version("created", 9, 1)).await;
    assert_eq!(status, 200, "{out}");
    w.sync(Cal::Google, &conn).await;
    let deps = real_google_holding(
        &w,
        chrono::Duration::zero(),
        false,
        Some(Duration::from_millis(1200)),
    );
    let (older, (status, newer)) =
        tokio::join!(apply_change(&deps, with_version("updated", 10, 2)), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            w.post_change(with_version("updated", 11, 3)).await
        });
    assert_eq!(status, 200, "{newer}");
    // v2 reached Google (its held write was answered), and was not written over v3.
    assert_eq!(older.calendars.len(), 1, "{older:?}");
    assert_ne!(older.calendars[0].outcome, "failed", "{older:?}");
    assert!(
        newer["calendars"][0]["outcome"] == "updated",
        "v3 was not written: {newer}"
    );
    w.sync(Cal::Google, &conn).await;
    let s = w.session("s1").await;
    assert_eq!(s.start, at(11), "v2 {older:?}, v3 {newer}: {:?}", s.history);
    assert_eq!(
        w.shown(Cal::Google, "ann", "s1")[0].start,
        at(11),
        "Google shows an older version of the booking"
    );
}
