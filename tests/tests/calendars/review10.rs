//! Review 10 (2026-12-02): a cold adversarial review of the `session.restored` sent when the
//! platform gives a booking whose cancellation is pending to another staff member. Each test
//! shows a finding; the fix is in the code it names.

use voyage_core::model::SessionStatus;
use voyage_tests::calendars::{
    apply_change, at, fault, try_apply_change, versioned_body, Cal, CalendarsWorld,
};

/// Finding 1: the reassigning write publishes its `session.restored` right after its intent
/// commit and clears it from the outbox with a second write. When another change (the
/// booking given back) wins that second write, the reassigning write went on with the other
/// change's session (`booking::publish_outbox` re-reads on a lost race), so it took the
/// other placement's pending id for its own and left an event in bob's calendar.
async fn a_reassignment_overtaken_while_it_publishes_leaves_no_event_behind(cal: Cal) {
    // Arrange: ann and bob connected; booked with ann (v1), who deletes the event: pending.
    let (w, ann) = CalendarsWorld::with(cal).await;
    w.connect(cal, "bob").await;
    let world = w.app.local.deps.clone();
    apply_change(&world, versioned_body("created", "ann", 9, 1)).await;
    let made = w.one_event(cal, "ann", "s1");
    w.staff_delete(cal, "ann", &made);
    w.sync(cal, &ann).await;
    assert_eq!(
        w.session("s1").await.status,
        SessionStatus::PendingCancellation
    );
    // The booking given back to ann (v3) lands between v2's intent and its outbox write.
    let elsewhere = world.clone();
    let meanwhile: voyage_tests::races::Meanwhile = Box::pin(async move {
        apply_change(&elsewhere, versioned_body("updated", "ann", 9, 3)).await;
    });
    let racing = voyage_tests::races::overtaken_at_session_put(&world, meanwhile);

    // Act: v2 gives the booking to bob.
    let answer = try_apply_change(&racing, versioned_body("updated", "bob", 9, 2)).await;

    // Assert: the booking is ann's with one event of hers, none left with bob.
    let s = w.session("s1").await;
    assert_eq!(
        (s.staff_id.as_str(), s.status),
        ("ann", SessionStatus::Confirmed),
        "{cal:?}: {:?}",
        s.history
    );
    assert_eq!(w.shown(cal, "bob", "s1"), vec![], "{cal:?}: {answer:?}");
    assert_eq!(w.shown(cal, "ann", "s1").len(), 1, "{cal:?}: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review10_an_exchange_reassignment_overtaken_while_it_publishes_leaves_no_event_behind() {
    a_reassignment_overtaken_while_it_publishes_leaves_no_event_behind(Cal::Exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review10_a_google_reassignment_overtaken_while_it_publishes_leaves_no_event_behind() {
    a_reassignment_overtaken_while_it_publishes_leaves_no_event_behind(Cal::Google).await;
}

/// Black-box finding (review 10, helper run): a staff member's move read only after the
/// platform's newer move of the same booking was written (a slow page: read before the
/// write, answered after it) was taken for a move made since, and rescheduled the booking
/// back to it: the platform's change was lost, and the tenant told of a move made earlier.
async fn a_move_read_from_a_page_older_than_the_platforms_write_does_not_undo_it(cal: Cal) {
    // Arrange: booked at 9:00 (v1) and seen; ann drags it to 10:00. The sync's page is read
    // now, and answered only after the platform has moved the booking to 11:00 (v2).
    let (w, conn) = CalendarsWorld::with(cal).await;
    let world = w.app.local.deps.clone();
    apply_change(&world, versioned_body("created", "ann", 9, 1)).await;
    w.sync(cal, &conn).await;
    let event = w.one_event(cal, "ann", "s1");
    w.staff_move(cal, "ann", &event, 10);
    let elsewhere = world.clone();
    let meanwhile: voyage_tests::races::Meanwhile = Box::pin(async move {
        apply_change(&elsewhere, versioned_body("updated", "ann", 11, 2)).await;
    });
    let slow_page = voyage_tests::hooked::hooked(
        &world,
        cal.provider(),
        voyage_tests::hooked::Write::Read,
        voyage_tests::hooked::once(meanwhile),
    );

    // Act
    w.sync_with(&slow_page, cal, &conn).await;
    w.sync(cal, &conn).await;

    // Assert: the platform's 11:00 stands, in the session and the calendar.
    let s = w.session("s1").await;
    assert_eq!(s.start, at(11), "{cal:?}: {:?}", s.history);
    assert!(
        s.history.iter().all(|h| h.command != "reschedule"),
        "{cal:?}: {:?}",
        s.history
    );
    let shown = w.shown(cal, "ann", "s1");
    assert_eq!(shown.len(), 1, "{cal:?}: {shown:?}");
    assert_eq!(shown[0].start, at(11), "{cal:?}: {shown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review10_an_exchange_move_read_from_a_page_older_than_the_platforms_write_does_not_undo_it(
) {
    a_move_read_from_a_page_older_than_the_platforms_write_does_not_undo_it(Cal::Exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review10_a_google_move_read_from_a_page_older_than_the_platforms_write_does_not_undo_it() {
    a_move_read_from_a_page_older_than_the_platforms_write_does_not_undo_it(Cal::Google).await;
}

/// Black-box finding (review 10, helper run), the other order: the sync reads the staff
/// member's earlier move while the platform's newer move is recorded but not yet written.
/// The booking was rescheduled to the staff member's time and the platform's write
/// answered `superseded`: the newer change lost to the older one.
async fn a_move_made_before_the_platforms_newer_move_does_not_win_over_it(cal: Cal) {
    // Arrange: booked at 9:00 (v1) and seen; ann drags it to 10:00; the sync runs just as
    // the platform's write of 11:00 (v2) is about to reach the calendar.
    let (w, conn) = CalendarsWorld::with(cal).await;
    let world = w.app.local.deps.clone();
    apply_change(&world, versioned_body("created", "ann", 9, 1)).await;
    w.sync(cal, &conn).await;
    let event = w.one_event(cal, "ann", "s1");
    w.staff_move(cal, "ann", &event, 10);
    // (The platform's change comes later than the move, by the provider's clock too.)
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let app = w.app.local.deps.clone();
    let conn_id = conn.clone();
    let meanwhile: voyage_tests::races::Meanwhile = Box::pin(async move {
        match cal {
            Cal::Exchange => {
                let req = voyage_core::exchange::push::SyncRequest {
                    company_id: "acme".into(),
                    connection_id: conn_id,
                    subscription_id: String::new(),
                    reason: "notification".into(),
                };
                voyage_core::exchange::sync::handle(&app, &req)
                    .await
                    .unwrap();
            }
            Cal::Google => {
                let mut c = app.store.get_connection("acme", &conn_id).await.unwrap();
                voyage_core::google::sync::sync_connection(&app, &mut c)
                    .await
                    .unwrap();
            }
        }
    });
    let racing = voyage_tests::hooked::hooked(
        &world,
        cal.provider(),
        voyage_tests::hooked::Write::Update,
        voyage_tests::hooked::once(meanwhile),
    );

    // Act
    let answer = try_apply_change(&racing, versioned_body("updated", "ann", 11, 2)).await;
    w.sync(cal, &conn).await;

    // Assert: the platform's 11:00 stands.
    let s = w.session("s1").await;
    assert_eq!(s.start, at(11), "{cal:?}: {answer:?} {:?}", s.history);
    let shown = w.shown(cal, "ann", "s1");
    assert_eq!(shown.len(), 1, "{cal:?}: {shown:?}");
    assert_eq!(shown[0].start, at(11), "{cal:?}: {shown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review10_an_exchange_move_made_before_the_platforms_newer_move_does_not_win_over_it() {
    a_move_made_before_the_platforms_newer_move_does_not_win_over_it(Cal::Exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review10_a_google_move_made_before_the_platforms_newer_move_does_not_win_over_it() {
    a_move_made_before_the_platforms_newer_move_does_not_win_over_it(Cal::Google).await;
}

/// Review of the fix above: only a platform change that moved the booking counts. A move the
/// staff member made after the platform's move (whose write failed), followed by a
/// title-only change (its write failing too), was written back as if it were older.
async fn a_move_made_after_the_platforms_unwritten_move_is_a_request_whatever_came_after(cal: Cal) {
    // Arrange: booked at 9:00 (v1) and seen; every write to ann's calendar fails from now
    // on; the platform moves the booking to 11:00 (v2).
    let (w, conn) = CalendarsWorld::with(cal).await;
    let world = w.app.local.deps.clone();
    apply_change(&world, versioned_body("created", "ann", 9, 1)).await;
    w.sync(cal, &conn).await;
    let event = w.one_event(cal, "ann", "s1");
    match cal {
        Cal::Exchange => w.graph.add_fault(fault("PATCH", "ann", 400, 1000)),
        Cal::Google => w.google.add_fault(fault("PUT", "ann", 400, 1000)),
    }
    let _ = try_apply_change(&world, versioned_body("updated", "ann", 11, 2)).await;
    // ann, still seeing 9:00, drags it to 10:00; then the platform renames the booking
    // (v3, the same times).
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    w.staff_move(cal, "ann", &event, 10);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut renamed = versioned_body("updated", "ann", 11, 3);
    renamed["session"]["title"] = serde_json::json!("Consultation (renamed)");
    let _ = try_apply_change(&world, renamed).await;

    // Act
    w.sync(cal, &conn).await;

    // Assert: ann's move, made after the platform's, is hers.
    let s = w.session("s1").await;
    assert_eq!(s.start, at(10), "{cal:?}: {:?}", s.history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review10_an_exchange_move_made_after_the_platforms_unwritten_move_is_a_request_whatever_came_after(
) {
    a_move_made_after_the_platforms_unwritten_move_is_a_request_whatever_came_after(Cal::Exchange)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review10_a_google_move_made_after_the_platforms_unwritten_move_is_a_request_whatever_came_after(
) {
    a_move_made_after_the_platforms_unwritten_move_is_a_request_whatever_came_after(Cal::Google)
        .await;
}
