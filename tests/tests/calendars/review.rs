//! Adversarial review of the calendar seam (issue #13): orderings of events, provider quirks
//! and inputs under which the two-way sync of Exchange and Google goes wrong. Each test is
//! one behaviour the feature promises and, at the time of the review, breaks.

use std::time::Duration;

use serde_json::{json, Value};
use voyage_core::model::SessionStatus;
use voyage_simulators::Fault;
use voyage_tests::calendars::{at, change_body, fault, Cal, CalendarsWorld, COMPANY};
use voyage_tests::graph::email;

/// The Google calendar's next request matching `method` and `path` fails with `status`.
fn google_fails_once(w: &CalendarsWorld, method: &str, path: &str, status: u16) {
    w.google.add_fault(fault(method, path, status, 1));
}

/// Google's next `events.list` is computed at once but answered `ms` later: a sync round
/// reads the calendar as it is now and reconciles it after whatever happens meanwhile.
fn google_list_answers_late(w: &CalendarsWorld, ms: u64) {
    w.google.add_fault(Fault {
        method: Some("GET".into()),
        path_contains: Some("/events".into()),
        status: None,
        retry_after: None,
        latency_ms: Some(ms),
        count: 1,
        after: 0,
        lose_answer: false,
    });
}

// ---------------------------------------------------------------------------------------
// Retries after a failure in one calendar
// ---------------------------------------------------------------------------------------

/// The route's contract: "a calendar that could not be written is `failed` with its reason,
/// and the same change sent again (it is idempotent) writes it". With a `version`, the
/// retry is `stale` as soon as Exchange has been written, and Google is never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_versioned_change_sent_again_after_google_failed_writes_google() {
    let (w, _exchange, _google) = CalendarsWorld::both().await;
    let mut body = change_body("created", "s1", "ann", 9);
    body["session"]["version"] = json!(1);
    google_fails_once(&w, "POST", "/events", 400);
    let (status, out) = w.post_change(body.clone()).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["calendars"][1]["provider"], "google", "{out}");
    assert_eq!(out["calendars"][1]["outcome"], "failed", "{out}");
    // The platform does what the answer asks: sends the same change again.
    let (status, out) = w.post_change(body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        w.shown(Cal::Google, "ann", "s1").len(),
        1,
        "the retry must write Google: {out}"
    );
}

// ---------------------------------------------------------------------------------------
// Declines
// ---------------------------------------------------------------------------------------

/// The staff member declines in Google; before the sync sees it, the platform edits the
/// session. The outbound write keeps the attendees (the decline) and records the new etag,
/// so the sync takes the declined event for our own echo and the decline is never flagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_decline_followed_by_a_platform_edit_before_the_sync_is_still_flagged() {
    let (w, conn) = CalendarsWorld::with(Cal::Google).await;
    w.change("created", "s1", 9).await;
    let event = w.one_event(Cal::Google, "ann", "s1");
    w.staff_decline(Cal::Google, "ann", &event);
    w.change("updated", "s1", 11).await;
    assert!(
        w.shown(Cal::Google, "ann", "s1")[0].declined,
        "the calendar still shows the decline"
    );
    w.sync(Cal::Google, &conn).await;
    assert!(w.session("s1").await.declined, "the decline was lost");
}

// ---------------------------------------------------------------------------------------
// Two calendars of one staff member
// ---------------------------------------------------------------------------------------

/// The staff member deletes the booking's event in Outlook: the cancellation is pending.
/// Google's sync then reads the Google copy of the event (the echo of our own create, not
/// yet seen), untouched, and takes it for a restore: the booking is confirmed again although
/// the staff member deleted it, and the Outlook calendar shows nothing for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_pending_cancellation_from_outlook_is_not_ended_by_the_echo_of_our_google_create()
{
    let (w, exchange, google) = CalendarsWorld::both().await;
    w.change("created", "s1", 9).await;
    let event = w.one_event(Cal::Exchange, "ann", "s1");
    w.staff_delete(Cal::Exchange, "ann", &event);
    w.sync(Cal::Exchange, &exchange).await;
    assert_eq!(
        w.session("s1").await.status,
        SessionStatus::PendingCancellation
    );
    // Google's sync of the untouched Google event (its only change is our own create).
    w.sync(Cal::Google, &google).await;
    let s = w.session("s1").await;
    assert_eq!(
        s.status,
        SessionStatus::PendingCancellation,
        "restored by an echo: {:?}",
        s.history
    );
}

/// The same, from the other side and with a token Google expired: a full resync of the
/// Exchange-deleted booking's Google calendar must not restore the booking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_pending_cancellation_from_outlook_survives_a_full_google_resync() {
    let (w, exchange, google) = CalendarsWorld::both().await;
    w.change("created", "s1", 9).await;
    // Google has seen our create already.
    w.sync(Cal::Google, &google).await;
    let event = w.one_event(Cal::Exchange, "ann", "s1");
    w.staff_delete(Cal::Exchange, "ann", &event);
    w.sync(Cal::Exchange, &exchange).await;
    google_fails_once(&w, "GET", "/events", 410);
    w.sync(Cal::Google, &google).await;
    assert_eq!(
        w.session("s1").await.status,
        SessionStatus::PendingCancellation
    );
}

