//! The [`Table`] contract: conditions, batches, transactions, ordered and paged queries.

use voyage_core::ports::table::{BATCH_GET_LIMIT, BATCH_WRITE_LIMIT};
use voyage_core::ports::{Condition, Index, Item, Key, Query, StoreError, Table, TxWrite};

use crate::fixtures::Fixture;

fn item(pk: &str, sk: &str, data: &str) -> Item {
    Item::new(Key::new(pk, sk), data.to_string())
}

async fn all(table: &dyn Table, index: Option<Index>, mut q: Query) -> Vec<Item> {
    let mut out = Vec::new();
    loop {
        let page = match index {
            Some(i) => table.query_index(i, q.clone()).await,
            None => table.query(q.clone()).await,
        }
        .expect("query");
        assert!(page.items.len() <= q.limit, "page larger than its limit");
        out.extend(page.items);
        match page.next {
            Some(n) => q.cursor = Some(n),
            None => return out,
        }
    }
}

fn sks(items: &[Item]) -> Vec<String> {
    items.iter().map(|i| i.key.sk.clone()).collect()
}

pub async fn create_is_refused_when_the_item_exists(f: &Fixture<dyn Table>) {
    let t = f.it.as_ref();
    // GIVEN an item created with NotExists
    t.put(item("P", "a", "first"), Condition::NotExists)
        .await
        .unwrap();
    // WHEN it is created again
    let again = t.put(item("P", "a", "second"), Condition::NotExists).await;
    // THEN the condition fails and the first data stays
    assert_eq!(again, Err(StoreError::ConditionFailed));
    assert_eq!(
        t.get(&Key::new("P", "a")).await.unwrap().unwrap().data,
        "first"
    );
    assert_eq!(t.get(&Key::new("P", "zz")).await.unwrap(), None);
}

pub async fn versioned_writes_are_compare_and_set(f: &Fixture<dyn Table>) {
    let t = f.it.as_ref();
    t.put(item("P", "v", "1"), Condition::NotExists)
        .await
        .unwrap();
    let mut v2 = item("P", "v", "2");
    v2.version = 2;
    t.put(v2.clone(), Condition::Version(1)).await.unwrap();
    // A writer still holding version 1 loses.
    let mut stale = item("P", "v", "stale");
    stale.version = 2;
    assert_eq!(
        t.put(stale, Condition::Version(1)).await,
        Err(StoreError::ConditionFailed)
    );
    let got = t.get(&Key::new("P", "v")).await.unwrap().unwrap();
    assert_eq!((got.version, got.data.as_str()), (2, "2"));
    // Version and Exists conditions on a missing item fail.
    assert_eq!(
        t.put(item("P", "missing", "x"), Condition::Version(1))
            .await,
        Err(StoreError::ConditionFailed)
    );
    assert_eq!(
        t.put(item("P", "missing", "x"), Condition::Exists).await,
        Err(StoreError::ConditionFailed)
    );
    assert_eq!(t.get(&Key::new("P", "missing")).await.unwrap(), None);
    // Deletes honour conditions too.
    assert_eq!(
        t.delete(&Key::new("P", "v"), Condition::Version(1)).await,
        Err(StoreError::ConditionFailed)
    );
    t.delete(&Key::new("P", "v"), Condition::Version(2))
        .await
        .unwrap();
    assert_eq!(t.get(&Key::new("P", "v")).await.unwrap(), None);
    // An unconditional delete of a missing item is fine.
    t.delete(&Key::new("P", "v"), Condition::None)
        .await
        .unwrap();
}

