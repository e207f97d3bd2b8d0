//! Fourth adversarial review of the calendar seam (issue #13): rare orders of concurrent
//! platform writes of one session, each forced step by step (a write held just before its
//! mapping commit, [`voyage_tests::races::overtaken_at_mapping`], or held at its first
//! provider delete, [`deletes_held`]), then settled by sync rounds and the sweep:
//! - a move to another staff member (ann to bob) and the move back, both in flight;
//! - an Exchange re-booking that reuses the retired event while the cancellation that
//!   retired it is still deleting it;
//! - the same move delivered twice at once, one of the two creates failing once.
//!
//! Each asserts what the user sees: the booking's status, exactly one live event of it in
//! the calendar of the staff member it is assigned to (the one its mapping names), none in
//! the other staff member's calendar.

use std::time::Duration;

use tokio::sync::oneshot;
use voyage_core::deps::Deps;
use voyage_core::model::SessionStatus;
use voyage_tests::calendars::{apply_change, at, fault, versioned_body, Cal, CalendarsWorld};
use voyage_tests::hooked::{held, hooked, Gate, Write};
use voyage_tests::races::{overtaken_at_mapping, Meanwhile};

// ---------------------------------------------------------------------------------------
// Tools: a provider delete held on demand, settling, the end state
// ---------------------------------------------------------------------------------------

/// The world's dependencies, whose first delete in `cal`'s calendars is held until the
/// returned gate lets it go.
fn deletes_held(w: &CalendarsWorld, cal: Cal) -> (Deps, Gate) {
    let (hook, gate) = held();
    (
        hooked(&w.app.local.deps, cal.provider(), Write::Delete, hook),
        gate,
    )
}

/// Lets the system settle: every sync of `connections` twice, the commit job (after the
/// grace), every sync again.
async fn settle(w: &CalendarsWorld, cal: Cal, connections: &[&str]) {
    for _ in 0..2 {
        for conn in connections {
            w.sync(cal, conn).await;
        }
        w.drain_outbound().await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.commit_pending_cancellations().await;
    for _ in 0..2 {
        for conn in connections {
            w.sync(cal, conn).await;
        }
        w.drain_outbound().await;
    }
}

/// The end state the user cares about: `s1` confirmed, exactly one live event of it in
/// `staff`'s calendar, at `hour`, the one its mapping names, and none in `other`'s.
async fn assert_booked_with(w: &CalendarsWorld, cal: Cal, staff: &str, hour: u32, other: &str) {
    let s = w.session("s1").await;
    assert_eq!(s.staff_id, staff, "{cal:?}");
    assert_eq!(
        s.status,
        SessionStatus::Confirmed,
        "{cal:?}: {:?}",
        s.history
    );
    let shown = w.shown(cal, staff, "s1");
    let elsewhere = w.shown(cal, other, "s1");
    let mapped = w.mapped_event(cal, "s1").await;
    assert_eq!(
        shown.len(),
        1,
        "{cal:?}: live in {staff}'s calendar: {shown:?}; in {other}'s: {elsewhere:?}; mapped: {mapped:?}"
    );
    assert_eq!(shown[0].start, at(hour), "{cal:?}");
    assert_eq!(mapped.as_deref(), Some(shown[0].id.as_str()), "{cal:?}");
    assert!(elsewhere.is_empty(), "{cal:?}: in {other}'s: {elsewhere:?}");
}

/// A world with ann's and bob's calendars of `cal` connected and `s1` booked with ann at
/// 9:00 (version 1): (world, ann's connection, bob's connection).
async fn booked_with_ann(cal: Cal) -> (CalendarsWorld, String, String) {
    let (w, ann) = CalendarsWorld::with(cal).await;
    let bob = w.connect(cal, "bob").await;
    apply_change(&w.app.local.deps, versioned_body("created", "ann", 9, 1)).await;
    assert_eq!(w.shown(cal, "ann", "s1").len(), 1, "{cal:?}");
    (w, ann, bob)
}

// ---------------------------------------------------------------------------------------
// A move to bob and the move back to ann, both in flight
// ---------------------------------------------------------------------------------------

/// The move to bob (v2) has made bob's event and is at its closing commit when the move back
/// to ann (v3) is written from start to end (it creates ann's new event with the pending
/// `transactionId` the move to bob recorded, and maps it). The move to bob loses its commit,
/// re-reads, finds another event mapped: superseded, and its event in bob's calendar is
/// deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review4_a_move_back_written_while_the_move_to_bob_is_at_its_commit_leaves_one_live_mapped_event_with_ann(
) {
    let cal = Cal::Exchange;
    let (w, ann, bob) = booked_with_ann(cal).await;
    let world = w.app.local.deps.clone();
    let other = world.clone();
    let meanwhile: Meanwhile = Box::pin(async move {
        apply_change(&other, versioned_body("updated", "ann", 11, 3)).await;
    });
    let to_bob = overtaken_at_mapping(&world, meanwhile);

    let out = apply_change(&to_bob, versioned_body("updated", "bob", 10, 2)).await;

    assert_eq!(out.calendars[0].outcome, "superseded", "{out:?}");
    settle(&w, cal, &[&ann, &bob]).await;
    assert_booked_with(&w, cal, "ann", 11, "bob").await;
}

