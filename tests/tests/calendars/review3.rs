//! Third adversarial review of the calendar seam (issue #13), after af8decc..6480550: what
//! the orphan deletion, the owner check and the queued follow-ups can destroy.

#![allow(dead_code, unused_imports)]

use std::time::Duration;

use serde_json::{json, Value};
use voyage_core::model::SessionStatus;
use voyage_simulators::Fault;
use voyage_tests::calendars::{apply_change, at, change_body, fault, Cal, CalendarsWorld, COMPANY};
use voyage_tests::graph::email;

/// Connects `staff`'s Google access to `calendar_id` (any calendar: a shared one, a
/// delegated one); returns the connection id, after its first sync.
async fn connect_google_to(w: &CalendarsWorld, staff: &str, calendar_id: &str) -> String {
    let (status, conn) = w
        .app
        .call(
            "POST",
            "/v1/connections",
            &w.tenant,
            Some(json!({"provider": "google", "staff_id": staff,
                "staff_email": email(staff), "calendar_id": calendar_id})),
        )
        .await;
    assert_eq!(status, 201, "{conn}");
    let id = conn["id"].as_str().unwrap().to_string();
    w.sync(Cal::Google, &id).await;
    id
}

/// The live platform events of `session` in the Google calendar `calendar_id`.
fn live_in(w: &CalendarsWorld, calendar_id: &str, session: &str) -> Vec<String> {
    let tag = format!("{COMPANY}/{session}");
    w.google
        .events_of(calendar_id)
        .into_iter()
        .filter(|e| e.session_tag.as_deref() == Some(&tag) && e.status != "cancelled")
        .map(|e| e.id)
        .collect()
}

// ---------------------------------------------------------------------------------------
// The orphan deletion (google::inbound::adopt)
// ---------------------------------------------------------------------------------------

/// Two staff members whose connections reach the same Google calendar (a team calendar, or
/// an assistant's connection to the calendar they manage). Bob's booking is written there
/// through bob's connection; ann's sync lists it, finds no mapping *of ann's connection*,
/// and `adopt` deletes it as an orphan (its session is bob's). Bob's next sync then reads
/// that deletion as bob's own: the booking goes into pending cancellation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review3_a_booking_in_a_calendar_two_connections_share_is_not_deleted_by_the_other_connections_sync(
) {
    let w = CalendarsWorld::start().await;
    let team = "team@contoso.example";
    let ann = connect_google_to(&w, "ann", team).await;
    let bob = connect_google_to(&w, "bob", team).await;
    let (status, out) = w.post_change(change_body("created", "s1", "bob", 9)).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(live_in(&w, team, "s1").len(), 1, "{out}");
    w.sync(Cal::Google, &ann).await;
    assert_eq!(
        live_in(&w, team, "s1").len(),
        1,
        "ann's sync deleted bob's booking's only event"
    );
    w.sync(Cal::Google, &bob).await;
    let s = w.session("s1").await;
    assert_eq!(s.status, SessionStatus::Confirmed, "{:?}", s.history);
}

/// The Google connection is deleted and connected again (a re-consent, a changed calendar
/// id put back). The deletion took the mappings with it; the booking's event is still in
/// the calendar, with its per-placement id, and `Session::google_event` was cleared when it
/// was mapped. The new connection's first sync finds the event unmapped, and neither the
/// recorded id nor the derived one matches: `adopt` deletes the booking's only event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review3_a_google_connection_deleted_and_connected_again_keeps_the_bookings_event() {
    let w = CalendarsWorld::start().await;
    let conn = w.connect(Cal::Google, "ann").await;
    w.change("created", "s1", 9).await;
    w.sync(Cal::Google, &conn).await;
    assert_eq!(w.shown(Cal::Google, "ann", "s1").len(), 1);
    let (status, body) = w
        .app
        .call(
            "DELETE",
            &format!("/v1/connections/{conn}"),
            &w.tenant,
            None,
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    w.connect(Cal::Google, "ann").await;
    assert_eq!(
        w.shown(Cal::Google, "ann", "s1").len(),
        1,
        "the new connection's first sync deleted the live booking's event"
    );
}

// ---------------------------------------------------------------------------------------
// A session given to another staff member and back
// ---------------------------------------------------------------------------------------

/// The booking is given to bob: ann's event is deleted first (`remove_elsewhere`), then
/// bob's calendar cannot be written (the change answers `failed`). The mapping still links
/// the session to ann's deleted event. The platform gives the booking back to ann: the
/// mapping is of ann's connection, so no create is owed; the update finds the event deleted
/// (`EventGone`) and the booking goes into pending cancellation - a deletion that was ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review3_a_booking_given_back_to_ann_after_bobs_calendar_failed_is_not_put_into_pending_cancellation(
) {
    let w = CalendarsWorld::start().await;
    w.connect(Cal::Google, "ann").await;
    w.connect(Cal::Google, "bob").await;
    w.change("created", "s1", 9).await;
    w.google.add_fault(fault("POST", "bob", 400, 5));
    let (status, out) = w.post_change(change_body("updated", "s1", "bob", 9)).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["calendars"][0]["outcome"], "failed", "{out}");
    let (status, out) = w.post_change(change_body("updated", "s1", "ann", 9)).await;
    assert_eq!(status, 200, "{out}");
    let s = w.session("s1").await;
    assert_eq!(
        s.status,
        SessionStatus::Confirmed,
        "given back to ann: {out} {:?}",
        s.history
    );
    assert_eq!(w.shown(Cal::Google, "ann", "s1").len(), 1, "{out}");
}