pub async fn items_round_trip_every_field(f: &Fixture<dyn Table>) {
    let t = f.it.as_ref();
    let mut full = item("P", "full", r#"{"emoji":"🛶","quote":"\"x\""}"#);
    full.gsi1 = Some(Key::new("G1", "g1sk"));
    full.gsi2 = Some(Key::new("G2", "g2sk"));
    full.version = 7;
    full.expires_at = Some(1_900_000_000);
    t.put(full.clone(), Condition::None).await.unwrap();
    assert_eq!(t.get(&full.key).await.unwrap(), Some(full));
}

pub async fn batch_get_reads_what_exists(f: &Fixture<dyn Table>) {
    let t = f.it.as_ref();
    for i in 0..30 {
        t.put(
            item("B", &format!("{i:03}"), &i.to_string()),
            Condition::None,
        )
        .await
        .unwrap();
    }
    let mut keys: Vec<Key> = (0..BATCH_GET_LIMIT)
        .map(|i| Key::new("B", format!("{i:03}")))
        .collect();
    keys[99] = keys[0].clone(); // a key named twice is read once
    let mut got = sks(&t.batch_get(&keys).await.unwrap());
    got.sort();
    let want: Vec<String> = (0..30).map(|i| format!("{i:03}")).collect();
    assert_eq!(got, want);
    let too_many: Vec<Key> = (0..=BATCH_GET_LIMIT)
        .map(|i| Key::new("B", format!("{i:03}")))
        .collect();
    assert!(t.batch_get(&too_many).await.is_err());
}

pub async fn batch_write_puts_and_deletes_within_limits(f: &Fixture<dyn Table>) {
    let t = f.it.as_ref();
    t.put(item("W", "old", "x"), Condition::None).await.unwrap();
    let puts: Vec<Item> = (0..BATCH_WRITE_LIMIT - 1)
        .map(|i| item("W", &format!("n{i:02}"), "y"))
        .collect();
    t.batch_write(puts, vec![Key::new("W", "old")])
        .await
        .unwrap();
    let got = all(t, None, Query::prefix("W", "", 100)).await;
    assert_eq!(got.len(), BATCH_WRITE_LIMIT - 1);
    assert!(got.iter().all(|i| i.key.sk.starts_with('n')));
    // More than the limit, or one key twice, is refused whole.
    let over: Vec<Item> = (0..=BATCH_WRITE_LIMIT)
        .map(|i| item("W2", &i.to_string(), "z"))
        .collect();
    assert!(t.batch_write(over, vec![]).await.is_err());
    assert!(t
        .batch_write(vec![item("W2", "a", "1")], vec![Key::new("W2", "a")])
        .await
        .is_err());
    assert!(all(t, None, Query::prefix("W2", "", 100)).await.is_empty());
}

pub async fn transactions_are_all_or_nothing(f: &Fixture<dyn Table>) {
    let t = f.it.as_ref();
    t.put(item("T", "exists", "x"), Condition::None)
        .await
        .unwrap();
    // One failing condition cancels every write.
    let r = t
        .transact(vec![
            TxWrite::Put(item("T", "new", "1"), Condition::NotExists),
            TxWrite::Put(item("T", "exists", "2"), Condition::NotExists),
        ])
        .await;
    assert_eq!(r, Err(StoreError::ConditionFailed));
    assert_eq!(t.get(&Key::new("T", "new")).await.unwrap(), None);
    // All conditions holding: every write lands.
    t.transact(vec![
        TxWrite::Put(item("T", "new", "1"), Condition::NotExists),
        TxWrite::Delete(Key::new("T", "exists"), Condition::Version(1)),
    ])
    .await
    .unwrap();
    assert!(t.get(&Key::new("T", "new")).await.unwrap().is_some());
    assert_eq!(t.get(&Key::new("T", "exists")).await.unwrap(), None);
}

pub async fn a_transactions_check_guards_its_writes_and_writes_nothing(f: &Fixture<dyn Table>) {
    let t = f.it.as_ref();
    t.put(item("T", "guard", "g"), Condition::None)
        .await
        .unwrap();
    // A failing check cancels the writes beside it.
    for failing in [
        TxWrite::Check(Key::new("T", "guard"), Condition::Version(2)),
        TxWrite::Check(Key::new("T", "guard"), Condition::NotExists),
        TxWrite::Check(Key::new("T", "absent"), Condition::Exists),
    ] {
        let r = t
            .transact(vec![
                TxWrite::Put(item("T", "guarded", "1"), Condition::None),
                failing.clone(),
            ])
            .await;
        assert_eq!(r, Err(StoreError::ConditionFailed), "{failing:?}");
        assert_eq!(t.get(&Key::new("T", "guarded")).await.unwrap(), None);
    }
    // Holding checks: the writes land and the checked items are left as they were.
    t.transact(vec![
        TxWrite::Check(Key::new("T", "guard"), Condition::Version(1)),
        TxWrite::Check(Key::new("T", "absent"), Condition::NotExists),
        TxWrite::Put(item("T", "guarded", "1"), Condition::NotExists),
    ])
    .await
    .unwrap();
    assert!(t.get(&Key::new("T", "guarded")).await.unwrap().is_some());
    assert_eq!(
        t.get(&Key::new("T", "guard")).await.unwrap().unwrap().data,
        "g"
    );
    assert_eq!(t.get(&Key::new("T", "absent")).await.unwrap(), None);
    // A check without a condition, or of an item the transaction also writes, is refused,
    // not sent (DynamoDB refuses two operations on one item in a transaction).
    for refused in [
        vec![TxWrite::Check(Key::new("T", "guard"), Condition::None)],
        vec![
            TxWrite::Check(Key::new("T", "guard"), Condition::Version(1)),
            TxWrite::Put(item("T", "guard", "again"), Condition::None),
        ],
    ] {
        let r = t.transact(refused).await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    }
    assert_eq!(
        t.get(&Key::new("T", "guard")).await.unwrap().unwrap().data,
        "g"
    );
}

pub async fn queries_are_ordered_paged_and_bounded(f: &Fixture<dyn Table>) {
    let t = f.it.as_ref();
    let sks_in = ["A#3", "A#1", "A#5", "A#2", "A#4", "B#1", "A"];
    for sk in sks_in {
        t.put(item("Q", sk, sk), Condition::None).await.unwrap();
    }
    t.put(item("Q2", "A#9", "other partition"), Condition::None)
        .await
        .unwrap();
    // Every page at most `limit`, all items in sort-key order, nothing outside the prefix.
    let got = all(t, None, Query::prefix("Q", "A#", 2)).await;
    assert_eq!(sks(&got), ["A#1", "A#2", "A#3", "A#4", "A#5"]);
    // An upper bound stops the range.
    let mut bounded = Query::prefix("Q", "A#", 10);
    bounded.upper = Some("A#3".into());
    assert_eq!(sks(&all(t, None, bounded).await), ["A#1", "A#2", "A#3"]);
    // A lower bound starts it; with both, only the range between is read.
    let mut from = Query::prefix("Q", "A#", 10);
    from.lower = Some("A#4".into());
    assert_eq!(sks(&all(t, None, from).await), ["A#4", "A#5"]);
    let between = Query::between("Q", "A#", "A#2", "A#4", 1);
    assert_eq!(sks(&all(t, None, between).await), ["A#2", "A#3", "A#4"]);
    // An empty prefix covers the partition.
    assert_eq!(
        all(t, None, Query::prefix("Q", "", 3)).await.len(),
        sks_in.len()
    );
    // Exactly `limit` items: no further page is promised.
    let exact = t.query(Query::prefix("Q", "A#", 5)).await.unwrap();
    assert_eq!((exact.items.len(), exact.next), (5, None));
    // A forged cursor is an error, not a silent restart.
    let mut forged = Query::prefix("Q", "A#", 2);
    forged.cursor = Some("not-a-cursor".into());
    assert!(t.query(forged).await.is_err());
}

pub async fn index_queries_are_ordered_and_paged(f: &Fixture<dyn Table>) {
    let t = f.it.as_ref();
    for (i, when) in ["2026-01-03", "2026-01-01", "2026-01-02", "2026-01-05"]
        .iter()
        .enumerate()
    {
        let mut it = item(&format!("P{i}"), "S", when);
        it.gsi1 = Some(Key::new("IDX", format!("DUE#{when}")));
        it.gsi2 = Some(Key::new("OTHER", format!("{i}")));
        t.put(it, Condition::None).await.unwrap();
    }
    let mut unindexed = item("P9", "S", "none");
    unindexed.gsi2 = Some(Key::new("OTHER", "9"));
    t.put(unindexed, Condition::None).await.unwrap();
    let got = all(t, Some(Index::Gsi1), Query::prefix("IDX", "DUE#", 1)).await;
    let data: Vec<&str> = got.iter().map(|i| i.data.as_str()).collect();
    assert_eq!(
        data,
        ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-05"]
    );
    let mut due = Query::prefix("IDX", "DUE#", 10);
    due.upper = Some("DUE#2026-01-02".into());
    assert_eq!(all(t, Some(Index::Gsi1), due).await.len(), 2);
    let window = Query::between("IDX", "DUE#", "DUE#2026-01-02", "DUE#2026-01-04", 1);
    let got = all(t, Some(Index::Gsi1), window).await;
    let data: Vec<&str> = got.iter().map(|i| i.data.as_str()).collect();
    assert_eq!(data, ["2026-01-02", "2026-01-03"]);
    let mut later = Query::prefix("IDX", "DUE#", 10);
    later.lower = Some("DUE#2026-01-03".into());
    assert_eq!(all(t, Some(Index::Gsi1), later).await.len(), 2);
    assert_eq!(
        all(t, Some(Index::Gsi2), Query::prefix("OTHER", "", 2))
            .await
            .len(),
        5
    );
    // A sweep's paging (the pending-cancellation sweep): an empty prefix under an upper
    // bound, resumed after the item its cursor names has left the index, as a committed
    // cancellation leaves the pending index. Nothing is skipped or read twice.
    let mut sweep = Query::prefix("IDX", "", 1);
    sweep.upper = Some("DUE#2026-01-03~".into());
    let first = t.query_index(Index::Gsi1, sweep.clone()).await.unwrap();
    assert_eq!(first.items.len(), 1);
    assert_eq!(first.items[0].data, "2026-01-01");
    let mut left = first.items[0].clone();
    left.gsi1 = None;
    t.put(left, Condition::None).await.unwrap();
    let (mut rest, mut cursor) = (Vec::new(), first.next);
    while let Some(c) = cursor {
        let mut q = sweep.clone();
        q.cursor = Some(c);
        let page = t.query_index(Index::Gsi1, q).await.unwrap();
        rest.extend(page.items.into_iter().map(|i| i.data));
        cursor = page.next;
    }
    assert_eq!(rest, ["2026-01-02", "2026-01-03"]);
}

pub async fn queries_page_backwards_when_descending(f: &Fixture<dyn Table>) {
    let t = f.it.as_ref();
    for sk in ["A#1", "A#2", "A#3", "A#4", "A#5", "B#1"] {
        let mut it = item("D", sk, sk);
        it.gsi1 = Some(Key::new("DIDX", sk));
        t.put(it, Condition::None).await.unwrap();
    }
    let mut q = Query::prefix("D", "A#", 2);
    q.descending = true;
    assert_eq!(
        sks(&all(t, None, q.clone()).await),
        ["A#5", "A#4", "A#3", "A#2", "A#1"]
    );
    let got = all(
        t,
        Some(Index::Gsi1),
        Query {
            pk: "DIDX".into(),
            ..q
        },
    )
    .await;
    assert_eq!(sks(&got), ["A#5", "A#4", "A#3", "A#2", "A#1"]);
}

/// A key's presence in an index follows the item: re-indexed or un-indexed on overwrite.
pub async fn index_entries_follow_the_item(f: &Fixture<dyn Table>) {
    let t = f.it.as_ref();
    let mut it = item("X", "S", "v1");
    it.gsi1 = Some(Key::new("CHAN#1", "CONN"));
    t.put(it.clone(), Condition::None).await.unwrap();
    it.gsi1 = Some(Key::new("CHAN#2", "CONN"));
    t.put(it.clone(), Condition::None).await.unwrap();
    assert!(all(t, Some(Index::Gsi1), Query::prefix("CHAN#1", "", 5))
        .await
        .is_empty());
    assert_eq!(
        all(t, Some(Index::Gsi1), Query::prefix("CHAN#2", "", 5))
            .await
            .len(),
        1
    );
    it.gsi1 = None;
    t.put(it, Condition::None).await.unwrap();
    assert!(all(t, Some(Index::Gsi1), Query::prefix("CHAN#2", "", 5))
        .await
        .is_empty());
}

pub async fn a_conditional_rewrite_moves_its_index_entries_with_it(f: &Fixture<dyn Table>) {
    let t = f.it.as_ref();
    let index = |i: Index, pk: &'static str| async move {
        all(t, Some(i), Query::prefix(pk, "", 5))
            .await
            .into_iter()
            .map(|i| (i.data, i.version))
            .collect::<Vec<_>>()
    };
    let mut it = item("X", "R", "v1");
    it.gsi1 = Some(Key::new("OWNER#1", "R"));
    it.gsi2 = Some(Key::new("DUE", "2026-01-01"));
    it.expires_at = Some(100);
    t.put(it.clone(), Condition::NotExists).await.unwrap();
    // Versioned: the due entry moves, the owner entry and the expiry stay, the data changes.
    it.version = 2;
    it.data = "v2".into();
    it.gsi2 = Some(Key::new("DUE", "2026-01-02"));
    t.put(it.clone(), Condition::Version(1)).await.unwrap();
    assert_eq!(t.get(&it.key).await.unwrap(), Some(it.clone()));
    assert_eq!(
        index(Index::Gsi1, "OWNER#1").await,
        vec![("v2".to_string(), 2)]
    );
    let due = all(t, Some(Index::Gsi2), Query::prefix("DUE", "", 5)).await;
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].gsi2, Some(Key::new("DUE", "2026-01-02")));
    // Only the index entries and the expiry change (data and version as they were).
    it.version = 3;
    it.gsi1 = Some(Key::new("OWNER#2", "R"));
    it.gsi2 = None;
    it.expires_at = Some(200);
    t.put(it.clone(), Condition::Exists).await.unwrap();
    assert_eq!(t.get(&it.key).await.unwrap(), Some(it.clone()));
    assert!(index(Index::Gsi1, "OWNER#1").await.is_empty());
    assert_eq!(
        index(Index::Gsi1, "OWNER#2").await,
        vec![("v2".to_string(), 3)]
    );
    assert!(index(Index::Gsi2, "DUE").await.is_empty());
    // Nothing but the version: still read back whole.
    it.version = 4;
    t.put(it.clone(), Condition::Version(3)).await.unwrap();
    assert_eq!(t.get(&it.key).await.unwrap(), Some(it));
}