/// The move to bob (v2) has made bob's event and is at its closing commit when the session is
/// given to carol, who has no calendar connected (v3), from start to end: no create is owed
/// anywhere, so nothing new is pending. The move to bob loses its commit and re-reads: the
/// session is carol's now, so bob's event is none of its and is deleted, and nothing is
/// mapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review4_a_move_to_a_staff_member_without_a_calendar_while_the_move_to_bob_is_at_its_commit_leaves_no_event(
) {
    for cal in Cal::BOTH {
        let (w, ann, bob) = booked_with_ann(cal).await;
        let world = w.app.local.deps.clone();
        let other = world.clone();
        let meanwhile: Meanwhile = Box::pin(async move {
            apply_change(&other, versioned_body("updated", "carol", 11, 3)).await;
        });
        let to_bob = overtaken_at_mapping(&world, meanwhile);

        let out = apply_change(&to_bob, versioned_body("updated", "bob", 10, 2)).await;

        assert_eq!(out.calendars[0].outcome, "superseded", "{cal:?}: {out:?}");
        settle(&w, cal, &[&ann, &bob]).await;
        let s = w.session("s1").await;
        assert_eq!(
            (s.staff_id.as_str(), s.status),
            ("carol", SessionStatus::Confirmed),
            "{cal:?}: {:?}",
            s.history
        );
        assert_eq!(
            w.shown(cal, "bob", "s1"),
            vec![],
            "{cal:?}: in bob's calendar"
        );
        assert_eq!(
            w.shown(cal, "ann", "s1"),
            vec![],
            "{cal:?}: in ann's calendar"
        );
        assert_eq!(w.mapped_event(cal, "s1").await, None, "{cal:?}");
    }
}

/// The move to bob (v2) has made bob's event and is at its closing commit; the move back to
/// ann (v3) records its intent (keeping the move to bob's pending `transactionId`: no new
/// placement is recorded for a change of staff member), creates ann's new event with it,
/// and is held at its own closing commit. The move to bob commits first: it loses a race,
/// re-reads, sees the same pending id and no mapping (`Placement::moved_on` is false),
/// and maps the session, now ann's, to bob's event. The move back then loses, re-reads,
/// sees bob's event mapped: superseded, and deletes ann's new event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review4_a_move_back_held_at_its_commit_while_the_move_to_bob_commits_leaves_one_live_mapped_event_with_ann(
) {
    move_back_held_at_its_commit_while_the_move_to_bob_commits(Cal::Exchange).await;
}

/// The same order with Google: the move back inserts ann's event with the pending event id
/// the move to bob recorded (the same id as bob's event, in another calendar). After the
/// move to bob maps bob's event, the move back re-reads and is not superseded (the mapped id
/// is the id it wrote): it maps ann's event, and bob's event is left live and unmapped, an
/// orphan bob's sync leaves alone (its session is ann's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review4_a_google_move_back_held_at_its_commit_while_the_move_to_bob_commits_leaves_one_live_mapped_event_with_ann(
) {
    move_back_held_at_its_commit_while_the_move_to_bob_commits(Cal::Google).await;
}

async fn move_back_held_at_its_commit_while_the_move_to_bob_commits(cal: Cal) {
    let (w, ann, bob) = booked_with_ann(cal).await;
    let world = w.app.local.deps.clone();
    let (reached_tx, reached_rx) = oneshot::channel::<()>();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let held: Meanwhile = Box::pin(async move {
        let _ = reached_tx.send(());
        let _ = go_rx.await;
    });
    let back_deps = overtaken_at_mapping(&world, held);
    let (back_tx, back_rx) = oneshot::channel();
    let meanwhile: Meanwhile = Box::pin(async move {
        tokio::spawn(async move {
            let out = apply_change(&back_deps, versioned_body("updated", "ann", 11, 3)).await;
            let _ = back_tx.send(out);
        });
        let _ = reached_rx.await;
    });
    let to_bob = overtaken_at_mapping(&world, meanwhile);

    apply_change(&to_bob, versioned_body("updated", "bob", 10, 2)).await;
    let _ = go_tx.send(());
    back_rx.await.unwrap();

    settle(&w, cal, &[&ann, &bob]).await;
    assert_booked_with(&w, cal, "ann", 11, "bob").await;
}

