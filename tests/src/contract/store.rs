//! The typed-store contract: the errors callers branch on (not found, duplicate, conflict)
//! and the batching, paging and expiry rules, identical on every table adapter.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use voyage_core::model::availability::OverrideRef;
use voyage_core::model::{
    AvailabilityOverride, Connection, ConnectionStatus, CredentialRecord, CursorToken, DeltaCursor,
    EventMapping, Provider, PushChannel, Session, SessionStatus,
};
use voyage_core::ports::{ManualClock, Table};
use voyage_core::store::{Claim, OutboundWrite, Store};
use voyage_core::Error;

use crate::fixtures::Fixture;

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0)
        .single()
        .expect("valid time")
}

fn store(f: &Fixture<dyn Table>) -> (Store, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t0()));
    (Store::new(f.it.clone(), clock.clone()), clock)
}

pub fn connection(company: &str, id: &str, staff: &str, provider: Provider) -> Connection {
    Connection {
        id: id.into(),
        company_id: company.into(),
        provider,
        staff_id: staff.into(),
        staff_email: format!("{staff}@example.com"),
        calendar_id: Some("primary".into()),
        status: ConnectionStatus::Pending,
        last_sync_at: None,
        last_error: None,
        channel: None,
        created_at: t0(),
        updated_at: t0(),
        version: 0,
    }
}

pub fn session(company: &str, id: &str, staff: &str, start: DateTime<Utc>) -> Session {
    Session {
        id: id.into(),
        company_id: company.into(),
        staff_id: staff.into(),
        start,
        end: start + Duration::hours(1),
        time_zone: "Europe/Berlin".into(),
        title: "Consultation".into(),
        location: None,
        client: None,
        status: SessionStatus::Confirmed,
        declined: false,
        history: vec![],
        pending: None,
        outbox: vec![],
        platform_version: None,
        calendar_version: None,
        event_txn: None,
        google_event: None,
        retired: vec![],
        unsettled_times: vec![],
        times_changed_at: None,
        updated_at: t0(),
        version: 0,
    }
}

pub async fn connections_refuse_duplicates_and_stale_writes(f: &Fixture<dyn Table>) {
    let (s, _) = store(f);
    // GIVEN a connection for staff s1 on Google
    let mut c = s
        .create_connection(&connection("acme", "c1", "s1", Provider::Google))
        .await
        .unwrap();
    assert_eq!(c.version, 1);
    // WHEN a second Google connection for s1 is created THEN it is a duplicate
    let dup = s
        .create_connection(&connection("acme", "c2", "s1", Provider::Google))
        .await;
    assert!(matches!(dup, Err(Error::Duplicate { .. })), "{dup:?}");
    // ...but Exchange for the same staff member, and Google in another company, are fine.
    s.create_connection(&connection("acme", "c3", "s1", Provider::Exchange))
        .await
        .unwrap();
    s.create_connection(&connection("other", "c2", "s1", Provider::Google))
        .await
        .unwrap();
    // A missing connection is NotFound, including across companies.
    assert!(matches!(
        s.get_connection("acme", "nope").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.get_connection("other", "c1").await,
        Err(Error::NotFound { .. })
    ));
    // Compare-and-set: the first writer wins, a stale one gets Conflict.
    let mut stale = c.clone();
    c.status = ConnectionStatus::Active;
    s.update_connection(&mut c).await.unwrap();
    assert_eq!(c.version, 2);
    stale.status = ConnectionStatus::Error;
    assert!(matches!(
        s.update_connection(&mut stale).await,
        Err(Error::Conflict { .. })
    ));
    // The staff lookup sees the update (its copy is written in the same transaction).
    let by_staff = s
        .connection_for_staff("acme", "s1", Provider::Google)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (by_staff.status, by_staff.version),
        (ConnectionStatus::Active, 2)
    );
    // Deleted: updates are NotFound, the staff slot is free again.
    s.delete_connection("acme", "c1").await.unwrap();
    assert!(matches!(
        s.update_connection(&mut c).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        s.connection_for_staff("acme", "s1", Provider::Google)
            .await
            .unwrap(),
        None
    );
    s.create_connection(&connection("acme", "c4", "s1", Provider::Google))
        .await
        .unwrap();
}

