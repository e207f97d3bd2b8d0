//! Google all-day events are read in the calendar's time zone on every path: in a listing's
//! pages (which name the zone), and read one at a time outside a listing (after a full sync,
//! before a pending cancellation commits), where Google's answer does not name it and the
//! zone stored with the connection's cursor stands in.

use chrono::{DateTime, NaiveDate, Utc};
use voyage_core::model::SessionStatus;
use voyage_tests::calendars::{Cal, CalendarsWorld};
use voyage_tests::graph::email;

/// Ann's calendar is in Tokyo (UTC+9, no daylight saving time).
const ZONE: &str = "Asia/Tokyo";

/// Midnight at the start of `day` in Tokyo.
fn tokyo_midnight(day: NaiveDate) -> DateTime<Utc> {
    use chrono::TimeZone;
    chrono_tz::Asia::Tokyo
        .from_local_datetime(&day.and_hms_opt(0, 0, 0).unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

/// A day past the full sync's 180-day window: a full listing does not show it, so the
/// event is read on its own afterwards.
fn far_day() -> NaiveDate {
    (Utc::now() + chrono::Duration::days(250)).date_naive()
}

/// A Google world whose booking `s1` ann turned into an all-day event on [`far_day`], which
/// the incremental round that listed it applied: (world, connection, event id).
async fn all_day_booking() -> (CalendarsWorld, String, String) {
    let (w, conn) = CalendarsWorld::with(Cal::Google).await;
    w.google.set_time_zone(&email("ann"), ZONE);
    w.change("created", "s1", 9).await;
    let event = w.one_event(Cal::Google, "ann", "s1");
    let day = far_day();
    assert!(w.google.staff_make_all_day(&email("ann"), &event, day, day));
    w.sync(Cal::Google, &conn).await;
    let s = w.session("s1").await;
    assert_eq!(
        (s.start, s.end),
        (tokyo_midnight(day), tokyo_midnight(day.succ_opt().unwrap())),
        "the listing read the all-day event in the calendar's zone"
    );
    (w, conn, event)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_all_day_event_read_after_a_full_sync_is_read_in_the_calendars_zone() {
    let (w, conn, _) = all_day_booking().await;
    let before = w.session("s1").await;
    // A 410: the next round is a full sync, which does not list the far event and reads it
    // on its own.
    w.google.expire_sync_tokens();
    assert_eq!(w.sync(Cal::Google, &conn).await, 0);
    let after = w.session("s1").await;
    assert_eq!((after.start, after.end), (before.start, before.end));
    assert_eq!(after.version, before.version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_all_day_event_is_read_in_the_calendars_zone_before_a_cancellation_commits() {
    let (w, conn, event) = all_day_booking().await;
    let before = w.session("s1").await;
    w.staff_delete(Cal::Google, "ann", &event);
    w.sync(Cal::Google, &conn).await;
    assert_eq!(
        w.session("s1").await.status,
        SessionStatus::PendingCancellation
    );
    // Restored, and its push lost: the commit of the cancellation reads it first.
    w.staff_restore(Cal::Google, "ann", &event);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    w.commit_pending_cancellations().await;
    let after = w.session("s1").await;
    assert_eq!(after.status, SessionStatus::Confirmed);
    assert_eq!((after.start, after.end), (before.start, before.end));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sync_that_fails_after_a_410_leaves_the_calendars_zone_for_the_commit() {
    let (w, conn, event) = all_day_booking().await;
    let before = w.session("s1").await;
    w.staff_delete(Cal::Google, "ann", &event);
    w.sync(Cal::Google, &conn).await;
    w.staff_restore(Cal::Google, "ann", &event);
    // The next round meets a 410, starts a full sync, and fails on its first page.
    w.google.expire_sync_tokens();
    w.google.add_fault(voyage_simulators::Fault {
        after: 1,
        lose_answer: false,
        ..voyage_tests::calendars::fault("GET", "/events", 400, 1)
    });
    let mut c = w.connection(&conn).await;
    let report = voyage_core::google::sync::sync_connection(&w.app.local.deps, &mut c)
        .await
        .unwrap();
    assert!(
        report.skipped.is_some(),
        "the full sync was meant to fail: {report:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    w.commit_pending_cancellations().await;
    let after = w.session("s1").await;
    assert_eq!(after.status, SessionStatus::Confirmed);
    assert_eq!((after.start, after.end), (before.start, before.end));
}