/// The move to bob (v2) records its intent and is about to delete ann's event (held at the
/// Graph delete). The move back to ann (v3) is written from start to end meanwhile: the
/// session's mapping is still ann's event, so it updates it in place and maps it. Then the
/// move to bob deletes that event, its removal of the mapping loses (no retry), it creates
/// bob's event and, re-reading after its lost commit, finds only the mapping "elsewhere" it
/// saw (`Placement::moved_on` is false): it maps the session, now ann's, to bob's event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review4_a_move_back_written_while_the_move_to_bob_is_deleting_anns_event_leaves_one_live_mapped_event_with_ann(
) {
    for cal in Cal::BOTH {
        let (w, ann, bob) = booked_with_ann(cal).await;
        let world = w.app.local.deps.clone();
        let (held, gate) = deletes_held(&w, cal);
        let to_bob = tokio::spawn(async move {
            apply_change(&held, versioned_body("updated", "bob", 10, 2)).await
        });
        gate.reached.await.unwrap();

        apply_change(&world, versioned_body("updated", "ann", 11, 3)).await;
        let _ = gate.go.send(());
        to_bob.await.unwrap();

        settle(&w, cal, &[&ann, &bob]).await;
        assert_booked_with(&w, cal, "ann", 11, "bob").await;
    }
}

// ---------------------------------------------------------------------------------------
// A re-booking while its old event is being deleted, or was not
// ---------------------------------------------------------------------------------------

/// The cancellation (v2) is about to delete the booking's event (held at the provider's
/// delete). The booking is confirmed again (v3) meanwhile: the re-booking retires the
/// mapping and makes a new event (it once reused the retired event, still live, and mapped it
/// again: the cancellation's delete then removed the event the mapping named, and the next
/// round read that as the staff member's deletion and cancelled the booking). The retired
/// event is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review4_a_re_booking_while_the_cancellation_is_deleting_the_event_keeps_a_live_mapped_event(
) {
    for cal in Cal::BOTH {
        let (w, ann, bob) = booked_with_ann(cal).await;
        let world = w.app.local.deps.clone();
        let (held, gate) = deletes_held(&w, cal);
        let cancel = tokio::spawn(async move {
            apply_change(&held, versioned_body("cancelled", "ann", 9, 2)).await
        });
        gate.reached.await.unwrap();

        let out = apply_change(&world, versioned_body("created", "ann", 11, 3)).await;
        let _ = gate.go.send(());
        cancel.await.unwrap();

        assert_eq!(out.calendars[0].outcome, "created", "{cal:?}: {out:?}");
        settle(&w, cal, &[&ann, &bob]).await;
        assert_booked_with(&w, cal, "ann", 11, "bob").await;
    }
}

/// The cancellation (v2) could not delete the event (the provider failed through every
/// try); the booking is confirmed again (v3) before any retry. The re-booking makes a new
/// event and deletes the old one it retired: one event, not two (Google's sync leaves a
/// tagged event of a confirmed booking alone, so an old one left there would stay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review4_a_re_booking_after_a_cancellation_whose_delete_failed_leaves_one_event() {
    for cal in Cal::BOTH {
        let (w, ann, bob) = booked_with_ann(cal).await;
        let world = w.app.local.deps.clone();
        match cal {
            Cal::Exchange => w.graph.add_fault(fault("DELETE", "ann", 500, 1)),
            Cal::Google => w.google.add_fault(fault("DELETE", "ann", 500, 4)),
        }
        let cancelled = apply_change(&world, versioned_body("cancelled", "ann", 9, 2)).await;
        assert_eq!(
            cancelled.calendars[0].outcome, "failed",
            "{cal:?}: {cancelled:?}"
        );

        let out = apply_change(&world, versioned_body("created", "ann", 11, 3)).await;

        assert_eq!(out.calendars[0].outcome, "created", "{cal:?}: {out:?}");
        settle(&w, cal, &[&ann, &bob]).await;
        assert_booked_with(&w, cal, "ann", 11, "bob").await;
    }
}

