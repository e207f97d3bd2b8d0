use chrono::{DateTime, Utc};

use super::{company_pk, encode, Store};
use crate::model::availability::OverrideRef;
use crate::model::{AvailabilityOverride, Provider};
use crate::ports::table::BATCH_WRITE_LIMIT;
use crate::ports::{Item, Key, Query};
use crate::Result;

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
            puts.push(Item::new(
                key_of(
                    &o.company_id,
                    &o.staff_id,
                    &o.connection_id,
                    &o.external_event_id,
                ),
                encode(o)?,
            ));
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

    /// Overrides of a staff member that overlap `[from, to)`, ordered by start.
    pub async fn overrides_for_staff(
        &self,
        company: &str,
        staff: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<AvailabilityOverride>> {
        let mut out: Vec<AvailabilityOverride> = self
            .overrides_with_prefix(company, &format!("OVR#{staff}#"))
            .await?
            .into_iter()
            .filter(|o| o.start < to && o.end > from)
            .collect();
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

    async fn overrides_with_prefix(
        &self,
        company: &str,
        prefix: &str,
    ) -> Result<Vec<AvailabilityOverride>> {
        self.query_all(None, Query::prefix(company_pk(company), prefix, 1000))
            .await
    }
}
