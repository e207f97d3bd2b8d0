//! A company's Google service account: `client_email` and `token_uri` in clear, the private
//! key sealed. The key must parse as an RSA PKCS#8 key before it is stored.
//!
//! `token_uri` is kept as given but never followed: tokens always come from
//! `VOYAGE_GOOGLE_TOKEN_URL`, so no tenant can aim the system at another host.

use serde::Deserialize;
use serde_json::{json, Map};

use super::api::ServiceAccount;
use super::jwt;
use crate::deps::Deps;
use crate::model::{CredentialRecord, Provider};
use crate::sealing::OpenedCredentials;
use crate::{validate, Error, Result};

/// `PUT /v1/credentials/google`: the fields of a Google service-account key file. The
/// file's other fields are accepted (so the file can be sent as downloaded) and ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleCredentialsInput {
    pub client_email: String,
    pub private_key: String,
    pub token_uri: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub private_key_id: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub auth_uri: Option<String>,
    #[serde(default)]
    pub auth_provider_x509_cert_url: Option<String>,
    #[serde(default)]
    pub client_x509_cert_url: Option<String>,
    #[serde(default)]
    pub universe_domain: Option<String>,
}

impl GoogleCredentialsInput {
    pub fn validate(&self) -> Result<()> {
        validate::email("client_email", &self.client_email)?;
        if let Some(kind) = &self.kind {
            if kind != "service_account" {
                return Err(Error::validation("type", "must be `service_account`"));
            }
        }
        jwt::key_pair(&self.private_key).map_err(|m| Error::validation("private_key", m))?;
        let uri = &self.token_uri;
        if !(uri.starts_with("https://") || uri.starts_with("http://")) || uri.len() > 2048 {
            return Err(Error::validation("token_uri", "must be an absolute URL"));
        }
        Ok(())
    }
}

pub async fn store(
    deps: &Deps,
    company: &str,
    input: GoogleCredentialsInput,
) -> Result<CredentialRecord> {
    input.validate()?;
    let context = CredentialRecord::context(company, Provider::Google);
    let secret = json!({"private_key": input.private_key}).to_string();
    let sealed = deps.sealer()?.seal(&secret, &context)?;
    let mut identity = Map::new();
    identity.insert("client_email".into(), json!(input.client_email));
    identity.insert("token_uri".into(), json!(input.token_uri));
    let record = CredentialRecord {
        company_id: company.to_string(),
        provider: Provider::Google,
        identity,
        sealed,
        updated_at: deps.store.now(),
        version: 0,
    };
    deps.store.put_credentials(&record).await
}

pub async fn load(deps: &Deps, company: &str) -> Result<Option<ServiceAccount>> {
    let Some(record) = deps
        .store
        .get_credentials(company, Provider::Google)
        .await?
    else {
        return Ok(None);
    };
    open(deps, &record).map(Some)
}

/// The service account of a stored credentials record (read already, with other records).
pub fn open(deps: &Deps, record: &CredentialRecord) -> Result<ServiceAccount> {
    let opened = OpenedCredentials::open(deps.sealer()?, record)?;
    Ok(ServiceAccount {
        client_email: opened.identity("client_email")?,
        private_key: opened.secret("private_key")?,
    })
}

pub const MISSING: &str = "the company has no Google credentials: PUT /v1/credentials/google first";