// ---------------------------------------------------------------------------------------
// A create's insert and its closing commit
// ---------------------------------------------------------------------------------------

use std::sync::Arc;

/// The booking is given to bob. Bob's new event is inserted; before the create's closing
/// commit maps it, bob's sync (a push of that very insert) lists it. `adopt` finds the
/// placement's id but the session's Google mapping still names ann's event (`mapped` is
/// `Some`), so the new event is not "current": it is deleted as an orphan. The closing
/// commit then maps the deleted event, and bob's next sync reads the deletion as bob's:
/// the booking goes into pending cancellation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review3_a_sync_between_the_insert_and_the_closing_commit_of_a_booking_given_to_bob_keeps_bobs_event(
) {
    let w = CalendarsWorld::start().await;
    w.connect(Cal::Google, "ann").await;
    let bob = w.connect(Cal::Google, "bob").await;
    w.change("created", "s1", 9).await;
    // Bob's sync runs right before the create's closing commit (its first mapping write),
    // by construction rather than by timing.
    let world = w.app.local.deps.clone();
    let inserted = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let meanwhile: voyage_tests::races::Meanwhile = {
        let (deps, google, inserted) = (world.clone(), w.google.clone(), inserted.clone());
        let mut conn = w.connection(&bob).await;
        Box::pin(async move {
            let tag = format!("{COMPANY}/s1");
            let shown = google
                .events_of(&email("bob"))
                .into_iter()
                .filter(|e| e.session_tag.as_deref() == Some(&tag) && e.status != "cancelled")
                .count();
            inserted.store(shown, std::sync::atomic::Ordering::SeqCst);
            voyage_core::google::sync::sync_connection(&deps, &mut conn)
                .await
                .unwrap();
        })
    };
    let deps = voyage_tests::races::overtaken_at_mapping(&world, meanwhile);
    let out = apply_change(&deps, change_body("updated", "s1", "bob", 9)).await;
    // The race as described: the insert is in bob's calendar, its commit not yet.
    assert_eq!(
        inserted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "bob's sync did not run between the insert and its commit: no race"
    );
    assert_eq!(
        w.shown(Cal::Google, "bob", "s1").len(),
        1,
        "bob's sync deleted the new event as an orphan: {out:?}"
    );
    w.sync(Cal::Google, &bob).await;
    let s = w.session("s1").await;
    assert_eq!(
        s.status,
        SessionStatus::Confirmed,
        "{out:?}: {:?}",
        s.history
    );
}

// ---------------------------------------------------------------------------------------
// The queued follow-up
// ---------------------------------------------------------------------------------------

/// The staff member moves the Google event to 10:00; the sync reschedules the booking, and
/// its follow-up into Outlook fails (queued). Before the queue is handled the staff member
/// moves the Google event again, to 11:00. The follow-up writes the session as stored
/// (10:00) to *every* calendar, the one the move came from included: Google answers 412,
/// the event is re-read and overwritten with 10:00 (not "superseded": the stored times are
/// the follow-up's own), and the write's etag is ours, so the sync never sees the second
/// move. The staff member's last move is lost without a trace (no reschedule, no rejection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review3_a_queued_follow_up_does_not_overwrite_a_second_move_in_the_calendar_it_came_from()
{
    let w = CalendarsWorld::start().await;
    let exchange = w.connect(Cal::Exchange, "ann").await;
    let google = w.connect(Cal::Google, "ann").await;
    w.change("created", "s1", 9).await;
    w.sync(Cal::Exchange, &exchange).await;
    w.sync(Cal::Google, &google).await;
    let g = w.shown(Cal::Google, "ann", "s1")[0].id.clone();
    w.graph.add_fault(fault("PATCH", "/events", 400, 1));
    w.staff_move(Cal::Google, "ann", &g, 10);
    w.sync(Cal::Google, &google).await;
    assert_eq!(w.session("s1").await.start, at(10));
    w.staff_move(Cal::Google, "ann", &g, 11);
    w.drain_outbound().await;
    w.sync(Cal::Google, &google).await;
    w.drain_outbound().await;
    w.sync(Cal::Exchange, &exchange).await;
    let s = w.session("s1").await;
    assert_eq!(
        w.shown(Cal::Google, "ann", "s1")[0].start,
        at(11),
        "the staff member's second move was overwritten by the follow-up: {:?}",
        s.history
    );
    assert_eq!(s.start, at(11), "{:?}", s.history);
}
