//! Entra tokens for Table Storage from the app's managed identity, cached and renewed before
//! they expire.
//!
//! The App Service / Functions token service (MicrosoftDocs/azure-docs
//! articles/app-service/overview-managed-identity.md, "REST endpoint reference"):
//! `GET {IDENTITY_ENDPOINT}?resource=<resource>&api-version=2019-08-01` with
//! `X-IDENTITY-HEADER: {IDENTITY_HEADER}`, answered with `access_token` and `expires_on` (Unix
//! seconds, a string). azure_storage 0.21 asks for the scope `https://storage.azure.com/.default`
//! (Azure/azure-sdk-for-rust sdk/storage/src/authorization/authorization_policy.rs); this
//! protocol wants the resource, the scope without `/.default`.
//!
//! Written by hand rather than taken from azure_identity 0.21: that crate is not in the
//! workspace, and this is one GET plus a cache; it plugs into azure_data_tables through
//! azure_core's `TokenCredential`, the crate's own seam.

use crate::config::ManagedIdentity;
use azure_core::auth::{AccessToken, TokenCredential};
use azure_core::error::{Error, ErrorKind};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::Mutex;

/// A token is renewed this long before it expires, so no request goes out with one about to.
pub const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);
const API_VERSION: &str = "2019-08-01";

/// Tokens of the app's managed identity, one cached per resource.
pub struct ManagedIdentityCredential {
    identity: ManagedIdentity,
    http: reqwest::Client,
    // Held across a fetch, so concurrent requests wait for one renewal instead of each asking.
    cache: Mutex<HashMap<String, AccessToken>>,
}

impl std::fmt::Debug for ManagedIdentityCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedIdentityCredential")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_on: ExpiresOn,
}

/// `expires_on` is documented as a string of seconds; accept a number too.
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpiresOn {
    Text(String),
    Number(i64),
}

fn credential_error(message: String) -> Error {
    Error::message(ErrorKind::Credential, message)
}

impl ManagedIdentityCredential {
    /// A credential asking `identity`'s token service through `http`.
    pub fn new(identity: ManagedIdentity, http: reqwest::Client) -> Self {
        Self {
            identity,
            http,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn fetch(&self, resource: &str) -> azure_core::Result<AccessToken> {
        let response = self
            .http
            .get(self.identity.endpoint.clone())
            .query(&[("resource", resource), ("api-version", API_VERSION)])
            .header("X-IDENTITY-HEADER", self.identity.header())
            .send()
            .await
            .map_err(|e| {
                credential_error(format!(
                    "the managed identity endpoint cannot be reached: {}",
                    e.without_url()
                ))
            })?;
        let status = response.status();
        if !status.is_success() {
            // The body may say why, but it is the token service's; the status is enough to act on.
            return Err(credential_error(format!(
                "the managed identity endpoint refused a token for {resource}: HTTP {}",
                status.as_u16()
            )));
        }
        let answer: TokenAnswer = response.json().await.map_err(|_| {
            credential_error("the managed identity endpoint answered no token".to_owned())
        })?;
        let seconds = match answer.expires_on {
            ExpiresOn::Text(text) => text.trim().parse::<i64>().ok(),
            ExpiresOn::Number(n) => Some(n),
        }
        .ok_or_else(|| {
            credential_error("the managed identity's token has an unreadable expires_on".into())
        })?;
        let expires_on = OffsetDateTime::from_unix_timestamp(seconds).map_err(|_| {
            credential_error("the managed identity's token has an unreadable expires_on".into())
        })?;
        Ok(AccessToken::new(answer.access_token, expires_on))
    }
}

/// The resource the token service wants for an Entra scope.
fn resource_of(scope: &str) -> &str {
    scope.strip_suffix("/.default").map_or(scope, |base| base)
}

#[async_trait::async_trait]
impl TokenCredential for ManagedIdentityCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let [scope] = scopes else {
            return Err(credential_error(
                "a managed identity token is for exactly one resource".into(),
            ));
        };
        // App Service's token service wants the trailing slash of https://storage.azure.com/.
        let resource = format!("{}/", resource_of(scope).trim_end_matches('/'));
        let mut cache = self.cache.lock().await;
        if let Some(token) = cache.get(&resource) {
            if token.expires_on - OffsetDateTime::now_utc() > RENEW_BEFORE {
                return Ok(token.clone());
            }
        }
        let token = self.fetch(&resource).await?;
        tracing::debug!(
            %resource,
            expires_on = %token.expires_on,
            "a managed identity token was issued"
        );
        cache.insert(resource, token.clone());
        Ok(token)
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        self.cache.lock().await.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use warp::Filter;

    /// A token service issuing tokens that last `lifetime` seconds; counts what it issued.
    async fn token_service(lifetime: i64) -> (ManagedIdentity, Arc<AtomicUsize>) {
        let issued = Arc::new(AtomicUsize::new(0));
        let counter = issued.clone();
        let route = warp::path!("msi" / "token")
            .and(warp::header::optional::<String>("x-identity-header"))
            .and(warp::query::<HashMap<String, String>>())
            .map(
                move |header: Option<String>, query: HashMap<String, String>| {
                    if header.as_deref() != Some("right") {
                        return warp::reply::with_status(
                            warp::reply::json(&serde_json::json!({"message": "no"})),
                            warp::http::StatusCode::UNAUTHORIZED,
                        );
                    }
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    let expires = OffsetDateTime::now_utc().unix_timestamp() + lifetime;
                    warp::reply::with_status(
                        warp::reply::json(&serde_json::json!({
                            "access_token": format!("token-{n}-for-{}", query["resource"]),
                            "expires_on": expires.to_string(),
                            "token_type": "Bearer",
                        })),
                        warp::http::StatusCode::OK,
                    )
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        let endpoint = reqwest::Url::parse(&format!("http://{address}/msi/token")).unwrap();
        (ManagedIdentity::new(endpoint, "right".into()), issued)
    }

    const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

    #[tokio::test]
    async fn a_token_is_asked_for_the_storage_resource_once_and_then_reused() {
        let (identity, issued) = token_service(3600).await;
        let credential = ManagedIdentityCredential::new(identity, reqwest::Client::new());
        let first = credential.get_token(&[STORAGE_SCOPE]).await.unwrap();
        assert_eq!(
            first.token.secret(),
            "token-1-for-https://storage.azure.com/"
        );
        let second = credential.get_token(&[STORAGE_SCOPE]).await.unwrap();
        assert_eq!(second.token.secret(), first.token.secret());
        assert_eq!(issued.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_token_within_five_minutes_of_expiry_is_renewed() {
        let (identity, issued) = token_service(240).await;
        let credential = ManagedIdentityCredential::new(identity, reqwest::Client::new());
        let first = credential.get_token(&[STORAGE_SCOPE]).await.unwrap();
        let second = credential.get_token(&[STORAGE_SCOPE]).await.unwrap();
        assert_ne!(second.token.secret(), first.token.secret());
        assert_eq!(issued.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_header_is_a_credential_error_that_shows_no_secret() {
        let (identity, _) = token_service(3600).await;
        let wrong = ManagedIdentity::new(identity.endpoint.clone(), "wrong-secret".into());
        let credential = ManagedIdentityCredential::new(wrong, reqwest::Client::new());
        let error = credential.get_token(&[STORAGE_SCOPE]).await.unwrap_err();
        assert_eq!(*error.kind(), ErrorKind::Credential);
        let text = format!("{error} {error:?} {credential:?}");
        assert!(text.contains("HTTP 401"), "{text}");
        assert!(!text.contains("wrong-secret"), "{text}");
    }
}
