//! Eighth review of the calendar seam (a cold adversarial review, 2026-12-02).
//!
//! Finding 1: a booking cancelled by the staff member's deletion was booked again by the
//! platform's retry of the re-booking that preceded it. The re-booking's write (v3) could
//! not delete the earlier placement's event, so it answered `failed`, and a retry of a
//! version whose calendar write is done stays due while such an event is left
//! ([`voyage_core::exchange::outbound::is_stale`]); the retry then merged `created` over the
//! cancelled session, which booked it again, after `session.cancelled` had been sent.

use std::time::Duration;

use voyage_core::model::SessionStatus;
use voyage_tests::calendars::{
    apply_change, at, fault, try_apply_change, versioned_body, Cal, CalendarsWorld,
};

/// Booked (v1), cancelled (v2), booked again (v3) while the calendar refuses the old
/// event's deletion once; the staff member deletes the new event, and the cancellation is
/// committed after its grace; then the platform retries v3.
async fn a_retried_rebooking_does_not_undo_the_cancellation_that_answered_it(cal: Cal) {
    // Arrange: v1, v2; v3 fails to delete the first placement's event.
    let (w, conn) = CalendarsWorld::with(cal).await;
    let world = w.app.local.deps.clone();
    apply_change(&world, versioned_body("created", "ann", 9, 1)).await;
    apply_change(&world, versioned_body("cancelled", "ann", 9, 2)).await;
    match cal {
        Cal::Exchange => w.graph.add_fault(fault("DELETE", "ann", 500, 1)),
        // (Google's client tries a 5xx four times.)
        Cal::Google => w.google.add_fault(fault("DELETE", "ann", 500, 4)),
    }
    let rebooked = try_apply_change(&world, versioned_body("created", "ann", 9, 3))
        .await
        .expect("the change applied");
    assert!(rebooked.any_failed(), "{cal:?}: {rebooked:?}");
    let new_event = w.one_event(cal, "ann", "s1");
    // The staff member deletes it; after the grace, the cancellation is committed.
    w.sync(cal, &conn).await;
    w.staff_delete(cal, "ann", &new_event);
    w.sync(cal, &conn).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.commit_pending_cancellations().await;
    assert_eq!(
        w.session("s1").await.status,
        SessionStatus::Cancelled,
        "{cal:?}"
    );

    // Act: the platform retries v3.
    let retried = try_apply_change(&world, versioned_body("created", "ann", 9, 3))
        .await
        .expect("the change applied");

    // Assert: still cancelled, and nothing of the booking in her calendar.
    let s = w.session("s1").await;
    assert_eq!(
        s.status,
        SessionStatus::Cancelled,
        "{cal:?}: {retried:?} {:?}",
        s.history
    );
    assert_eq!(retried.session_status, SessionStatus::Cancelled, "{cal:?}");
    assert_eq!(w.shown(cal, "ann", "s1"), vec![], "{cal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review8_a_retried_exchange_rebooking_does_not_undo_the_staff_members_cancellation() {
    a_retried_rebooking_does_not_undo_the_cancellation_that_answered_it(Cal::Exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review8_a_retried_google_rebooking_does_not_undo_the_staff_members_cancellation() {
    a_retried_rebooking_does_not_undo_the_cancellation_that_answered_it(Cal::Google).await;
}

/// Finding 5: ann declines; the booking is given to bob, who declines too.
async fn a_decline_is_of_the_placement_and_the_next_staff_members_is_flagged_again(cal: Cal) {
    // Arrange: booked with ann, who declines; her calendar is synced.
    let (w, ann) = CalendarsWorld::with(cal).await;
    let bob = w.connect(cal, "bob").await;
    let world = w.app.local.deps.clone();
    apply_change(&world, versioned_body("created", "ann", 9, 1)).await;
    let hers = w.one_event(cal, "ann", "s1");
    w.staff_decline(cal, "ann", &hers);
    w.sync(cal, &ann).await;
    assert!(w.session("s1").await.declined, "{cal:?}: flagged");

    // Act: given to bob (v2), who declines his event; his calendar is synced.
    apply_change(&world, versioned_body("updated", "bob", 9, 2)).await;
    let reassigned = w.session("s1").await;
    let his = w.one_event(cal, "bob", "s1");
    w.staff_decline(cal, "bob", &his);
    w.sync(cal, &bob).await;

    // Assert: not declined once given to bob; his decline flagged again.
    assert!(!reassigned.declined, "{cal:?}: ann's decline is not bob's");
    let s = w.session("s1").await;
    assert!(s.declined, "{cal:?}: {:?}", s.history);
    let flags = s
        .history
        .iter()
        .filter(|h| h.command == "flag_decline")
        .count();
    assert_eq!(flags, 2, "{cal:?}: {:?}", s.history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review8_an_exchange_decline_is_flagged_again_for_the_next_staff_member() {
    a_decline_is_of_the_placement_and_the_next_staff_members_is_flagged_again(Cal::Exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review8_a_google_decline_is_flagged_again_for_the_next_staff_member() {
    a_decline_is_of_the_placement_and_the_next_staff_members_is_flagged_again(Cal::Google).await;
}

/// Finding 2: ann deleted the event before any sync saw it; the platform's next change for
/// her (v2) finds it gone, and the booking is given to bob (v3) between that write's commit
/// and its command starting the pending cancellation.
async fn a_deletion_found_by_a_write_does_not_cancel_a_booking_given_away_meanwhile(cal: Cal) {
    // Arrange: booked with ann (v1); she deletes the event; bob has a calendar too.
    let (w, _ann) = CalendarsWorld::with(cal).await;
    w.connect(cal, "bob").await;
    let world = w.app.local.deps.clone();
    apply_change(&world, versioned_body("created", "ann", 9, 1)).await;
    let hers = w.one_event(cal, "ann", "s1");
    w.staff_delete(cal, "ann", &hers);
    let elsewhere = world.clone();
    let meanwhile: voyage_tests::races::Meanwhile = Box::pin(async move {
        apply_change(&elsewhere, versioned_body("updated", "bob", 9, 3)).await;
    });
    let racing = voyage_tests::races::overtaken_at_session_put(&world, meanwhile);

    // Act: v2 for ann is written (finding her event gone) while v3 gives it to bob.
    let answer = try_apply_change(&racing, versioned_body("updated", "ann", 10, 2)).await;

    // Assert: bob's booking is not put into pending cancellation by ann's deletion, and
    // stays booked after the grace.
    let s = w.session("s1").await;
    assert_eq!(s.staff_id, "bob", "{cal:?}");
    assert_eq!(
        s.status,
        SessionStatus::Confirmed,
        "{cal:?}: {:?}",
        s.history
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.commit_pending_cancellations().await;
    let s = w.session("s1").await;
    assert_eq!(
        s.status,
        SessionStatus::Confirmed,
        "{cal:?}: {:?}",
        s.history
    );
    assert_eq!(w.shown(cal, "bob", "s1").len(), 1, "{cal:?}");
    // v2's answer says it was overtaken, not that a cancellation is pending.
    let answer = answer.expect("the change applied");
    let ann_s = answer
        .calendars
        .iter()
        .find(|c| c.outcome != "no_connection");
    assert!(
        ann_s.is_some_and(|c| c.outcome == "superseded"),
        "{cal:?}: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review8_an_exchange_deletion_found_by_a_write_does_not_cancel_a_booking_given_away_meanwhile(
) {
    a_deletion_found_by_a_write_does_not_cancel_a_booking_given_away_meanwhile(Cal::Exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review8_a_google_deletion_found_by_a_write_does_not_cancel_a_booking_given_away_meanwhile()
{
    a_deletion_found_by_a_write_does_not_cancel_a_booking_given_away_meanwhile(Cal::Google).await;
}

/// Finding 3 (Google): the insert's answer is lost (every try answered 503 after the event
/// was made), ann deletes the event, and the platform's retry finds it through the taken id,
/// deleted: mapped then, but the pending cancellation's own write fails. Answers what the
/// calendar shows then.
async fn a_deletion_found_through_a_taken_id_whose_command_failed() -> (CalendarsWorld, String) {
    let (w, conn) = CalendarsWorld::with(Cal::Google).await;
    let world = w.app.local.deps.clone();
    w.google.add_fault(voyage_simulators::Fault {
        lose_answer: true,
        ..fault("POST", "ann", 503, 4)
    });
    let lost = try_apply_change(&world, versioned_body("created", "ann", 9, 1))
        .await
        .expect("the change applied");
    assert!(lost.any_failed(), "{lost:?}");
    let made = w.one_event(Cal::Google, "ann", "s1");
    w.staff_delete(Cal::Google, "ann", &made);
    let refusing = voyage_tests::races::losing_every_session_put(&world);
    assert!(
        try_apply_change(&refusing, versioned_body("created", "ann", 9, 1))
            .await
            .is_err()
    );
    (w, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review8_a_google_deletion_found_through_a_taken_id_is_not_undone_by_the_next_retry() {
    // Arrange: see above.
    let (w, _conn) = a_deletion_found_through_a_taken_id_whose_command_failed().await;
    let world = w.app.local.deps.clone();

    // Act: the platform retries once more.
    let _ = try_apply_change(&world, versioned_body("created", "ann", 9, 1)).await;

    // Assert: the deletion stands: pending, and the event not brought back.
    let s = w.session("s1").await;
    assert_eq!(
        s.status,
        SessionStatus::PendingCancellation,
        "{:?}",
        s.history
    );
    assert_eq!(w.shown(Cal::Google, "ann", "s1"), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review8_a_google_deletion_found_through_a_taken_id_is_not_taken_for_an_echo_by_the_sync() {
    // Arrange: see above.
    let (w, conn) = a_deletion_found_through_a_taken_id_whose_command_failed().await;

    // Act: the calendar is synced.
    w.sync(Cal::Google, &conn).await;

    // Assert: the deletion is seen: pending.
    let s = w.session("s1").await;
    assert_eq!(
        s.status,
        SessionStatus::PendingCancellation,
        "{:?}",
        s.history
    );
}

/// Finding 4: the platform moves the booking to 11:00 (v2): the event is moved, but the
/// write's closing commit is refused, so the mapping still says 9:00 under the old change
/// key; the platform moves it again to 13:00 (v3), whose calendar write fails; then the
/// calendar is synced, listing the event at 11:00: the system's own write.
async fn the_echo_of_a_write_whose_commit_failed_is_no_staff_move(cal: Cal) {
    // Arrange: v1 at 9:00; v2's commit refused; v3's calendar call fails.
    let (w, conn) = CalendarsWorld::with(cal).await;
    let world = w.app.local.deps.clone();
    apply_change(&world, versioned_body("created", "ann", 9, 1)).await;
    w.sync(cal, &conn).await;
    let refusing = voyage_tests::races::losing_races_after(&world, 1, 1000);
    let _ = try_apply_change(&refusing, versioned_body("updated", "ann", 11, 2)).await;
    assert_eq!(w.shown(cal, "ann", "s1")[0].start, at(11), "{cal:?}: moved");
    match cal {
        Cal::Exchange => w.graph.add_fault(fault("PATCH", "ann", 500, 1)),
        Cal::Google => w.google.add_fault(fault("PUT", "ann", 500, 4)),
    }
    let failed = try_apply_change(&world, versioned_body("updated", "ann", 13, 3))
        .await
        .expect("the change applied");
    assert!(failed.any_failed(), "{cal:?}: {failed:?}");

    // Act: the calendar is synced; then the platform retries v3.
    w.sync(cal, &conn).await;
    let synced = w.session("s1").await;
    apply_change(&world, versioned_body("updated", "ann", 13, 3)).await;

    // Assert: no staff move was read; the session and the event at 13:00.
    assert_eq!(synced.start, at(13), "{cal:?}: {:?}", synced.history);
    assert!(
        synced.history.iter().all(|h| h.command != "reschedule"),
        "{cal:?}: {:?}",
        synced.history
    );
    let shown = w.shown(cal, "ann", "s1");
    assert_eq!(shown.len(), 1, "{cal:?}: {shown:?}");
    assert_eq!(shown[0].start, at(13), "{cal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review8_the_echo_of_an_exchange_write_whose_commit_failed_is_no_staff_move() {
    the_echo_of_a_write_whose_commit_failed_is_no_staff_move(Cal::Exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review8_the_echo_of_a_google_write_whose_commit_failed_is_no_staff_move() {
    the_echo_of_a_write_whose_commit_failed_is_no_staff_move(Cal::Google).await;
}

/// Black-box finding: a booking given to another staff member, nothing else changed, left no
/// trace in the session's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review8_a_booking_given_to_another_staff_member_is_a_history_entry() {
    // Arrange: booked with ann.
    let (w, _ann) = CalendarsWorld::with(Cal::Exchange).await;
    let world = w.app.local.deps.clone();
    apply_change(&world, versioned_body("created", "ann", 9, 1)).await;
    let before = w.session("s1").await;

    // Act: the same times, given to bob.
    apply_change(&world, versioned_body("updated", "bob", 9, 2)).await;

    // Assert: one more entry, the platform's update; the record's time moved.
    let after = w.session("s1").await;
    assert_eq!(
        after.history.len(),
        before.history.len() + 1,
        "{:?}",
        after.history
    );
    assert_eq!(
        after.history.last().map(|h| h.command.as_str()),
        Some("platform.updated")
    );
    assert!(after.updated_at > before.updated_at);
}

/// Review of finding 4's fix: a staff member's move back to an earlier platform time is a
/// move, although another calendar of theirs never settles a version (its writes refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review8_a_move_back_to_an_earlier_booked_time_is_read_while_another_calendar_never_settles(
) {
    // Arrange: ann has both calendars; Google refuses every write. Booked at 9:00 (v1),
    // moved by the platform to 11:00 (v2).
    let (w, exchange, _google) = CalendarsWorld::both().await;
    w.google.add_fault(fault("POST", "ann", 403, 1000));
    w.google.add_fault(fault("PUT", "ann", 403, 1000));
    let world = w.app.local.deps.clone();
    let _ = try_apply_change(&world, versioned_body("created", "ann", 9, 1)).await;
    let _ = try_apply_change(&world, versioned_body("updated", "ann", 11, 2)).await;
    let event = w.one_event(Cal::Exchange, "ann", "s1");
    w.sync(Cal::Exchange, &exchange).await;

    // Act: ann drags the event back to 9:00; her Outlook is synced.
    w.staff_move(Cal::Exchange, "ann", &event, 9);
    w.sync(Cal::Exchange, &exchange).await;

    // Assert: her move is read.
    let s = w.session("s1").await;
    assert_eq!(s.start, at(9), "{:?}", s.history);
    assert_eq!(w.shown(Cal::Exchange, "ann", "s1")[0].start, at(9));
}
