//! Review 10 (2026-12-02): a cold adversarial review of the `session.restored` sent when the
//! platform gives a booking whose cancellation is pending to another staff member. Each test
//! shows a finding; the fix is in the code it names.

use voyage_core::model::SessionStatus;
use voyage_tests::calendars::{
    apply_change, try_apply_change, versioned_body, Cal, CalendarsWorld,
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