// ---------------------------------------------------------------------------------------
// The same move delivered twice at once, one create failing
// ---------------------------------------------------------------------------------------

/// The move to bob (v2) delivered twice. B reads the session (mapped to ann's event, mapping
/// version 1) and is held at its delete of ann's event. A is written from start to end: it
/// deletes ann's event, removes the mapping, creates bob's event and maps it (a new mapping:
/// version 1 again). Bob's calendar then fails once (Graph: one 500, which its client does
/// not retry; Google: 500s through the client's four tries). B goes on: ann's event is gone,
/// and its removal of the mapping it read (conditioned on version 1) removes A's mapping of
/// bob's event, leaving its by-event copy; B's create fails (`failed`). The platform sends
/// v2 again (stale: A settled it), then the next change (v3): it should move bob's event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review4_the_same_move_delivered_twice_with_one_failed_create_leaves_the_event_mapped_and_the_next_change_makes_no_second_event(
) {
    for cal in Cal::BOTH {
        let (w, ann, bob) = booked_with_ann(cal).await;
        let world = w.app.local.deps.clone();
        let (held, gate) = deletes_held(&w, cal);
        let twin_b = tokio::spawn(async move {
            apply_change(&held, versioned_body("updated", "bob", 10, 2)).await
        });
        gate.reached.await.unwrap();
        let a = apply_change(&world, versioned_body("updated", "bob", 10, 2)).await;
        assert_eq!(a.calendars[0].outcome, "created", "{cal:?}: {a:?}");
        match cal {
            Cal::Exchange => w.graph.add_fault(fault("POST", "bob", 500, 1)),
            Cal::Google => w.google.add_fault(fault("POST", "bob", 500, 4)),
        }
        let _ = gate.go.send(());
        let b = twin_b.await.unwrap();
        assert_eq!(b.calendars[0].outcome, "failed", "{cal:?}: {b:?}");

        // The platform sends the failed change again, then its next change.
        apply_change(&world, versioned_body("updated", "bob", 10, 2)).await;
        apply_change(&world, versioned_body("updated", "bob", 11, 3)).await;

        settle(&w, cal, &[&ann, &bob]).await;
        assert_booked_with(&w, cal, "bob", 11, "ann").await;
    }
}

// ---------------------------------------------------------------------------------------
// A session given back: the retired event's deletion is durable, and an overtaken move
// writes nothing into the other calendar
// ---------------------------------------------------------------------------------------

/// The move to bob (v2) could not remove ann's event (her calendar failed), so it stays live
/// and mapped; the booking is given back to ann (v3), whose create fails too: its intent
/// retired the old event's mapping. The platform sends v3 again: the retry has nothing new to
/// record, makes the new event, and still deletes the old one (the duty is in the session,
/// not in the first try's memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review4_a_booking_given_back_whose_first_write_failed_leaves_one_event_after_the_retry() {
    for cal in Cal::BOTH {
        let (w, ann, bob) = booked_with_ann(cal).await;
        let world = w.app.local.deps.clone();
        let tries = match cal {
            Cal::Exchange => 1,
            Cal::Google => 4,
        };
        let add = |f| match cal {
            Cal::Exchange => w.graph.add_fault(f),
            Cal::Google => w.google.add_fault(f),
        };
        add(fault("DELETE", "ann", 500, tries));
        let to_bob = apply_change(&world, versioned_body("updated", "bob", 10, 2)).await;
        assert_eq!(to_bob.calendars[0].outcome, "failed", "{cal:?}: {to_bob:?}");
        add(fault("POST", "ann", 500, tries));
        let back = apply_change(&world, versioned_body("updated", "ann", 11, 3)).await;
        assert_eq!(back.calendars[0].outcome, "failed", "{cal:?}: {back:?}");

        let retry = apply_change(&world, versioned_body("updated", "ann", 11, 3)).await;

        assert_eq!(retry.calendars[0].outcome, "created", "{cal:?}: {retry:?}");
        settle(&w, cal, &[&ann, &bob]).await;
        assert_booked_with(&w, cal, "ann", 11, "bob").await;
    }
}