/// The staff member deletes the Google event (pending); the platform moves the booking to
/// 11:00 (stored, written nowhere while pending); the staff member restores the Google
/// event: Google is written back to 11:00, but the Outlook event stays at 9:00 for good (a
/// restore is not followed into the other calendars, and the Outlook event, unchanged, is
/// in no later delta).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_platform_move_during_the_grace_reaches_the_other_calendar_after_the_restore() {
    let (w, exchange, google) = CalendarsWorld::both().await;
    w.change("created", "s1", 9).await;
    // Both calendars' syncs have seen our creates.
    w.sync(Cal::Exchange, &exchange).await;
    w.sync(Cal::Google, &google).await;
    let event = w.one_event(Cal::Google, "ann", "s1");
    w.staff_delete(Cal::Google, "ann", &event);
    w.sync(Cal::Google, &google).await;
    w.change("updated", "s1", 11).await;
    w.staff_restore(Cal::Google, "ann", &event);
    w.sync(Cal::Google, &google).await;
    w.sync(Cal::Exchange, &exchange).await;
    let s = w.session("s1").await;
    assert_eq!((s.status, s.start), (SessionStatus::Confirmed, at(11)));
    assert_eq!(w.shown(Cal::Google, "ann", "s1")[0].start, at(11));
    assert_eq!(
        w.shown(Cal::Exchange, "ann", "s1")[0].start,
        at(11),
        "Outlook still shows the old time of a confirmed booking"
    );
}

// ---------------------------------------------------------------------------------------
// A sync round's page, read before a platform write and reconciled after it
// ---------------------------------------------------------------------------------------

/// Google reuses the event id on re-booking (it is derived from the session), so the
/// `still_mapped` guard, which compares event ids, cannot tell the cancelled old event
/// read before the re-booking from the restored one: the new booking goes pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_cancellation_read_before_a_rebooking_does_not_put_the_new_booking_into_pending() {
    let (w, conn) = CalendarsWorld::with(Cal::Google).await;
    w.change("created", "s1", 9).await;
    w.change("cancelled", "s1", 9).await;
    google_list_answers_late(&w, 1500);
    let (_, out) = tokio::join!(w.sync(Cal::Google, &conn), async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        w.change("created", "s1", 10).await
    });
    assert_eq!(out["session_status"], "confirmed", "{out}");
    let s = w.session("s1").await;
    assert_eq!(
        s.status,
        SessionStatus::Confirmed,
        "the old event's deletion hit the new booking: {:?}",
        s.history
    );
}

/// Our own create (9:00) is read by a sync round; the platform moves the booking to 11:00
/// while the round is under way; the round then takes the read of our own earlier write for
/// a staff move and moves the booking back to 9:00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_our_own_earlier_write_read_before_a_platform_move_does_not_move_the_booking_back() {
    let (w, conn) = CalendarsWorld::with(Cal::Google).await;
    w.change("created", "s1", 9).await;
    google_list_answers_late(&w, 1500);
    tokio::join!(w.sync(Cal::Google, &conn), async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        w.change("updated", "s1", 11).await
    });
    let s = w.session("s1").await;
    assert_eq!(s.start, at(11), "history: {:?}", s.history);
    assert!(
        s.history.iter().all(|h| h.origin == "platform"),
        "an echo became a booking command: {:?}",
        s.history
    );
}

// ---------------------------------------------------------------------------------------
// Deleted events brought back
// ---------------------------------------------------------------------------------------

/// A create whose answer was lost (the Google call made the event; the mapping was never
/// recorded); the staff member deletes that event; the sync does not adopt a deleted event;
/// the next platform edit must not take the 409 on the placement's id for a re-booking and
/// restore the event the staff member deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_an_unrecorded_create_deleted_by_the_staff_member_is_not_brought_back_by_a_platform_edit(
) {
    let (w, conn) = CalendarsWorld::with(Cal::Google).await;
    // The first write fails, so nothing is mapped; the session is stored.
    google_fails_once(&w, "POST", "/events", 400);
    let out = w.change("created", "s1", 9).await;
    assert_eq!(out["calendars"][0]["outcome"], "failed", "{out}");
    // ...but (as with a lost answer) the event exists: made by exactly the same request.
    let deps = &w.app.local.deps;
    let account = voyage_core::google::credentials::load(deps, COMPANY)
        .await
        .unwrap()
        .unwrap();
    let session = w.session("s1").await;
    // The id the writer chose for this placement, recorded with the intent.
    let id = session
        .google_event
        .clone()
        .expect("the placement's id is recorded");
    let body = voyage_core::google::outbound::event_body(&session, &id, None);
    deps.google()
        .unwrap()
        .insert_event(&account, &email("ann"), &email("ann"), &body)
        .await
        .unwrap();
    w.staff_delete(Cal::Google, "ann", &id);
    w.sync(Cal::Google, &conn).await;
    w.change("updated", "s1", 11).await;
    assert!(
        w.shown(Cal::Google, "ann", "s1").is_empty(),
        "the event the staff member deleted is back"
    );
}

