//! Per-company settings records.

use super::{company_pk, decode, encode, Store};
use crate::availability::AvailabilitySettings;
use crate::ports::{Condition, Item, Key};
use crate::Result;

fn availability_key(company: &str) -> Key {
    Key::new(company_pk(company), "SETTINGS#availability")
}

impl Store {
    /// The company's availability settings, `None` when it never set any.
    pub async fn availability_settings(
        &self,
        company: &str,
    ) -> Result<Option<AvailabilitySettings>> {
        match self.table.get(&availability_key(company)).await? {
            Some(item) => Ok(Some(decode(&item)?)),
            None => Ok(None),
        }
    }

    /// Replaces the company's availability settings (last write wins: a whole document).
    pub async fn put_availability_settings(
        &self,
        company: &str,
        settings: &AvailabilitySettings,
    ) -> Result<()> {
        self.table
            .put(
                Item::new(availability_key(company), encode(settings)?),
                Condition::None,
            )
            .await?;
        Ok(())
    }
}