pub async fn connections_are_found_by_channel_and_listed_in_pages(f: &Fixture<dyn Table>) {
    let (s, _) = store(f);
    for i in 0..5 {
        s.create_connection(&connection(
            "acme",
            &format!("c{i}"),
            &format!("s{i}"),
            Provider::Google,
        ))
        .await
        .unwrap();
    }
    s.create_connection(&connection("zeta", "z1", "s1", Provider::Exchange))
        .await
        .unwrap();
    let mut c = s.get_connection("acme", "c3").await.unwrap();
    c.channel = Some(PushChannel {
        id: "chan-3".into(),
        resource_id: Some("res".into()),
        expires_at: t0() + Duration::days(7),
        secret: "token".into(),
        renewed_at: Some(t0()),
    });
    s.update_connection(&mut c).await.unwrap();
    let found = s.connection_by_channel("chan-3").await.unwrap().unwrap();
    assert_eq!(found.id, "c3");
    assert_eq!(found.channel, c.channel, "the channel is kept whole");
    assert_eq!(s.connection_by_channel("chan-x").await.unwrap(), None);
    // Paging a company's connections: every page within the limit, all of them once.
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = s
            .list_connections("acme", Some(2), cursor.as_deref())
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        ids.extend(page.items.into_iter().map(|c| c.id));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(ids, ["c0", "c1", "c2", "c3", "c4"]);
    // Bad paging input names its field.
    assert_eq!(
        s.list_connections("acme", Some(0), None)
            .await
            .unwrap_err()
            .field(),
        Some("limit")
    );
    assert_eq!(
        s.list_connections("acme", None, Some("forged"))
            .await
            .unwrap_err()
            .field(),
        Some("cursor")
    );
    // Every Google connection across companies, for the sync job.
    let google = s.all_connections(Provider::Google, None).await.unwrap();
    assert_eq!(google.items.len(), 5);
    assert_eq!(
        s.all_connections(Provider::Exchange, None)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

pub async fn a_conflicting_cursor_update_is_refused(f: &Fixture<dyn Table>) {
    let (s, _) = store(f);
    let fresh = DeltaCursor {
        company_id: "acme".into(),
        connection_id: "c1".into(),
        token: CursorToken::GoogleSyncToken("t1".into()),
        updated_at: t0(),
        based_at: None,
        calendar_time_zone: None,
        version: 0,
    };
    // GIVEN two workers that both read "no cursor yet"
    let mut a = fresh.clone();
    let mut b = fresh.clone();
    b.token = CursorToken::GoogleSyncToken("t1-b".into());
    // WHEN both store their round's token THEN exactly the first succeeds
    s.save_cursor(&mut a).await.unwrap();
    assert!(matches!(
        s.save_cursor(&mut b).await,
        Err(Error::Conflict { .. })
    ));
    // AND a later round from the stored version advances it, while a stale one is refused
    let mut read = s.get_cursor("acme", "c1").await.unwrap().unwrap();
    assert_eq!(
        (read.version, read.token.clone()),
        (1, CursorToken::GoogleSyncToken("t1".into()))
    );
    let mut stale = read.clone();
    read.token = CursorToken::GraphDeltaLink("https://graph/delta?x=2".into());
    s.save_cursor(&mut read).await.unwrap();
    stale.token = CursorToken::GoogleSyncToken("t-stale".into());
    assert!(matches!(
        s.save_cursor(&mut stale).await,
        Err(Error::Conflict { .. })
    ));
    let now = s.get_cursor("acme", "c1").await.unwrap().unwrap();
    assert_eq!(now.version, 2);
    assert_eq!(
        now.token,
        CursorToken::GraphDeltaLink("https://graph/delta?x=2".into())
    );
    // Cleared (a 410): the next round starts from nothing.
    s.clear_cursor("acme", "c1").await.unwrap();
    assert_eq!(s.get_cursor("acme", "c1").await.unwrap(), None);
}

pub async fn api_keys_authenticate_until_revoked(f: &Fixture<dyn Table>) {
    let (s, _) = store(f);
    let key = voyage_core::auth::create_key(&s, "acme", true, Some("ci".into()))
        .await
        .unwrap();
    let header = format!("Bearer {}", key.plaintext);
    let p = voyage_core::auth::authenticate(&s, Some(&header))
        .await
        .unwrap();
    assert_eq!((p.company_id.as_str(), p.internal), ("acme", true));
    assert!(matches!(
        voyage_core::auth::authenticate(&s, Some("Bearer vk_nope")).await,
        Err(Error::Unauthorized)
    ));
    assert_eq!(s.list_api_keys("acme").await.unwrap().len(), 1);
    assert!(s.list_api_keys("other").await.unwrap().is_empty());
    assert!(matches!(
        s.revoke_api_key("other", &key.record.id).await,
        Err(Error::NotFound { .. })
    ));
    s.revoke_api_key("acme", &key.record.id).await.unwrap();
    assert!(matches!(
        voyage_core::auth::authenticate(&s, Some(&header)).await,
        Err(Error::Unauthorized)
    ));
    // Nothing stored can be used as a key.
    let stored = s.list_api_keys("acme").await.unwrap();
    assert_ne!(stored[0].key_hash, key.plaintext);
}

pub async fn idempotency_claims_replay_and_expire(f: &Fixture<dyn Table>) {
    let (s, clock) = store(f);
    let lease = Duration::minutes(2);
    let ttl = Duration::hours(24);
    assert_eq!(
        s.claim_idempotent("acme", "dispatch", "k1", lease)
            .await
            .unwrap(),
        Claim::Fresh
    );
    assert_eq!(
        s.claim_idempotent("acme", "dispatch", "k1", lease)
            .await
            .unwrap(),
        Claim::InFlight
    );
    // Keys are per company.
    assert_eq!(
        s.claim_idempotent("other", "dispatch", "k1", lease)
            .await
            .unwrap(),
        Claim::Fresh
    );
    let answer = serde_json::json!({"event_id": "evt_1"});
    s.complete_idempotent("acme", "dispatch", "k1", ttl, answer.clone())
        .await
        .unwrap();
    // A claim whose holder died (never completed) frees the key once its lease passes...
    assert_eq!(
        s.claim_idempotent("acme", "dispatch", "k2", lease)
            .await
            .unwrap(),
        Claim::Fresh
    );
    clock.advance(Duration::minutes(3));
    assert_eq!(
        s.claim_idempotent("acme", "dispatch", "k2", lease)
            .await
            .unwrap(),
        Claim::Fresh
    );
    // ...while a completed answer is replayed for the whole ttl, past any lease.
    assert_eq!(
        s.claim_idempotent("acme", "dispatch", "k1", lease)
            .await
            .unwrap(),
        Claim::Replay(answer)
    );
    // After the ttl the key is fresh again, whether or not the store purged it yet.
    clock.advance(Duration::hours(25));
    assert_eq!(
        s.claim_idempotent("acme", "dispatch", "k1", lease)
            .await
            .unwrap(),
        Claim::Fresh
    );
}

pub async fn mappings_are_read_by_event_in_batches(f: &Fixture<dyn Table>) {
    let (s, _) = store(f);
    for i in 0..150 {
        let mut m = EventMapping {
            company_id: "acme".into(),
            session_id: format!("sess{i}"),
            connection_id: "c1".into(),
            provider: Provider::Exchange,
            external_event_id: format!("evt{i}"),
            change_key: Some(format!("ck{i}")),
            last_start: t0(),
            last_end: t0() + Duration::hours(1),
            updated_at: t0(),
            version: 0,
            modified: None,
        };
        s.save_mapping(&mut m).await.unwrap();
        assert_eq!(m.version, 1);
    }
    let mut dup = s
        .mapping_for_session("acme", Provider::Exchange, "sess0")
        .await
        .unwrap()
        .unwrap();
    dup.version = 0;
    assert!(matches!(
        s.save_mapping(&mut dup).await,
        Err(Error::Duplicate { .. })
    ));
    // 150 events plus unknown ones: chunked batch reads find exactly the known.
    let mut events: Vec<String> = (0..150).map(|i| format!("evt{i}")).collect();
    events.push("unknown".into());
    events.push("evt3".into());
    let found = s.mappings_for_events("acme", "c1", &events).await.unwrap();
    assert_eq!(found.len(), 150);
    // Updating with the stored version works; the by-event copy follows.
    let mut m = s
        .mapping_for_session("acme", Provider::Exchange, "sess7")
        .await
        .unwrap()
        .unwrap();
    m.change_key = Some("ck-new".into());
    s.save_mapping(&mut m).await.unwrap();
    let by_event = s
        .mappings_for_events("acme", "c1", &["evt7".into()])
        .await
        .unwrap();
    assert_eq!(by_event[0].change_key.as_deref(), Some("ck-new"));
    s.delete_mapping(&m).await.unwrap();
    assert!(s
        .mappings_for_events("acme", "c1", &["evt7".into()])
        .await
        .unwrap()
        .is_empty());
}

pub async fn overrides_are_written_in_batches_and_read_by_range(f: &Fixture<dyn Table>) {
    let (s, _) = store(f);
    // Overrides count for the staff member's current connections only.
    s.create_connection(&connection("acme", "c1", "s1", Provider::Google))
        .await
        .unwrap();
    let make = |i: i64| AvailabilityOverride {
        company_id: "acme".into(),
        staff_id: "s1".into(),
        connection_id: "c1".into(),
        source: Provider::Google,
        external_event_id: format!("e{i:03}"),
        start: t0() + Duration::hours(i),
        end: t0() + Duration::hours(i) + Duration::minutes(30),
        all_day: false,
        updated_at: t0(),
        listing: None,
    };
    let all: Vec<AvailabilityOverride> = (0..60).map(make).collect();
    s.apply_overrides(&all, &[]).await.unwrap();
    let window = s
        .overrides_for_staff(
            "acme",
            "s1",
            t0() + Duration::hours(10),
            t0() + Duration::hours(12),
        )
        .await
        .unwrap();
    let ids: Vec<&str> = window
        .iter()
        .map(|o| o.external_event_id.as_str())
        .collect();
    assert_eq!(ids, ["e010", "e011"]);
    // Remove 40, move one: the batch mixes puts and deletes across several calls.
    let removals: Vec<OverrideRef> = all[..40].iter().map(|o| o.reference()).collect();
    let mut moved = make(50);
    moved.start = t0() - Duration::hours(5);
    moved.end = t0() - Duration::hours(4);
    s.apply_overrides(&[moved], &removals).await.unwrap();
    let left = s
        .overrides_for_connection("acme", "s1", "c1")
        .await
        .unwrap();
    assert_eq!(left.len(), 20);
    let early = s
        .overrides_for_staff("acme", "s1", t0() - Duration::days(1), t0())
        .await
        .unwrap();
    assert_eq!(early.len(), 1);
    assert_eq!(early[0].external_event_id, "e050");
    assert!(s
        .overrides_for_staff(
            "other",
            "s1",
            t0() - Duration::days(9),
            t0() + Duration::days(9)
        )
        .await
        .unwrap()
        .is_empty());
    // Left behind by a connection that no longer exists: ignored.
    let orphan = AvailabilityOverride {
        connection_id: "gone".into(),
        external_event_id: "orphan".into(),
        ..make(55)
    };
    s.apply_overrides(&[orphan], &[]).await.unwrap();
    let after = s
        .overrides_for_staff(
            "acme",
            "s1",
            t0() + Duration::hours(55),
            t0() + Duration::hours(56),
        )
        .await
        .unwrap();
    let ids: Vec<&str> = after.iter().map(|o| o.external_event_id.as_str()).collect();
    assert_eq!(ids, ["e055"]);
}

pub async fn sessions_are_conditional_and_found_by_staff_and_time(f: &Fixture<dyn Table>) {
    let (s, _) = store(f);
    let mut a = s
        .create_session(&session("acme", "a", "s1", t0()))
        .await
        .unwrap();
    s.create_session(&session("acme", "b", "s1", t0() + Duration::hours(2)))
        .await
        .unwrap();
    s.create_session(&session("acme", "c", "s1", t0() + Duration::days(2)))
        .await
        .unwrap();
    s.create_session(&session("acme", "d", "s2", t0()))
        .await
        .unwrap();
    assert!(matches!(
        s.create_session(&session("acme", "a", "s1", t0())).await,
        Err(Error::Duplicate { .. })
    ));
    let mut stale = a.clone();
    a.status = SessionStatus::PendingCancellation;
    s.update_session(&mut a).await.unwrap();
    stale.status = SessionStatus::Cancelled;
    assert!(matches!(
        s.update_session(&mut stale).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(
        s.get_session("acme", "a").await.unwrap().status,
        SessionStatus::PendingCancellation
    );
    assert!(matches!(
        s.get_session("acme", "zz").await,
        Err(Error::NotFound { .. })
    ));
    // Moving a session re-indexes it under its new start.
    let mut b = s.get_session("acme", "b").await.unwrap();
    b.start = t0() + Duration::days(3);
    b.end = b.start + Duration::hours(1);
    s.update_session(&mut b).await.unwrap();
    let today: Vec<String> = s
        .sessions_for_staff(
            "acme",
            "s1",
            t0() - Duration::hours(1),
            t0() + Duration::days(1),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(today, ["a"]);
    let later: Vec<String> = s
        .sessions_for_staff(
            "acme",
            "s1",
            t0() + Duration::days(1),
            t0() + Duration::days(4),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(later, ["c", "b"]);
}

pub async fn credentials_are_replaced_and_kept_per_provider(f: &Fixture<dyn Table>) {
    let (s, _) = store(f);
    assert_eq!(
        s.get_credentials("acme", Provider::Exchange).await.unwrap(),
        None
    );
    let mut identity = serde_json::Map::new();
    identity.insert("tenant_id".into(), serde_json::json!("t1"));
    let record = CredentialRecord {
        company_id: "acme".into(),
        provider: Provider::Exchange,
        identity,
        sealed: "v1.sealed-1".into(),
        updated_at: t0(),
        version: 0,
    };
    assert_eq!(s.put_credentials(&record).await.unwrap().version, 1);
    let second = CredentialRecord {
        sealed: "v1.sealed-2".into(),
        ..record.clone()
    };
    assert_eq!(s.put_credentials(&second).await.unwrap().version, 2);
    let stored = s
        .get_credentials("acme", Provider::Exchange)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.sealed, "v1.sealed-2");
    assert_eq!(
        s.get_credentials("acme", Provider::Google).await.unwrap(),
        None
    );
    assert_eq!(
        s.get_credentials("globex", Provider::Exchange)
            .await
            .unwrap(),
        None
    );
}

pub async fn outbound_context_is_one_read_and_its_commit_all_or_nothing(f: &Fixture<dyn Table>) {
    let (s, _) = store(f);
    // GIVEN a staff member's connection and nothing else
    let conn = s
        .create_connection(&connection("acme", "c1", "ann", Provider::Exchange))
        .await
        .unwrap();
    let empty = s
        .outbound_context("acme", "ann", "sess1", Provider::Exchange)
        .await
        .unwrap();
    assert_eq!(empty.connection.as_ref().map(|c| c.version), Some(1));
    assert!(empty.session.is_none() && empty.mapping.is_none() && empty.credentials.is_none());
    // WHEN a session, its mapping and the connection's sync state are committed together
    let mut synced = conn.clone();
    synced.last_sync_at = Some(t0());
    let mapping = EventMapping {
        company_id: "acme".into(),
        session_id: "sess1".into(),
        connection_id: "c1".into(),
        provider: Provider::Exchange,
        external_event_id: "evt1".into(),
        change_key: Some("ck1".into()),
        last_start: t0(),
        last_end: t0() + Duration::hours(1),
        updated_at: t0(),
        version: 0,
        modified: None,
    };
    let mut writes = vec![
        OutboundWrite::Session(session("acme", "sess1", "ann", t0())),
        OutboundWrite::Mapping {
            next: mapping.clone(),
            previous: None,
        },
        OutboundWrite::Connection(synced),
    ];
    s.commit_outbound(&mut writes).await.unwrap();
    // THEN one read sees all of it, and the by-event copy is there too
    let ctx = s
        .outbound_context("acme", "ann", "sess1", Provider::Exchange)
        .await
        .unwrap();
    assert_eq!(ctx.session.as_ref().map(|x| x.version), Some(1));
    assert_eq!(ctx.mapping.as_ref().map(|m| m.version), Some(1));
    let fresh = ctx.connection.clone().unwrap();
    assert_eq!((fresh.version, fresh.last_sync_at), (2, Some(t0())));
    assert_eq!(
        s.mappings_for_events("acme", "c1", &["evt1".into()])
            .await
            .unwrap()
            .len(),
        1
    );
    // WHEN a commit carries one stale version (the session read before the last write)
    let stale_session = session("acme", "sess1", "ann", t0() + Duration::hours(3));
    let mut moved = mapping.clone();
    moved.version = 1;
    moved.change_key = Some("ck2".into());
    let mut writes = vec![
        OutboundWrite::Session(stale_session),
        OutboundWrite::Mapping {
            next: moved,
            previous: ctx.mapping.clone(),
        },
    ];
    // THEN it is a conflict and nothing of it is written
    assert!(matches!(
        s.commit_outbound(&mut writes).await,
        Err(Error::Conflict { .. })
    ));
    let after = s
        .outbound_context("acme", "ann", "sess1", Provider::Exchange)
        .await
        .unwrap();
    assert_eq!(after.mapping.unwrap().change_key.as_deref(), Some("ck1"));
    assert_eq!(after.session.unwrap().start, t0());
    // AND deleting the mapping with its current version removes both records
    let mut writes = vec![OutboundWrite::DeleteMapping(ctx.mapping.clone().unwrap())];
    s.commit_outbound(&mut writes).await.unwrap();
    assert!(s
        .mappings_for_events("acme", "c1", &["evt1".into()])
        .await
        .unwrap()
        .is_empty());
}

fn delivery(n: usize, status: voyage_core::model::DeliveryStatus) -> voyage_core::model::Delivery {
    voyage_core::model::Delivery {
        id: format!("d{n:02}"),
        company_id: "acme".into(),
        endpoint_id: "ep1".into(),
        event_id: format!("e{n:02}"),
        event_type: "session.created".into(),
        body: serde_json::value::RawValue::from_string("{}".into()).expect("raw JSON"),
        status,
        attempt_count: 1,
        last_status_code: None,
        last_error_class: None,
        next_attempt_at: None,
        redelivery_of: None,
        rate_slot: None,
        created_at: t0(),
        updated_at: t0(),
        version: 0,
    }
}

pub async fn deliveries_listed_by_status_fill_their_pages_and_resume_after_the_last_listed(
    f: &Fixture<dyn Table>,
) {
    use voyage_core::model::DeliveryStatus;
    // Arrange: twelve deliveries of one endpoint, every third failed.
    let (store, _) = store(f);
    let all: Vec<_> = (0..12)
        .map(|n| {
            let status = if n % 3 == 0 {
                DeliveryStatus::Failed
            } else {
                DeliveryStatus::Succeeded
            };
            delivery(n, status)
        })
        .collect();
    store.create_deliveries(&all).await.expect("created");

    // Act: the failed ones, two per page, following the cursors.
    let (mut pages, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let page = store
            .list_deliveries(
                "acme",
                "ep1",
                Some(DeliveryStatus::Failed),
                Some(2),
                cursor.as_deref(),
            )
            .await
            .expect("listed");
        pages.push(page.items.iter().map(|d| d.id.clone()).collect::<Vec<_>>());
        match page.next {
            Some(next) if pages.len() < 10 => cursor = Some(next),
            _ => break,
        }
    }

    // Assert: full pages, newest first, each failed delivery once.
    assert_eq!(pages[0], vec!["d09", "d06"], "{pages:?}");
    assert_eq!(
        pages.concat(),
        vec!["d09", "d06", "d03", "d00"],
        "{pages:?}"
    );
    assert_eq!(pages.len(), 2, "no cursor after the last one: {pages:?}");
}

pub async fn a_cursor_of_another_listing_is_refused_as_the_cursor_field(f: &Fixture<dyn Table>) {
    use voyage_core::model::DeliveryStatus;
    // Arrange: three connections each of two companies, and three deliveries of an
    // endpoint, so each listing of two a page has a cursor.
    let (s, _) = store(f);
    for company in ["acme", "zeta"] {
        for i in 0..3 {
            let (id, staff) = (format!("c{i}"), format!("s{i}"));
            s.create_connection(&connection(company, &id, &staff, Provider::Google))
                .await
                .expect("created");
        }
    }
    let deliveries: Vec<_> = (0..3)
        .map(|n| delivery(n, DeliveryStatus::Failed))
        .collect();
    s.create_deliveries(&deliveries).await.expect("created");
    let zeta_cursor = s
        .list_connections("zeta", Some(2), None)
        .await
        .expect("listed")
        .next
        .expect("a cursor");
    let deliveries_cursor = s
        .list_deliveries("acme", "ep1", None, Some(2), None)
        .await
        .expect("listed")
        .next
        .expect("a cursor");

    // Act: each cursor given to a listing it was not made by
    let refused = [
        s.list_connections("acme", Some(2), Some(&zeta_cursor))
            .await
            .map(|_| ()),
        s.list_connections("acme", Some(2), Some(&deliveries_cursor))
            .await
            .map(|_| ()),
        s.list_endpoints("acme", Some(2), Some(&zeta_cursor))
            .await
            .map(|_| ()),
        s.list_deliveries("acme", "ep1", None, Some(2), Some(&zeta_cursor))
            .await
            .map(|_| ()),
        s.list_deliveries("acme", "ep2", None, Some(2), Some(&deliveries_cursor))
            .await
            .map(|_| ()),
    ];

    // Assert: each is a validation error naming the cursor (no store error, no page)
    let fields: Vec<_> = refused
        .iter()
        .map(|r| r.as_ref().err().and_then(|e| e.field()))
        .collect();
    assert_eq!(fields, [Some("cursor"); 5], "{refused:?}");
}

pub async fn new_deliveries_are_made_once_and_each_maker_told_which_it_made(
    f: &Fixture<dyn Table>,
) {
    use voyage_core::model::DeliveryStatus;
    // Arrange: three deliveries made, two of them again with two more
    let (s, _) = store(f);
    let first: Vec<_> = (0..3)
        .map(|n| delivery(n, DeliveryStatus::Pending))
        .collect();
    let made_first = s.create_new_deliveries(&first).await.expect("made");
    let mut again: Vec<_> = (1..5)
        .map(|n| delivery(n, DeliveryStatus::Pending))
        .collect();
    again[0].status = DeliveryStatus::Failed;

    // Act
    let made_again = s.create_new_deliveries(&again).await.expect("made");

    // Assert: the second call made only the two new ones, and left the existing as they were
    let ids = |ds: &[voyage_core::model::Delivery]| -> Vec<String> {
        ds.iter().map(|d| d.id.clone()).collect()
    };
    assert_eq!(ids(&made_first), ["d00", "d01", "d02"]);
    assert_eq!(ids(&made_again), ["d03", "d04"]);
    let kept = s.get_delivery("acme", "d01").await.expect("read");
    assert_eq!(kept.status, DeliveryStatus::Pending);
}

pub async fn a_channel_finds_its_connection_before_the_indexes_catch_up(f: &Fixture<dyn Table>) {
    // Arrange: a connection given a channel, read through a table whose indexes lag
    let (s, clock) = store(f);
    let lagging = Store::new(
        Arc::new(crate::lagging::LaggingIndexes::new(f.it.clone())),
        clock,
    );
    s.create_connection(&connection("acme", "c1", "s1", Provider::Exchange))
        .await
        .expect("created");
    let mut c = s.get_connection("acme", "c1").await.expect("read");
    c.channel = Some(PushChannel {
        id: "sub-1".into(),
        resource_id: None,
        expires_at: t0() + Duration::days(2),
        secret: "state".into(),
        renewed_at: None,
    });
    s.update_connection(&mut c).await.expect("updated");

    // Act
    let found = lagging.connection_by_channel("sub-1").await.expect("read");
    let unknown = lagging.connection_by_channel("sub-2").await.expect("read");

    // Assert
    assert_eq!(found.map(|c| c.id), Some("c1".to_string()));
    assert_eq!(unknown, None);
}

pub async fn a_replaced_or_deleted_channel_finds_no_connection(f: &Fixture<dyn Table>) {
    // Arrange: a connection's channel replaced, then a second connection deleted
    let (s, _) = store(f);
    let channel = |id: &str| PushChannel {
        id: id.into(),
        resource_id: None,
        expires_at: t0() + Duration::days(2),
        secret: "state".into(),
        renewed_at: None,
    };
    let mut c1 = connection("acme", "c1", "s1", Provider::Google);
    c1.channel = Some(channel("old"));
    s.create_connection(&c1).await.expect("created");
    let mut c1 = s.get_connection("acme", "c1").await.expect("read");
    c1.channel = Some(channel("new"));
    s.update_connection(&mut c1).await.expect("updated");
    let mut c2 = connection("acme", "c2", "s2", Provider::Google);
    c2.channel = Some(channel("gone"));
    s.create_connection(&c2).await.expect("created");
    s.delete_connection("acme", "c2").await.expect("deleted");

    // Act
    let found: Vec<Option<String>> = [
        s.connection_by_channel("old").await,
        s.connection_by_channel("new").await,
        s.connection_by_channel("gone").await,
    ]
    .into_iter()
    .map(|r| r.expect("read").map(|c| c.id))
    .collect();

    // Assert
    assert_eq!(found, [None, Some("c1".to_string()), None]);
}

pub async fn a_delivery_stored_before_the_log_was_keyed_by_time_sorts_among_the_new_ones(
    f: &Fixture<dyn Table>,
) {
    use voyage_core::model::DeliveryStatus;
    use voyage_core::ports::Key;
    // Arrange: a delivery made an hour ago whose log entry has the form the key had before
    // (`DLV#<its time-ordered id>`), then one made now
    let (s, _) = store(f);
    let mut old = delivery(1, DeliveryStatus::Succeeded);
    old.id = voyage_core::ids::new_id("dlv");
    old.created_at = Utc::now() - Duration::hours(1);
    s.create_deliveries(std::slice::from_ref(&old))
        .await
        .expect("made");
    let key = Key::new("CO#acme", format!("DLV#{}", old.id));
    let mut item = f.it.get(&key).await.expect("read").expect("stored");
    if let Some(index) = item.gsi1.as_mut() {
        index.sk = format!("DLV#{}", old.id);
    }
    f.it.put(item, voyage_core::ports::Condition::None)
        .await
        .expect("rewritten");
    let mut new = delivery(2, DeliveryStatus::Pending);
    new.created_at = Utc::now() + Duration::seconds(1);
    s.create_deliveries(std::slice::from_ref(&new))
        .await
        .expect("made");

    // Act
    let listed = s
        .list_deliveries("acme", "ep1", None, Some(2), None)
        .await
        .expect("listed");

    // Assert: newest first
    let ids: Vec<&str> = listed.items.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, [new.id.as_str(), old.id.as_str()]);
}
