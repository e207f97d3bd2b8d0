//! Availability overrides: busy time from connected calendars.
//!
//! Keyed by event (a moved or deleted event is found from its id alone) and indexed by start
//! per staff member (gsi1), so a time-range read covers only its range: overrides last at
//! most [`MAX_INDEXED_SPAN_DAYS`] under `S#<start>`, longer ones (rare: holidays, leave)
//! under `L#<start>`, read apart. Each expires [`RETENTION_AFTER_END_DAYS`] after it ends.

use chrono::{DateTime, Duration, Utc};

use super::{company_pk, encode, Store};
use crate::model::availability::OverrideRef;
use crate::model::{AvailabilityOverride, Provider};
use crate::ports::table::BATCH_WRITE_LIMIT;
use crate::ports::{Index, Item, Key, Query};
use crate::Result;

/// Overrides longer than this are indexed apart (`L#`), so a range read of ordinary ones
/// starts at most this long before the range.
pub const MAX_INDEXED_SPAN_DAYS: i64 = 31;
/// An override is kept this long after it ends, then expires (TTL).
pub const RETENTION_AFTER_END_DAYS: i64 = 1;

fn staff_index(company: &str, staff: &str) -> String {
    format!("CO#{company}#STAFFOVR#{staff}")
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn item_of(o: &AvailabilityOverride) -> Result<Item> {
    let mut item = Item::new(
        key_of(
            &o.company_id,
            &o.staff_id,
            &o.connection_id,
            &o.external_event_id,
        ),
        encode(o)?,
    );
    let class = if o.end - o.start > Duration::days(MAX_INDEXED_SPAN_DAYS) {
        "L"
    } else {
        "S"
    };
    item.gsi1 = Some(Key::new(
        staff_index(&o.company_id, &o.staff_id),
        format!(
            "{class}#{}#{}#{}",
            stamp(o.start),
            o.connection_id,
            o.external_event_id
        ),
    ));
    item.expires_at = Some((o.end + Duration::days(RETENTION_AFTER_END_DAYS)).timestamp());
    Ok(item)
}

/// Keyed by event rather than start time so a moved or deleted event is found from its id
/// alone, without reading the old override first.
fn key_of(company: &str, staff: &str, connection: &str, event: &str) -> Key {
    Key::new(
        company_pk(company),
        format!("OVR#{staff}#{connection}#{event}"),
    )
}

impl Store {
    /// Upserts and removes overrides in batches of 25 writes: a page of provider events costs
    /// a constant number of round trips, not one per event.
    pub async fn apply_overrides(
        &self,
        upserts: &[AvailabilityOverride],
        removals: &[OverrideRef],
    ) -> Result<()> {
        let mut puts = Vec::with_capacity(upserts.len());
        for o in upserts {
            puts.push(item_of(o)?);
        }
        let mut deletes: Vec<Key> = removals
            .iter()
            .map(|r| {
                key_of(
                    &r.company_id,
                    &r.staff_id,
                    &r.connection_id,
                    &r.external_event_id,
                )
            })
            .collect();
        // A key both upserted and removed in one call: the upsert wins (it is newer state).
        deletes.retain(|k| !puts.iter().any(|p| &p.key == k));
        deletes.sort();
        deletes.dedup();
        let mut puts_by_key = std::collections::BTreeMap::new();
        for p in puts {
            puts_by_key.insert(p.key.clone(), p);
        }
        let mut puts: Vec<Item> = puts_by_key.into_values().collect();
        while !puts.is_empty() || !deletes.is_empty() {
            let take_puts = puts.len().min(BATCH_WRITE_LIMIT);
            let batch_puts: Vec<Item> = puts.drain(..take_puts).collect();
            let take_dels = deletes.len().min(BATCH_WRITE_LIMIT - batch_puts.len());
            let batch_dels: Vec<Key> = deletes.drain(..take_dels).collect();
            self.table.batch_write(batch_puts, batch_dels).await?;
        }
        Ok(())
    }

    /// Overrides of a staff member that overlap `[from, to)`, ordered by start. Reads only
    /// the index range that can overlap: ordinary overrides starting in
    /// `[from - MAX_INDEXED_SPAN_DAYS, to)`, and long ones starting before `to`.
    pub async fn overrides_for_staff(
        &self,
        company: &str,
        staff: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<AvailabilityOverride>> {
        let pk = staff_index(company, staff);
        let ordinary = Query::between(
            pk.clone(),
            "S#",
            format!("S#{}", stamp(from - Duration::days(MAX_INDEXED_SPAN_DAYS))),
            // Keys are stamped to the second: a bound a second later keeps an override that
            // starts within `to`'s second (the exact test is below).
            format!("S#{}", stamp(to + Duration::seconds(1))),
            1000,
        );
        let mut long = Query::prefix(pk, "L#", 1000);
        long.upper = Some(format!("L#{}", stamp(to + Duration::seconds(1))));
        let mut out: Vec<AvailabilityOverride> =
            self.query_all(Some(Index::Gsi1), ordinary).await?;
        out.extend(
            self.query_all::<AvailabilityOverride>(Some(Index::Gsi1), long)
                .await?,
        );
        out.retain(|o| o.start < to && o.end > from);
        if !out.is_empty() {
            // Only the staff member's current connections count: an override a deleted
            // connection's last round wrote after its state was purged blocks nothing.
            let keys: Vec<Key> = [Provider::Exchange, Provider::Google]
                .into_iter()
                .map(|p| super::connections::staff_key(company, staff, p))
                .collect();
            let mut current = std::collections::HashSet::new();
            for item in self.table.batch_get(&keys).await? {
                let c: crate::model::Connection = super::decode(&item)?;
                current.insert(c.id);
            }
            out.retain(|o| current.contains(&o.connection_id));
        }
        out.sort_by(|a, b| (a.start, &a.external_event_id).cmp(&(b.start, &b.external_event_id)));
        Ok(out)
    }

    /// Every override a connection produced, for re-baselining after a full sync.
    pub async fn overrides_for_connection(
        &self,
        company: &str,
        staff: &str,
        connection: &str,
    ) -> Result<Vec<AvailabilityOverride>> {
        self.overrides_with_prefix(company, &format!("OVR#{staff}#{connection}#"))
            .await
    }

    /// Removes a connection's overrides not written by the full listing `listing` (after it
    /// completes: every busy event it showed was written by it), reading and removing a page
    /// of them at a time, so memory stays bounded whatever the calendar's size. A label, not
    /// a time: clocks of different processes never decide what is removed. With
    /// `listed_before`, the end of the listing's window, an override starting at or after it
    /// stays: the listing could not show its event (Google's incremental sync reports events
    /// at any distance, a full one only those in its window). Answers how many were removed.
    pub async fn remove_overrides_not_of_listing(
        &self,
        company: &str,
        staff: &str,
        connection: &str,
        listing: &str,
        listed_before: Option<DateTime<Utc>>,
    ) -> Result<usize> {
        let mut query = Query::prefix(
            company_pk(company),
            format!("OVR#{staff}#{connection}#"),
            1000,
        );
        let mut removed = 0;
        loop {
            let page = self.table.query(query.clone()).await?;
            let mut stale = Vec::new();
            for item in &page.items {
                let o: AvailabilityOverride = super::decode(item)?;
                let listable = listed_before.is_none_or(|end| o.start < end);
                if o.listing.as_deref() != Some(listing) && listable {
                    stale.push(o.reference());
                }
            }
            if !stale.is_empty() {
                self.apply_overrides(&[], &stale).await?;
                removed += stale.len();
            }
            match page.next {
                Some(n) => query.cursor = Some(n),
                None => return Ok(removed),
            }
        }
    }

    async fn overrides_with_prefix(
        &self,
        company: &str,
        prefix: &str,
    ) -> Result<Vec<AvailabilityOverride>> {
        self.query_all(None, Query::prefix(company_pk(company), prefix, 1000))
            .await
    }
}
