//! Fifth review of the calendar seam: a booking command's follow-up (what a staff member's
//! change in one calendar did, written to the staff member's other calendars,
//! [`voyage_core::calendar::follow`]) that runs after a newer change of the same session.
//!
//! The follow-up carries the session as the command left it. Between the command's commit
//! and the follow-up's write, the platform may change the session again (a move, a
//! re-booking). The follow-up must then write nothing of its own: the newer change is
//! stored, and its own writer puts it into every calendar. Written anyway, the follow-up's
//! old copy would revert the platform's move, or cancel a booking the platform just booked
//! again.
//!
//! Each test calls `follow` with the session as the command left it, after the newer change
//! is applied: the order the race produces, made deterministic.
//!
//! And a restore the staff member makes of the wrong copy: a booking cancelled and booked
//! again has two events of it in the bin once its new event is deleted too (the old one the
//! cancellation deleted, the new one the staff member just deleted), and they look the same.
//! Restoring either one brings the booking back (simulation seed 456, two-staff mode with
//! rounds held: the restored old copy was deleted as an earlier placement's, and the
//! pending cancellation was committed).

use std::time::Duration;

use voyage_core::booking::{Command, ORIGIN_GOOGLE_INBOUND};
use voyage_core::model::SessionStatus;
use voyage_tests::calendars::{apply_change, at, fault, versioned_body, Cal, CalendarsWorld};

