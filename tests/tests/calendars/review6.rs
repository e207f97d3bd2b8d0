//! Sixth review of the calendar seam: a booking command's follow-up
//! ([`voyage_core::calendar::follow`]) that a platform change overtakes *while the follow-up
//! is being written*, after the follow-up read the session and before its calendar write.
//!
//! The fix of the fifth review (`SessionChange::as_stored`, `Intent::Overtaken`) compares the
//! follow-up's copy with the session once, when the follow-up's write reads it. A platform
//! change stored and written to both calendars after that read is not seen there; the
//! follow-up's calendar write then meets the event the platform just wrote (412), and the
//! guard on that path (`exchange::outbound::superseded`, used by Exchange's `update` and by
//! Google's `Target::update`) tells a newer change only by its version (a follow-up has
//! none) or by other times or a cancellation. A platform change of the title, the location
//! or the client keeps the times: the follow-up reads the event again and writes its older
//! copy over it. The store keeps the platform's change; no sync round repairs the event
//! (its change key or etag is the follow-up's own write, and reconciliation compares times
//! only), so the calendar shows the old title until the session changes again.
//!
//! Each test runs the real sync round of the calendar the staff member changed, with the
//! other calendar's client wrapped so the platform's change runs to its end just before the
//! follow-up's first event update is sent: the order the race produces, made deterministic.

use std::sync::{Arc, Mutex};

use serde_json::json;
use voyage_core::calendar::changes::ChangesOutcome;
use voyage_core::deps::Deps;
use voyage_tests::calendars::{apply_change, at, versioned_body, Cal, CalendarsWorld, COMPANY};
use voyage_tests::graph::email;
use voyage_tests::hooked::{hooked, once, Write};
use voyage_tests::races::Meanwhile;

/// The platform's new title for `s1`.
const NEW_TITLE: &str = "Follow-up consultation";

/// What the platform's change answered, once it ran.
type Answer = Arc<Mutex<Option<ChangesOutcome>>>;

/// The platform's change of `s1`'s title (version 2, at `hour`:00: for a follow-up, the time
/// the platform has heard of from the staff member's move), as work to run meanwhile; its
/// answer lands in the returned slot.
fn platform_renames(w: &CalendarsWorld, hour: u32) -> (Meanwhile, Answer) {
    let world: Arc<Deps> = w.app.local.deps.clone();
    let answer: Answer = Arc::new(Mutex::new(None));
    let slot = answer.clone();
    let mut body = versioned_body("updated", "ann", hour, 2);
    body["session"]["title"] = json!(NEW_TITLE);
    let work: Meanwhile = Box::pin(async move {
        let out = apply_change(&world, body).await;
        *slot.lock().unwrap() = Some(out);
    });
    (work, answer)
}

/// The world's dependencies, with `meanwhile` run just before the first event update sent
/// to `cal`'s calendars.
fn before_first_update(w: &CalendarsWorld, cal: Cal, meanwhile: Meanwhile) -> Deps {
    before_first(w, cal, Write::Update, meanwhile)
}

/// The world's dependencies, with `meanwhile` run just before the first write of kind `at`
/// sent to `cal`'s calendars.
fn before_first(w: &CalendarsWorld, cal: Cal, at: Write, meanwhile: Meanwhile) -> Deps {
    hooked(&w.app.local.deps, cal.provider(), at, once(meanwhile))
}

/// ann's Exchange and Google calendars connected, `s1` booked with her at 9:00 (version 1,
/// titled "Consultation") and shown in both: (world, exchange conn, google conn).
async fn booked_in_both() -> (CalendarsWorld, String, String) {
    let (w, exchange, google) = CalendarsWorld::both().await;
    apply_change(&w.app.local.deps, versioned_body("created", "ann", 9, 1)).await;
    for cal in Cal::BOTH {
        assert_eq!(w.shown(cal, "ann", "s1").len(), 1, "{cal:?}");
    }
    (w, exchange, google)
}

/// The subject of `s1`'s one live event in ann's Exchange calendar, read through Graph.
async fn exchange_title(w: &CalendarsWorld, exchange: &str) -> Option<String> {
    let deps = &w.app.local.deps;
    let event = w.one_event(Cal::Exchange, "ann", "s1");
    let creds = voyage_core::exchange::credentials::load(deps, COMPANY)
        .await
        .unwrap()
        .expect("exchange credentials");
    let conn = w.connection(exchange).await;
    let calendar = voyage_core::exchange::channels::calendar_of(&conn);
    deps.graph()
        .unwrap()
        .get_event(&creds, &calendar, &event)
        .await
        .expect("the exchange event read")
        .subject
}

/// The summary of `s1`'s one live event in ann's Google calendar.
fn google_title(w: &CalendarsWorld) -> Option<String> {
    let event = w.one_event(Cal::Google, "ann", "s1");
    w.google
        .events_of(&email("ann"))
        .into_iter()
        .find(|e| e.id == event)
        .and_then(|e| e.summary)
}

/// Every sync round of both calendars, twice, and the outbound queue: what would repair a
/// calendar left behind, if anything did.
async fn settle(w: &CalendarsWorld, exchange: &str, google: &str) {
    for _ in 0..2 {
        w.sync(Cal::Exchange, exchange).await;
        w.sync(Cal::Google, google).await;
        w.drain_outbound().await;
    }
}

