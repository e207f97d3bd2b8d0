//! Settings a deployed function reads from AWS once, at start, rather than from its
//! environment: the public base URL (an SSM parameter the stack writes after the HTTP API
//! exists, so the functions need not depend on the API) and the credentials key ring (a
//! Secrets Manager secret the stack generates). A value given in the environment wins, so local
//! runs and tests need neither service. Both are read with one signed call each
//! ([`crate::aws_json`]), not through their SDK crates.

use serde_json::json;
use voyage_core::config::{base_url, Config, ConfigError};

use crate::aws_json;
use voyage_core::sealing::KeyRing;

const PARAMETER_VAR: &str = "VOYAGE_PUBLIC_BASE_URL_PARAMETER";
const SECRET_VAR: &str = "VOYAGE_CREDENTIALS_KEY_SECRET_ARN";

/// Fills `config`'s public base URL and credentials key from SSM and Secrets Manager when the
/// environment names where they are and does not give them itself. Both reads run at once; a
/// failure stops the start with the variable that named the missing value.
pub async fn resolve(
    sdk: &aws_config::SdkConfig,
    mut config: Config,
) -> Result<Config, ConfigError> {
    let parameter = config
        .public_base_url
        .is_none()
        .then(|| config.public_base_url_parameter.clone())
        .flatten();
    let secret = config
        .credentials_key
        .is_none()
        .then(|| config.credentials_key_secret_arn.clone())
        .flatten();
    let (url, ring) = tokio::join!(
        async {
            match &parameter {
                Some(name) => read_parameter(sdk, name).await.map(Some),
                None => Ok(None),
            }
        },
        async {
            match &secret {
                Some(arn) => read_secret(sdk, arn).await.map(Some),
                None => Ok(None),
            }
        },
    );
    if let Some(value) = url? {
        apply_public_base_url(&mut config, &value)?;
    }
    if let Some(value) = ring? {
        apply_key_ring(&mut config, &value)?;
    }
    Ok(config)
}

async fn read_parameter(sdk: &aws_config::SdkConfig, name: &str) -> Result<String, ConfigError> {
    let out = aws_json::call(sdk, aws_json::SSM, "GetParameter", &json!({ "Name": name }))
        .await
        .map_err(|e| ConfigError {
            var: PARAMETER_VAR,
            message: format!("reading SSM parameter {name}: {e}"),
        })?;
    out.pointer("/Parameter/Value")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| ConfigError {
            var: PARAMETER_VAR,
            message: format!("SSM parameter {name} has no value"),
        })
}

async fn read_secret(sdk: &aws_config::SdkConfig, arn: &str) -> Result<String, ConfigError> {
    let out = aws_json::call(
        sdk,
        aws_json::SECRETS_MANAGER,
        "GetSecretValue",
        &json!({ "SecretId": arn }),
    )
    .await
    .map_err(|e| ConfigError {
        var: SECRET_VAR,
        message: format!("reading secret {arn}: {e}"),
    })?;
    out.get("SecretString")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| ConfigError {
            var: SECRET_VAR,
            message: format!("secret {arn} has no string value"),
        })
}

/// Sets the public base URL read from the parameter, checked like `VOYAGE_PUBLIC_BASE_URL`.
fn apply_public_base_url(config: &mut Config, value: &str) -> Result<(), ConfigError> {
    config.public_base_url = Some(base_url(PARAMETER_VAR, value.trim())?);
    Ok(())
}

/// Sets the credentials key ring read from the secret (see [`KeyRing::parse`]); previous keys
/// from `VOYAGE_CREDENTIALS_PREVIOUS_KEYS` are kept after the secret's own. The error never
/// contains the secret.
fn apply_key_ring(config: &mut Config, secret: &str) -> Result<(), ConfigError> {
    let ring = KeyRing::parse(secret).map_err(|message| ConfigError {
        var: SECRET_VAR,
        message: format!("the secret's value: {message}"),
    })?;
    config.credentials_key = Some(ring.current);
    let from_env = std::mem::take(&mut config.previous_credentials_keys);
    config.previous_credentials_keys = ring.previous;
    config.previous_credentials_keys.extend(from_env);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::from_lookup(|k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
    }

    #[test]
    fn the_parameter_gives_a_checked_base_url() {
        let mut c = config(&[]);
        apply_public_base_url(&mut c, "https://abc.execute-api.eu-west-1.amazonaws.com/\n")
            .unwrap();
        assert_eq!(
            c.public_base_url.as_deref(),
            Some("https://abc.execute-api.eu-west-1.amazonaws.com")
        );
        let e = apply_public_base_url(&mut c, "not a url").unwrap_err();
        assert_eq!(e.var, PARAMETER_VAR);
    }

    #[test]
    fn the_secret_gives_the_key_ring() {
        let mut c = config(&[("VOYAGE_CREDENTIALS_PREVIOUS_KEYS", B64)]);
        apply_key_ring(
            &mut c,
            &format!("{{\"current\":\"{HEX}\",\"previous\":[\"{HEX}\"]}}"),
        )
        .unwrap();
        assert_eq!(c.credentials_key.unwrap()[1], 0x11);
        assert_eq!(c.previous_credentials_keys.len(), 2);
        // The stack's generated secret: {"current": "<64 hex digits>"}.
        let mut c = config(&[]);
        apply_key_ring(&mut c, &format!("{{\"current\":\"{HEX}\"}}")).unwrap();
        assert!(c.previous_credentials_keys.is_empty());
        let deps_key = c.credentials_key.unwrap();
        let sealer = voyage_core::sealing::Sealer::new(&deps_key).unwrap();
        let sealed = sealer.seal("s", "acme/google").unwrap();
        assert_eq!(sealer.open(&sealed, "acme/google").unwrap(), "s");
    }

    #[test]
    fn a_bad_secret_names_its_variable_not_its_value() {
        let mut c = config(&[]);
        let e = apply_key_ring(&mut c, "{\"current\": \"c2hvcnQ=\"}").unwrap_err();
        assert_eq!(e.var, SECRET_VAR);
        assert!(!e.to_string().contains("c2hvcnQ="), "{e}");
        assert!(c.credentials_key.is_none());
    }
}
