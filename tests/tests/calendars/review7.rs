//! Seventh review of the calendar seam: retired events that are not what they seem.
//!
//! A create whose answer was lost is retired by its `transactionId` when the booking goes to
//! another staff member ([`voyage_core::model::RetiredEvent::by_transaction`]). If the
//! booking comes back before that event is deleted, the staff member's sync must not adopt
//! it as the booking's event: the retired entry would then delete the booking's own event,
//! and the booking would be cancelled (adversarial review, finding 1).
//!
//! A retired Google event whose deletion keeps failing stays live in the calendar; seen live
//! while the booking's cancellation is pending, it is no copy restored from the bin, and it
//! must not bring the booking back (adversarial review, finding 2).
//!
//! A previous staff member's calendar that refuses the removal for good holds the booking
//! back from the new staff member's calendar (so it never shows twice); the tenant's remedy,
//! deleting that connection, lets the next try write it (adversarial review, finding 4;
//! README, "With the platform in the loop").

use std::time::Duration;

use voyage_core::model::SessionStatus;
use voyage_tests::calendars::{
    apply_change, at, fault, try_apply_change, versioned_body, Cal, CalendarsWorld,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review7_an_unrecorded_exchange_create_retired_when_the_booking_left_is_not_adopted_when_it_comes_back(
) {
    // Arrange: booked with ann (v1): the event is made, its commit refused (unrecorded).
    let (w, conn) = CalendarsWorld::with(Cal::Exchange).await;
    let world = w.app.local.deps.clone();
    let refusing = voyage_tests::races::losing_races_after(&world, 1, 1000);
    let _ = try_apply_change(&refusing, versioned_body("created", "ann", 9, 1)).await;
    let unrecorded = w.one_event(Cal::Exchange, "ann", "s1");
    assert_eq!(w.mapped_event(Cal::Exchange, "s1").await, None);
    // Given to bob, who has no calendar (v2): deleting the unrecorded event fails once.
    w.graph.add_fault(fault("DELETE", "ann", 500, 1));
    let _ = try_apply_change(&world, versioned_body("updated", "bob", 9, 2)).await;
    assert_eq!(
        w.one_event(Cal::Exchange, "ann", "s1"),
        unrecorded,
        "still there"
    );
    // Given back to ann (v3): her create fails, so nothing deletes the retired event yet.
    w.graph.add_fault(fault("POST", "ann", 500, 1));
    let _ = try_apply_change(&world, versioned_body("updated", "ann", 9, 3)).await;

    // Act: ann's calendar is synced (it lists the old event), the platform retries v3, and
    // the calendar is synced again after a grace.
    w.sync(Cal::Exchange, &conn).await;
    apply_change(&world, versioned_body("updated", "ann", 9, 3)).await;
    w.sync(Cal::Exchange, &conn).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.commit_pending_cancellations().await;
    w.sync(Cal::Exchange, &conn).await;

    // Assert: still booked with ann, shown once at 9:00, as the mapped event.
    let s = w.session("s1").await;
    assert_eq!(s.status, SessionStatus::Confirmed, "{:?}", s.history);
    let shown = w.shown(Cal::Exchange, "ann", "s1");
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0].start, at(9));
    assert_eq!(
        w.mapped_event(Cal::Exchange, "s1").await.as_deref(),
        Some(shown[0].id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review7_a_retired_google_event_that_could_not_be_deleted_does_not_undo_the_staff_members_deletion(
) {
    // Arrange: booked with ann (v1) as G1; given to bob (no calendar, v2) while ann's
    // calendar refuses deletes, and given back (v3): G1 is retired, G3 made; G1 still there.
    let (w, conn) = CalendarsWorld::with(Cal::Google).await;
    let world = w.app.local.deps.clone();
    apply_change(&world, versioned_body("created", "ann", 9, 1)).await;
    let g1 = w.one_event(Cal::Google, "ann", "s1");
    w.sync(Cal::Google, &conn).await;
    // (Google's client tries a 5xx four times; two writes meet the refusal.)
    w.google.add_fault(fault("DELETE", "ann", 500, 8));
    let _ = try_apply_change(&world, versioned_body("updated", "bob", 9, 2)).await;
    let _ = try_apply_change(&world, versioned_body("updated", "ann", 9, 3)).await;
    let shown = w.shown(Cal::Google, "ann", "s1");
    assert_eq!(shown.len(), 2, "G1 and G3: {shown:?}");
    let g3 = shown
        .iter()
        .map(|e| e.id.clone())
        .find(|id| *id != g1)
        .expect("a new event");
    // ann deletes the booking's event: its cancellation is pending.
    w.staff_delete(Cal::Google, "ann", &g3);
    w.sync(Cal::Google, &conn).await;
    assert_eq!(
        w.session("s1").await.status,
        SessionStatus::PendingCancellation
    );

    // Act: ann moves the leftover G1; her calendar is synced, and the grace ends.
    w.staff_move(Cal::Google, "ann", &g1, 10);
    w.sync(Cal::Google, &conn).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.commit_pending_cancellations().await;
    w.sync(Cal::Google, &conn).await;

    // Assert: her deletion stands: cancelled, and nothing of the booking left in her calendar.
    let s = w.session("s1").await;
    assert_eq!(s.status, SessionStatus::Cancelled, "{:?}", s.history);
    assert_eq!(w.shown(Cal::Google, "ann", "s1"), vec![]);
}

/// ann's calendar refuses deletes for good (Graph 403 for a mailbox the app may no longer
/// reach; Google 400), bob has a calendar of the same provider.
async fn refused_for_good_until_the_connection_is_deleted(cal: Cal) {
    // Arrange: booked with ann (v1); her calendar refuses every delete from now on.
    let (w, ann) = CalendarsWorld::with(cal).await;
    w.connect(cal, "bob").await;
    let world = w.app.local.deps.clone();
    apply_change(&world, versioned_body("created", "ann", 9, 1)).await;
    match cal {
        Cal::Exchange => w.graph.add_fault(fault("DELETE", "ann", 403, 1000)),
        Cal::Google => w.google.add_fault(fault("DELETE", "ann", 400, 1000)),
    }
    let refused = try_apply_change(&world, versioned_body("updated", "bob", 9, 2))
        .await
        .expect("the change applied");
    assert!(refused.any_failed(), "{cal:?}: {refused:?}");
    assert_eq!(w.shown(cal, "bob", "s1"), vec![], "{cal:?}: held back");

    // Act: the tenant deletes ann's connection; the platform retries the change.
    let (status, body) = w
        .app
        .call("DELETE", &format!("/v1/connections/{ann}"), &w.tenant, None)
        .await;
    assert!(status == 204 || status == 200, "{status}: {body}");
    let retried = apply_change(&world, versioned_body("updated", "bob", 9, 2)).await;

    // Assert: written to bob's calendar.
    assert!(!retried.any_failed(), "{cal:?}: {retried:?}");
    let shown = w.shown(cal, "bob", "s1");
    assert_eq!(shown.len(), 1, "{cal:?}: {shown:?}");
    assert_eq!(shown[0].start, at(9), "{cal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review7_an_exchange_booking_held_back_by_a_mailbox_refusing_its_removal_is_written_for_the_new_staff_member_once_that_connection_is_deleted(
) {
    refused_for_good_until_the_connection_is_deleted(Cal::Exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review7_a_google_booking_held_back_by_a_calendar_refusing_its_removal_is_written_for_the_new_staff_member_once_that_connection_is_deleted(
) {
    refused_for_good_until_the_connection_is_deleted(Cal::Google).await;
}

/// ann's event G1/E1, still mapped when the booking comes back to her from bob (whose
/// removal of it failed), is retired; its deletion fails too.
async fn a_retired_event_whose_deletion_failed_is_reported_and_removed_by_the_retry(cal: Cal) {
    // Arrange: booked with ann (v1); her calendar fails the next deletes for a while.
    let (w, conn) = CalendarsWorld::with(cal).await;
    let world = w.app.local.deps.clone();
    apply_change(&world, versioned_body("created", "ann", 9, 1)).await;
    let first = w.one_event(cal, "ann", "s1");
    w.sync(cal, &conn).await;
    // (Google's client tries a 5xx four times; two writes meet the failure.)
    match cal {
        Cal::Exchange => w.graph.add_fault(fault("DELETE", "ann", 500, 2)),
        Cal::Google => w.google.add_fault(fault("DELETE", "ann", 500, 8)),
    }
    let _ = try_apply_change(&world, versioned_body("updated", "bob", 9, 2)).await;

    // Act: given back to ann (v3): a new event, the old one retired and not deleted.
    let back = try_apply_change(&world, versioned_body("updated", "ann", 9, 3))
        .await
        .expect("the change applied");
    assert_eq!(w.shown(cal, "ann", "s1").len(), 2, "{cal:?}: both, for now");
    let retry = apply_change(&world, versioned_body("updated", "ann", 9, 3)).await;

    // Assert: the first answer asked for a retry; after it, ann's calendar shows the
    // booking once, not as the old event.
    assert!(back.any_failed(), "{cal:?}: {back:?}");
    assert!(!retry.any_failed(), "{cal:?}: {retry:?}");
    let shown = w.shown(cal, "ann", "s1");
    assert_eq!(shown.len(), 1, "{cal:?}: {shown:?}");
    assert_ne!(shown[0].id, first, "{cal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review7_a_retired_google_event_whose_deletion_failed_is_reported_and_deleted_by_the_retry()
{
    a_retired_event_whose_deletion_failed_is_reported_and_removed_by_the_retry(Cal::Google).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review7_a_retired_exchange_event_whose_deletion_failed_is_reported_and_deleted_by_the_retry(
) {
    a_retired_event_whose_deletion_failed_is_reported_and_removed_by_the_retry(Cal::Exchange).await;
}

async fn an_unrecorded_create_whose_deletion_failed_is_reported(cal: Cal) {
    // Arrange: booked with ann (v1), the event made but never recorded; her calendar then
    // fails the next deletes for a while.
    let (w, _) = CalendarsWorld::with(cal).await;
    let world = w.app.local.deps.clone();
    let refusing = voyage_tests::races::losing_races_after(&world, 1, 1000);
    let _ = try_apply_change(&refusing, versioned_body("created", "ann", 9, 1)).await;
    assert_eq!(w.shown(cal, "ann", "s1").len(), 1, "{cal:?}: made");
    match cal {
        Cal::Exchange => w.graph.add_fault(fault("DELETE", "ann", 500, 1)),
        Cal::Google => w.google.add_fault(fault("DELETE", "ann", 500, 4)),
    }

    // Act: given to bob, who has no calendar (v2); the platform retries what failed.
    let given = try_apply_change(&world, versioned_body("updated", "bob", 9, 2))
        .await
        .expect("the change applied");
    let retry = apply_change(&world, versioned_body("updated", "bob", 9, 2)).await;

    // Assert: the first answer named ann's calendar as failed; after the retry it is empty.
    assert!(given.any_failed(), "{cal:?}: {given:?}");
    assert!(!retry.any_failed(), "{cal:?}: {retry:?}");
    assert_eq!(w.shown(cal, "ann", "s1"), vec![], "{cal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review7_an_unrecorded_google_create_whose_deletion_failed_when_the_booking_went_to_a_staff_member_without_a_calendar_is_reported_and_retried(
) {
    an_unrecorded_create_whose_deletion_failed_is_reported(Cal::Google).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review7_an_unrecorded_exchange_create_whose_deletion_failed_when_the_booking_went_to_a_staff_member_without_a_calendar_is_reported_and_retried(
) {
    an_unrecorded_create_whose_deletion_failed_is_reported(Cal::Exchange).await;
}

async fn a_retired_event_refused_for_good_is_not_reported_and_goes_with_a_later_write(cal: Cal) {
    // Arrange: booked with ann (v1); her calendar fails the removal of v2 (given to bob)
    // passingly, then refuses deletes for good (Graph 403, Google 400).
    let (w, conn) = CalendarsWorld::with(cal).await;
    let world = w.app.local.deps.clone();
    apply_change(&world, versioned_body("created", "ann", 9, 1)).await;
    let first = w.one_event(cal, "ann", "s1");
    w.sync(cal, &conn).await;
    match cal {
        Cal::Exchange => w.graph.add_fault(fault("DELETE", "ann", 500, 1)),
        Cal::Google => w.google.add_fault(fault("DELETE", "ann", 500, 4)),
    }
    let _ = try_apply_change(&world, versioned_body("updated", "bob", 9, 2)).await;
    match cal {
        Cal::Exchange => w.graph.add_fault(fault("DELETE", "ann", 403, 1000)),
        Cal::Google => w.google.add_fault(fault("DELETE", "ann", 400, 1000)),
    }

    // Act: given back to ann (v3); later the refusal ends and the platform moves it (v4).
    let back = try_apply_change(&world, versioned_body("updated", "ann", 9, 3))
        .await
        .expect("the change applied");
    match cal {
        Cal::Exchange => w.graph.clear_faults(),
        Cal::Google => w.google.clear_faults(),
    }
    apply_change(&world, versioned_body("updated", "ann", 10, 4)).await;

    // Assert: v3 was not answered `failed` (no retry would fare better); v4's write deleted
    // the old event: one event, at 10:00.
    assert!(!back.any_failed(), "{cal:?}: {back:?}");
    let shown = w.shown(cal, "ann", "s1");
    assert_eq!(shown.len(), 1, "{cal:?}: {shown:?}");
    assert_ne!(shown[0].id, first, "{cal:?}");
    assert_eq!(shown[0].start, at(10), "{cal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review7_a_retired_exchange_event_whose_mailbox_refuses_for_good_is_not_reported_and_goes_with_a_later_write(
) {
    a_retired_event_refused_for_good_is_not_reported_and_goes_with_a_later_write(Cal::Exchange)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review7_a_retired_google_event_whose_calendar_refuses_for_good_is_not_reported_and_goes_with_a_later_write(
) {
    a_retired_event_refused_for_good_is_not_reported_and_goes_with_a_later_write(Cal::Google).await;
}