// ---------------------------------------------------------------------------------------
// The platform renames the booking while the follow-up of a staff member's move is written
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review6_a_platform_rename_written_while_a_staff_moves_follow_up_writes_exchange_is_not_reverted_in_exchange(
) {
    // Arrange: ann moved the Google event to 10:00. The Google sync round that reconciles it
    // (the Reschedule) writes the follow-up to Exchange; just before the follow-up's update
    // reaches Graph, after it read the session, the platform renames the booking (version 2,
    // at 10:00) and writes both calendars.
    let (w, exchange, google) = booked_in_both().await;
    let google_event = w.one_event(Cal::Google, "ann", "s1");
    w.staff_move(Cal::Google, "ann", &google_event, 10);
    let (rename, answer) = platform_renames(&w, 10);
    let racing = before_first_update(&w, Cal::Exchange, rename);

    // Act: the Google sync round runs with the race, then every round settles.
    let mut conn = w.connection(&google).await;
    voyage_core::google::sync::sync_connection(&racing, &mut conn)
        .await
        .unwrap();
    settle(&w, &exchange, &google).await;

    // Assert: the platform's rename stands in the store and in both calendars, at 10:00.
    let platform = answer.lock().unwrap().clone();
    assert!(platform.is_some(), "the platform's change ran meanwhile");
    let s = w.session("s1").await;
    assert_eq!(s.title, NEW_TITLE, "{:?}", s.history);
    assert_eq!(s.start, at(10), "{:?}", s.history);
    for cal in Cal::BOTH {
        let shown = w.shown(cal, "ann", "s1");
        assert_eq!(shown.len(), 1, "{cal:?}: {shown:?}");
        assert_eq!(shown[0].start, at(10), "{cal:?}: {shown:?}");
    }
    assert_eq!(google_title(&w).as_deref(), Some(NEW_TITLE), "google");
    assert_eq!(
        exchange_title(&w, &exchange).await.as_deref(),
        Some(NEW_TITLE),
        "exchange (the platform's change answered {platform:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review6_a_platform_rename_written_while_a_staff_moves_follow_up_writes_google_is_not_reverted_in_google(
) {
    // Arrange: ann moved the Exchange event to 10:00. The Exchange delta round that
    // reconciles it (the Reschedule) writes the follow-up to Google; just before the
    // follow-up's update reaches Google, after it read the session, the platform renames the
    // booking (version 2, at 10:00) and writes both calendars.
    let (w, exchange, google) = booked_in_both().await;
    let exchange_event = w.one_event(Cal::Exchange, "ann", "s1");
    w.staff_move(Cal::Exchange, "ann", &exchange_event, 10);
    let (rename, answer) = platform_renames(&w, 10);
    let racing = before_first_update(&w, Cal::Google, rename);

    // Act: the Exchange delta round runs with the race, then every round settles.
    let req = voyage_core::exchange::push::SyncRequest {
        company_id: COMPANY.into(),
        connection_id: exchange.clone(),
        subscription_id: String::new(),
        reason: "notification".into(),
    };
    voyage_core::exchange::sync::handle(&racing, &req)
        .await
        .unwrap();
    settle(&w, &exchange, &google).await;

    // Assert: the platform's rename stands in the store and in both calendars, at 10:00.
    let platform = answer.lock().unwrap().clone();
    assert!(platform.is_some(), "the platform's change ran meanwhile");
    let s = w.session("s1").await;
    assert_eq!(s.title, NEW_TITLE, "{:?}", s.history);
    assert_eq!(s.start, at(10), "{:?}", s.history);
    for cal in Cal::BOTH {
        let shown = w.shown(cal, "ann", "s1");
        assert_eq!(shown.len(), 1, "{cal:?}: {shown:?}");
        assert_eq!(shown[0].start, at(10), "{cal:?}: {shown:?}");
    }
    assert_eq!(
        exchange_title(&w, &exchange).await.as_deref(),
        Some(NEW_TITLE),
        "exchange"
    );
    assert_eq!(
        google_title(&w).as_deref(),
        Some(NEW_TITLE),
        "google (the platform's change answered {platform:?})"
    );
}

// ---------------------------------------------------------------------------------------
// An older platform change whose Google insert finds the newer change's event
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review6_an_older_platform_change_whose_google_insert_finds_the_newer_changes_event_does_not_write_over_it(
) {
    // Arrange: the platform books `s1` (version 1) and renames it (version 2) at once. The
    // booking has recorded its intent (with the Google event's id) and written Exchange; just
    // before its Google insert is sent, the rename is written from start to end (it finds no
    // Google event mapped, inserts the event under the id the intent recorded, and maps it).
    let (w, exchange, google) = CalendarsWorld::both().await;
    let (rename, answer) = platform_renames(&w, 9);
    let racing = before_first(&w, Cal::Google, Write::Create, rename);

    // Act: the booking is written with the race, then every round settles.
    let booking = apply_change(&racing, versioned_body("created", "ann", 9, 1)).await;
    settle(&w, &exchange, &google).await;

    // Assert: the newer change (the rename) stands in the store and in both calendars.
    let platform = answer.lock().unwrap().clone();
    assert!(platform.is_some(), "the rename ran meanwhile");
    let s = w.session("s1").await;
    assert_eq!(s.title, NEW_TITLE, "{:?}", s.history);
    assert_eq!(s.platform_version, Some(2), "{:?}", s.history);
    for cal in Cal::BOTH {
        let shown = w.shown(cal, "ann", "s1");
        assert_eq!(shown.len(), 1, "{cal:?}: {shown:?}");
        assert_eq!(shown[0].start, at(9), "{cal:?}: {shown:?}");
    }
    assert_eq!(
        exchange_title(&w, &exchange).await.as_deref(),
        Some(NEW_TITLE),
        "exchange"
    );
    assert_eq!(
        google_title(&w).as_deref(),
        Some(NEW_TITLE),
        "google (the booking answered {booking:?}; the rename answered {platform:?})"
    );
}
