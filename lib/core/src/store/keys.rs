use super::{classify_cas_failure, company_pk, decode, encode, Store};
use crate::model::ApiKey;
use crate::ports::{Condition, Index, Item, Key, Query};
use crate::{Error, Result};

fn key_of(hash: &str) -> Key {
    Key::new(format!("KEY#{hash}"), "KEY")
}

fn item_of(key: &ApiKey, version: u64) -> Result<Item> {
    let mut item = Item::new(key_of(&key.key_hash), encode(key)?);
    item.gsi1 = Some(Key::new(
        company_pk(&key.company_id),
        format!("KEY#{}", key.id),
    ));
    item.version = version;
    Ok(item)
}

impl Store {
    pub async fn create_api_key(&self, key: &ApiKey) -> Result<()> {
        self.table
            .put(item_of(key, 1)?, Condition::NotExists)
            .await
            .map_err(|e| match e {
                crate::ports::StoreError::ConditionFailed => Error::Duplicate {
                    entity: "api key",
                    id: key.id.clone(),
                },
                other => other.into(),
            })
    }

    /// The key whose SHA-256 is `hash`, revoked or not.
    pub async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>> {
        self.read_through(
            |cache| cache.key(hash).map(Some),
            async {
                match self.table.get(&key_of(hash)).await? {
                    Some(item) => Ok(Some(decode::<ApiKey>(&item)?)),
                    None => Ok(None),
                }
            },
            |cache, read_at, found| {
                // Never an absent key: one made later must be found.
                if let Some(key) = found {
                    cache.keep_key(read_at, key);
                }
            },
        )
        .await
    }

    pub async fn list_api_keys(&self, company: &str) -> Result<Vec<ApiKey>> {
        self.query_all(
            Some(Index::Gsi1),
            Query::prefix(company_pk(company), "KEY#", 100),
        )
        .await
    }

    /// Marks a key revoked; it authenticates nothing from then on.
    pub async fn revoke_api_key(&self, company: &str, key_id: &str) -> Result<ApiKey> {
        let q = Query::prefix(company_pk(company), format!("KEY#{key_id}"), 2);
        let page = self.table.query_index(Index::Gsi1, q).await?;
        let item = page
            .items
            .into_iter()
            .find(|i| {
                i.gsi1
                    .as_ref()
                    .is_some_and(|g| g.sk == format!("KEY#{key_id}"))
            })
            .ok_or_else(|| Error::not_found("api key", key_id))?;
        let mut key: ApiKey = decode(&item)?;
        if key.revoked_at.is_none() {
            key.revoked_at = Some(self.now());
            let next = item_of(&key, item.version + 1)?;
            let (table, hash) = (self.table.clone(), key.key_hash.clone());
            let put = self
                .write_then_forget(
                    async move { table.put(next, Condition::Version(item.version)).await },
                    move |cache| cache.forget_key(&hash),
                )
                .await?;
            if let Err(e) = put {
                return Err(match e {
                    crate::ports::StoreError::ConditionFailed => {
                        classify_cas_failure(self.table(), &item.key, "api key", key_id).await
                    }
                    other => other.into(),
                });
            }
        }
        Ok(key)
    }
}