/// Ann has Google, bob Exchange. The move to bob (v2) is at its Exchange closing commit when
/// the booking is given back to ann (v3), from start to end: v3 makes ann a new Google event
/// (the old one's mapping retired) and maps it. The move to bob is superseded in Exchange,
/// and its Google part must not act on what it reads now (v3's session and mapping): it once
/// took ann's new event for an event "elsewhere" and deleted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review4_an_overtaken_move_writes_nothing_into_the_calendar_the_newer_change_wrote() {
    let (w, ann_google) = CalendarsWorld::with(Cal::Google).await;
    let bob_exchange = w.connect(Cal::Exchange, "bob").await;
    let world = w.app.local.deps.clone();
    apply_change(&world, versioned_body("created", "ann", 9, 1)).await;
    assert_eq!(w.shown(Cal::Google, "ann", "s1").len(), 1);
    let other = world.clone();
    let meanwhile: Meanwhile = Box::pin(async move {
        apply_change(&other, versioned_body("updated", "ann", 11, 3)).await;
    });
    let to_bob = overtaken_at_mapping(&world, meanwhile);

    apply_change(&to_bob, versioned_body("updated", "bob", 10, 2)).await;

    w.sync(Cal::Google, &ann_google).await;
    w.sync(Cal::Exchange, &bob_exchange).await;
    let s = w.session("s1").await;
    assert_eq!(
        (s.staff_id.as_str(), s.status),
        ("ann", SessionStatus::Confirmed),
        "{:?}",
        s.history
    );
    let shown = w.shown(Cal::Google, "ann", "s1");
    assert_eq!(shown.len(), 1, "ann's Google: {shown:?}");
    assert_eq!(shown[0].start, at(11));
    assert_eq!(
        w.mapped_event(Cal::Google, "s1").await.as_deref(),
        Some(shown[0].id.as_str())
    );
    assert_eq!(
        w.shown(Cal::Exchange, "bob", "s1"),
        vec![],
        "bob's Exchange"
    );
}

/// Ann deletes her event (the cancellation starts pending); the platform gives the booking
/// to bob before the grace ends: it is confirmed and bob's calendar gets the event. Ann then
/// restores hers: it is no longer hers to show, so it is deleted, and the booking stays
/// bob's and confirmed (it was once cancelled by the sweep: ann's restore was ignored, the
/// session being bob's; two-staff simulation seeds 223 and 954).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review4_a_booking_given_to_bob_while_its_cancellation_is_pending_is_confirmed_with_bob() {
    for cal in Cal::BOTH {
        let (w, ann, bob) = booked_with_ann(cal).await;
        let world = w.app.local.deps.clone();
        let anns = w.shown(cal, "ann", "s1")[0].id.clone();
        w.staff_delete(cal, "ann", &anns);
        w.sync(cal, &ann).await;
        assert_eq!(
            w.session("s1").await.status,
            SessionStatus::PendingCancellation,
            "{cal:?}"
        );

        let to_bob = apply_change(&world, versioned_body("updated", "bob", 10, 2)).await;
        w.staff_restore(cal, "ann", &anns);

        assert_eq!(
            to_bob.session_status,
            SessionStatus::Confirmed,
            "{cal:?}: {to_bob:?}"
        );
        settle(&w, cal, &[&ann, &bob]).await;
        assert_booked_with(&w, cal, "bob", 10, "ann").await;
    }
}

/// Ann's and bob's Google connections reach one calendar (ann's, shared with bob). Ann's
/// booking is there; ann's connection is deleted (its mappings go with it) and bob's
/// connection is made afterwards, so its first sync lists the booking's event unmapped. The
/// event was written for ann, not bob: it is not taken for an earlier placement's leftover
/// and stays (the rule that deletes leftovers keys on the staff member an event was written
/// for, `voyageStaffId`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review4_a_shared_calendars_booking_stays_when_its_owners_connection_is_deleted() {
    let (w, ann) = CalendarsWorld::with(Cal::Google).await;
    let world = w.app.local.deps.clone();
    apply_change(&world, versioned_body("created", "ann", 9, 1)).await;
    let before = w.shown(Cal::Google, "ann", "s1");
    assert_eq!(before.len(), 1);
    let (status, body) = w
        .app
        .call("DELETE", &format!("/v1/connections/{ann}"), &w.tenant, None)
        .await;
    assert!(status == 204 || status == 200, "{status}: {body}");

    let (status, conn) = w
        .app
        .call(
            "POST",
            "/v1/connections",
            &w.tenant,
            Some(serde_json::json!({"provider": "google", "staff_id": "bob",
                "staff_email": voyage_tests::graph::email("bob"),
                "calendar_id": voyage_tests::graph::email("ann")})),
        )
        .await;
    assert_eq!(status, 201, "{conn}");
    let bob = conn["id"].as_str().unwrap().to_string();
    w.sync(Cal::Google, &bob).await;

    assert_eq!(w.shown(Cal::Google, "ann", "s1"), before);
}
