//! A company's Graph app credentials: the tenant and client ids in clear, the client secret
//! sealed.

use serde::Deserialize;
use serde_json::{json, Map};

use super::GraphCredentials;
use crate::deps::Deps;
use crate::model::{CredentialRecord, Provider};
use crate::sealing::OpenedCredentials;
use crate::{validate, Error, Result};

/// `PUT /v1/credentials/exchange`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeCredentialsInput {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
}

impl ExchangeCredentialsInput {
    pub fn validate(&self) -> Result<()> {
        validate::identifier("tenant_id", &self.tenant_id)?;
        validate::identifier("client_id", &self.client_id)?;
        if self.client_secret.is_empty() {
            return Err(Error::validation("client_secret", "must not be empty"));
        }
        validate::text("client_secret", &self.client_secret, 1024)
    }
}

/// Seals and stores the credentials; returns the record (whose `identity` may be shown).
pub async fn store(
    deps: &Deps,
    company: &str,
    input: ExchangeCredentialsInput,
) -> Result<CredentialRecord> {
    input.validate()?;
    let context = CredentialRecord::context(company, Provider::Exchange);
    let secret = json!({"client_secret": input.client_secret}).to_string();
    let sealed = deps.sealer()?.seal(&secret, &context)?;
    let mut identity = Map::new();
    identity.insert("tenant_id".into(), json!(input.tenant_id));
    identity.insert("client_id".into(), json!(input.client_id));
    let record = CredentialRecord {
        company_id: company.to_string(),
        provider: Provider::Exchange,
        identity,
        sealed,
        updated_at: deps.store.now(),
        version: 0,
    };
    deps.store.put_credentials(&record).await
}

/// Opens a stored record into usable credentials.
pub fn open(deps: &Deps, record: &CredentialRecord) -> Result<GraphCredentials> {
    let opened = OpenedCredentials::open(deps.sealer()?, record)?;
    Ok(GraphCredentials {
        tenant_id: opened.identity("tenant_id")?,
        client_id: opened.identity("client_id")?,
        client_secret: opened.secret("client_secret")?,
    })
}

/// The company's credentials, or `None` when it has stored none.
pub async fn load(deps: &Deps, company: &str) -> Result<Option<GraphCredentials>> {
    match deps
        .store
        .get_credentials(company, Provider::Exchange)
        .await?
    {
        Some(r) => Ok(Some(open(deps, &r)?)),
        None => Ok(None),
    }
}

/// The message a connection carries while its company has no credentials.
pub const MISSING: &str =
    "the company has no Exchange credentials: PUT /v1/credentials/exchange first";
