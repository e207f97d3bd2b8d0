use super::{company_pk, decode, encode, Store};
use crate::model::{CredentialRecord, Provider};
use crate::ports::{Condition, Item, Key};
use crate::Result;

pub(crate) fn credentials_key(company: &str, provider: Provider) -> Key {
    Key::new(company_pk(company), format!("CRED#{}", provider.as_str()))
}

impl Store {
    /// Stores (or replaces) a company's credentials for a provider.
    pub async fn put_credentials(&self, c: &CredentialRecord) -> Result<CredentialRecord> {
        let mut c = c.clone();
        let existing = self.get_credentials(&c.company_id, c.provider).await?;
        c.version = existing.map_or(0, |e| e.version) + 1;
        let mut item = Item::new(credentials_key(&c.company_id, c.provider), encode(&c)?);
        item.version = c.version;
        self.table.put(item, Condition::None).await?;
        Ok(c)
    }

    pub async fn get_credentials(
        &self,
        company: &str,
        provider: Provider,
    ) -> Result<Option<CredentialRecord>> {
        match self.table.get(&credentials_key(company, provider)).await? {
            Some(item) => Ok(Some(decode(&item)?)),
            None => Ok(None),
        }
    }
}