// ---------------------------------------------------------------------------------------
// Orphans
// ---------------------------------------------------------------------------------------

/// The platform gives the booking to another staff member: the event moves to bob's
/// calendar, and ann's calendar keeps a live, tagged event nobody maps any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_booking_given_to_another_staff_member_leaves_no_event_in_the_first_calendar() {
    let w = CalendarsWorld::start().await;
    w.connect(Cal::Google, "ann").await;
    w.connect(Cal::Google, "bob").await;
    w.change("created", "s1", 9).await;
    let (status, out) = w.post_change(change_body("updated", "s1", "bob", 9)).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(w.shown(Cal::Google, "bob", "s1").len(), 1, "{out}");
    assert!(
        w.shown(Cal::Google, "ann", "s1").is_empty(),
        "ann's calendar keeps an orphan: {:?}",
        w.shown(Cal::Google, "ann", "s1")
    );
}

// ---------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------

/// Malformed or extreme bodies are refused (4xx) or written (200), never a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_bad_input_to_the_changes_route_never_answers_5xx() {
    let (w, _e, _g) = CalendarsWorld::both().await;
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = change_body("created", "s9", "ann", 9);
        f(&mut b);
        b
    };
    let bodies = vec![
        json!(null),
        json!([]),
        json!("created"),
        json!({"action": "created"}),
        json!({"action": "deleted", "session": change_body("created", "s9", "ann", 9)["session"]}),
        with(&|b| b["session"]["version"] = json!(0)),
        with(&|b| b["session"]["version"] = json!(-1)),
        with(&|b| b["session"]["version"] = json!(1.5)),
        with(&|b| b["session"]["version"] = json!("1")),
        with(&|b| b["session"]["version"] = json!(u64::MAX)),
        with(&|b| b["session"]["start"] = json!("9999-12-31T22:00:00Z")),
        with(&|b| {
            b["session"]["start"] = json!("9999-12-31T22:00:00Z");
            b["session"]["end"] = json!("9999-12-31T23:00:00Z");
        }),
        with(&|b| {
            b["session"]["start"] = json!("0000-01-01T00:00:00Z");
            b["session"]["end"] = json!("0000-01-01T01:00:00Z");
        }),
        with(&|b| b["session"]["time_zone"] = json!("")),
        with(&|b| b["session"]["time_zone"] = json!("Etc/GMT+14")),
        with(&|b| b["session"]["title"] = json!("\u{0}")),
        with(&|b| b["session"]["title"] = json!("é".repeat(255))),
        with(&|b| b["session"]["location"] = json!("ü".repeat(255))),
        with(&|b| b["session"]["client"] = json!({"name": "x", "email": "not an email"})),
        with(&|b| b["session"]["client"] = json!(null)),
        with(&|b| b["session"]["id"] = json!("a".repeat(2000))),
        with(&|b| b["session"]["id"] = json!("../x")),
        with(&|b| b["session"]["company_id"] = json!("other-co")),
        with(&|b| b["session"]["staff_id"] = json!("nobody")),
        with(&|b| b["session"]["extra"] = json!(1)),
    ];
    let mut server_errors = Vec::new();
    for body in bodies {
        let (status, out) = w.post_change(body.clone()).await;
        if status >= 500 {
            server_errors.push(format!("{status} for {body}: {out}"));
        }
    }
    assert!(server_errors.is_empty(), "{server_errors:#?}");
}

/// The staff member moves the booking's event in both calendars, to different times, before
/// either sync runs: the two calendars and the booking settle on one time, without a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_conflicting_moves_in_both_calendars_settle_on_one_time_without_a_loop() {
    let (w, exchange, google) = CalendarsWorld::both().await;
    w.change("created", "s1", 9).await;
    w.sync(Cal::Exchange, &exchange).await;
    w.sync(Cal::Google, &google).await;
    let g = w.one_event(Cal::Google, "ann", "s1");
    let e = w.one_event(Cal::Exchange, "ann", "s1");
    w.staff_move(Cal::Google, "ann", &g, 14);
    w.staff_move(Cal::Exchange, "ann", &e, 16);
    for _ in 0..3 {
        w.sync(Cal::Google, &google).await;
        w.sync(Cal::Exchange, &exchange).await;
    }
    assert_eq!(w.sync(Cal::Google, &google).await, 0, "still looping");
    assert_eq!(w.sync(Cal::Exchange, &exchange).await, 0, "still looping");
    let s = w.session("s1").await;
    assert_eq!(w.shown(Cal::Google, "ann", "s1")[0].start, s.start);
    assert_eq!(w.shown(Cal::Exchange, "ann", "s1")[0].start, s.start);
}