/// ann's Exchange and Google calendars connected, `s1` booked with her at 9:00 (version 1)
/// and shown in both.
async fn booked_in_both() -> CalendarsWorld {
    let (w, _, _) = CalendarsWorld::both().await;
    apply_change(&w.app.local.deps, versioned_body("created", "ann", 9, 1)).await;
    for cal in [Cal::Exchange, Cal::Google] {
        assert_eq!(w.shown(cal, "ann", "s1").len(), 1, "{cal:?}");
    }
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review5_a_staff_moves_follow_up_run_after_a_newer_platform_move_does_not_revert_it() {
    // Arrange: ann moved the Google event to 10:00 (the command stored it), then the
    // platform moved the booking to 11:00 (version 2) before the follow-up wrote Exchange.
    let w = booked_in_both().await;
    let mut left_by_command = w.session("s1").await;
    left_by_command.start = at(10);
    left_by_command.end = at(11);
    apply_change(&w.app.local.deps, versioned_body("updated", "ann", 11, 2)).await;
    let command = Command::Reschedule {
        start: at(10),
        end: at(11),
    };

    // Act: the follow-up of the staff member's move runs now.
    voyage_core::calendar::follow(
        &w.app.local.deps,
        &left_by_command,
        &command,
        ORIGIN_GOOGLE_INBOUND,
    )
    .await;

    // Assert: the platform's move stands, in the store and in both calendars.
    let s = w.session("s1").await;
    assert_eq!(s.start, at(11), "{:?}", s.history);
    for cal in [Cal::Exchange, Cal::Google] {
        let shown = w.shown(cal, "ann", "s1");
        assert_eq!(shown.len(), 1, "{cal:?}: {shown:?}");
        assert_eq!(shown[0].start, at(11), "{cal:?}: {shown:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review5_a_cancellations_follow_up_run_after_the_platform_booked_it_again_leaves_it_booked()
{
    // Arrange: ann's deletion in Google was committed (the session cancelled), then the
    // platform booked the session again (versions 2 and 3) before the follow-up wrote
    // Exchange.
    let w = booked_in_both().await;
    let mut left_by_command = w.session("s1").await;
    left_by_command.status = SessionStatus::Cancelled;
    apply_change(&w.app.local.deps, versioned_body("cancelled", "ann", 9, 2)).await;
    apply_change(&w.app.local.deps, versioned_body("created", "ann", 9, 3)).await;
    let command = Command::CommitCancellation {
        now: chrono::Utc::now(),
    };

    // Act: the follow-up of the committed cancellation runs now.
    voyage_core::calendar::follow(
        &w.app.local.deps,
        &left_by_command,
        &command,
        ORIGIN_GOOGLE_INBOUND,
    )
    .await;

    // Assert: the booking is live, with one event in each calendar, the one mapped.
    let s = w.session("s1").await;
    assert_eq!(s.status, SessionStatus::Confirmed, "{:?}", s.history);
    for cal in [Cal::Exchange, Cal::Google] {
        let shown = w.shown(cal, "ann", "s1");
        assert_eq!(shown.len(), 1, "{cal:?}: {shown:?}");
        assert_eq!(
            w.mapped_event(cal, "s1").await.as_deref(),
            Some(shown[0].id.as_str()),
            "{cal:?}"
        );
    }
}

/// ann's calendar of `cal` connected; `s1` booked at 9:00 (v1), cancelled (v2) and booked
/// again (v3): (world, connection, the first event, deleted by the cancellation).
async fn booked_again(cal: Cal) -> (CalendarsWorld, String, String) {
    let (w, conn) = CalendarsWorld::with(cal).await;
    apply_change(&w.app.local.deps, versioned_body("created", "ann", 9, 1)).await;
    let first = w.one_event(cal, "ann", "s1");
    apply_change(&w.app.local.deps, versioned_body("cancelled", "ann", 9, 2)).await;
    apply_change(&w.app.local.deps, versioned_body("created", "ann", 9, 3)).await;
    assert_ne!(w.one_event(cal, "ann", "s1"), first, "{cal:?}: a new event");
    (w, conn, first)
}

async fn restoring_the_old_copy_brings_the_booking_back(cal: Cal) {
    // Arrange: ann deletes the booking's event (pending cancellation), then restores the
    // old copy from the bin, not the event she deleted.
    let (w, conn, first) = booked_again(cal).await;
    let current = w.one_event(cal, "ann", "s1");
    w.staff_delete(cal, "ann", &current);
    w.sync(cal, &conn).await;
    assert_eq!(
        w.session("s1").await.status,
        SessionStatus::PendingCancellation,
        "{cal:?}"
    );
    w.staff_restore(cal, "ann", &first);

    // Act: her calendar is synced, and the grace ends.
    w.sync(cal, &conn).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.commit_pending_cancellations().await;
    w.sync(cal, &conn).await;

    // Assert: booked, with one live event at 9:00, the one mapped.
    let s = w.session("s1").await;
    assert_eq!(
        s.status,
        SessionStatus::Confirmed,
        "{cal:?}: {:?}",
        s.history
    );
    let shown = w.shown(cal, "ann", "s1");
    assert_eq!(shown.len(), 1, "{cal:?}: {shown:?}");
    assert_eq!(shown[0].start, at(9), "{cal:?}");
    assert_eq!(
        w.mapped_event(cal, "s1").await.as_deref(),
        Some(shown[0].id.as_str()),
        "{cal:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review5_a_google_booking_whose_old_copy_is_restored_while_its_cancellation_is_pending_stays_booked(
) {
    restoring_the_old_copy_brings_the_booking_back(Cal::Google).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review5_an_exchange_booking_whose_old_copy_is_restored_while_its_cancellation_is_pending_stays_booked(
) {
    restoring_the_old_copy_brings_the_booking_back(Cal::Exchange).await;
}

async fn cancelled_with_another_staff_member_leaves_no_event(cal: Cal) {
    // Arrange: booked with ann (v1); bob has no calendar.
    let (w, _) = CalendarsWorld::with(cal).await;
    apply_change(&w.app.local.deps, versioned_body("created", "ann", 9, 1)).await;
    assert_eq!(w.shown(cal, "ann", "s1").len(), 1, "{cal:?}");

    // Act: the platform's next word is the cancellation, already with bob (v3; the move to
    // bob, v2, arrives after it).
    apply_change(&w.app.local.deps, versioned_body("cancelled", "bob", 9, 3)).await;
    apply_change(&w.app.local.deps, versioned_body("updated", "bob", 9, 2)).await;

    // Assert: cancelled, and no event left in ann's calendar.
    let s = w.session("s1").await;
    assert_eq!(s.status, SessionStatus::Cancelled, "{cal:?}");
    assert_eq!(w.shown(cal, "ann", "s1"), vec![], "{cal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review5_a_google_booking_cancelled_with_another_staff_member_without_a_calendar_leaves_no_event(
) {
    cancelled_with_another_staff_member_leaves_no_event(Cal::Google).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review5_an_exchange_booking_cancelled_with_another_staff_member_without_a_calendar_leaves_no_event(
) {
    cancelled_with_another_staff_member_leaves_no_event(Cal::Exchange).await;
}

async fn a_failed_removal_from_the_previous_calendar_is_reported_and_retried(cal: Cal) {
    // Arrange: booked with ann (v1); bob has no calendar; ann's calendar refuses the next
    // delete once.
    let (w, _) = CalendarsWorld::with(cal).await;
    apply_change(&w.app.local.deps, versioned_body("created", "ann", 9, 1)).await;
    // (Google's client tries a 5xx four times.)
    match cal {
        Cal::Exchange => w.graph.add_fault(fault("DELETE", "ann", 500, 1)),
        Cal::Google => w.google.add_fault(fault("DELETE", "ann", 500, 4)),
    }

    // Act: the booking is given to bob and cancelled (v2); the platform retries what failed.
    let first = voyage_tests::calendars::try_apply_change(
        &w.app.local.deps,
        versioned_body("cancelled", "bob", 9, 2),
    )
    .await
    .expect("the change applied");
    let retry = apply_change(&w.app.local.deps, versioned_body("cancelled", "bob", 9, 2)).await;

    // Assert: the first answer says ann's calendar failed; after the retry no event is left.
    assert!(first.any_failed(), "{cal:?}: {first:?}");
    assert!(!retry.any_failed(), "{cal:?}: {retry:?}");
    assert_eq!(w.shown(cal, "ann", "s1"), vec![], "{cal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review5_a_google_event_that_could_not_be_removed_when_its_booking_went_to_a_staff_member_without_a_calendar_is_reported_and_removed_by_the_retry(
) {
    a_failed_removal_from_the_previous_calendar_is_reported_and_retried(Cal::Google).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review5_an_exchange_event_that_could_not_be_removed_when_its_booking_went_to_a_staff_member_without_a_calendar_is_reported_and_removed_by_the_retry(
) {
    a_failed_removal_from_the_previous_calendar_is_reported_and_retried(Cal::Exchange).await;
}

async fn a_create_left_unrecorded_goes_when_the_booking_goes_to_another_staff_member(cal: Cal) {
    // Arrange: booked with ann (v1): her calendar gets the event, but every commit after the
    // intent is refused, so the event is never recorded (the platform is told to retry).
    let (w, _) = CalendarsWorld::with(cal).await;
    let world = w.app.local.deps.clone();
    let refusing = voyage_tests::races::losing_races_after(&world, 1, 1000);
    let first = voyage_tests::calendars::try_apply_change(
        &refusing,
        versioned_body("created", "ann", 9, 1),
    )
    .await;
    assert!(
        first.as_ref().map_or(true, |o| o.any_failed()),
        "{cal:?}: {first:?}"
    );
    assert_eq!(
        w.shown(cal, "ann", "s1").len(),
        1,
        "{cal:?}: the event was made"
    );
    assert_eq!(
        w.mapped_event(cal, "s1").await,
        None,
        "{cal:?}: and not recorded"
    );

    // Act: before any retry, the booking is given to bob, who has no calendar (v2); the
    // retry of v1 is stale then.
    apply_change(&world, versioned_body("updated", "bob", 9, 2)).await;
    apply_change(&world, versioned_body("created", "ann", 9, 1)).await;

    // Assert: ann's calendar no longer shows the booking.
    assert_eq!(w.session("s1").await.staff_id, "bob", "{cal:?}");
    assert_eq!(w.shown(cal, "ann", "s1"), vec![], "{cal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review5_an_exchange_event_whose_create_was_never_recorded_goes_when_its_booking_goes_to_another_staff_member(
) {
    a_create_left_unrecorded_goes_when_the_booking_goes_to_another_staff_member(Cal::Exchange)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review5_a_google_event_whose_create_was_never_recorded_goes_when_its_booking_goes_to_another_staff_member(
) {
    a_create_left_unrecorded_goes_when_the_booking_goes_to_another_staff_member(Cal::Google).await;
}
