//! The app's managed identity: the local token service App Service and Functions run beside an
//! app with an identity, announced to the app by `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`.
//!
//! The protocol (MicrosoftDocs/azure-docs articles/app-service/overview-managed-identity.md,
//! "REST endpoint reference"): `GET {IDENTITY_ENDPOINT}?resource=<uri>&api-version=2019-08-01`
//! with the header `X-IDENTITY-HEADER: {IDENTITY_HEADER}` (against request forgery), answered
//! with `{access_token, expires_on, resource, token_type, client_id}`, `expires_on` being Unix
//! seconds as a string.
//!
//! The tokens are JWTs with the claims Azurite's `--oauth basic` checks
//! (Azure/Azurite src/table/authentication/TableTokenAuthenticator.ts: `iat`, `nbf`, `exp` present
//! and current, `iss` starting with `https://sts.windows.net/`, `aud` `https://storage.azure.com`
//! or the account's table endpoint; the signature is not checked). They are unsigned
//! (`alg: none`): nothing here holds Entra's keys, and nothing that checks signatures should
//! accept a stand-in's token. Tokens and the header value are secrets: never logged.

use crate::net::https::{header, json, query_param, Body};
use base64::Engine;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The variable naming the token endpoint.
pub const ENDPOINT_VARIABLE: &str = "IDENTITY_ENDPOINT";
/// The variable holding the value the `X-IDENTITY-HEADER` header must carry.
pub const HEADER_VARIABLE: &str = "IDENTITY_HEADER";
/// The only api-version the stand-in speaks (the one the docs ask for).
pub const API_VERSION: &str = "2019-08-01";
/// How long a token lasts. Entra's managed-identity tokens last hours; one hour keeps renewal
/// (5 minutes before expiry in the handler) within reach of a long local session.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The tenant the stand-in's identity lives in (any GUID: Azurite checks only the issuer's form).
const TENANT: &str = "72f988bf-0000-4000-8000-00000000e1a7";

/// A running token service.
pub struct IdentityEndpoint {
    /// `IDENTITY_ENDPOINT`.
    pub url: String,
    /// `IDENTITY_HEADER`: random per start.
    secret: String,
    /// The identity's object (principal) id.
    pub principal_id: String,
    /// The identity's client id.
    pub client_id: String,
}

impl std::fmt::Debug for IdentityEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityEndpoint")
            .field("url", &self.url)
            .field("principal_id", &self.principal_id)
            .finish_non_exhaustive()
    }
}

impl IdentityEndpoint {
    /// Listens on a free loopback port and serves tokens until shutdown.
    pub async fn start(
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<(Arc<Self>, JoinHandle<()>)> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let endpoint = Arc::new(Self {
            url: format!("http://{address}/msi/token"),
            secret: uuid::Uuid::new_v4().to_string(),
            principal_id: uuid::Uuid::new_v4().to_string(),
            client_id: uuid::Uuid::new_v4().to_string(),
        });
        let serving = endpoint.clone();
        let task = tokio::spawn(crate::net::https::serve_plain(
            listener,
            move |request| {
                let endpoint = serving.clone();
                async move { endpoint.answer(&request) }
            },
            shutdown,
        ));
        Ok((endpoint, task))
    }

    /// The environment an app with this identity sees.
    pub fn environment(&self) -> [(&'static str, String); 2] {
        [
            (ENDPOINT_VARIABLE, self.url.clone()),
            (HEADER_VARIABLE, self.secret.clone()),
        ]
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<Body> {
        let refuse = |status: StatusCode, message: &str| {
            json(
                status,
                &json!({ "statusCode": status.as_u16(), "message": message }),
            )
        };
        if request.method() != http::Method::GET
            || !request.uri().path().eq_ignore_ascii_case("/msi/token")
        {
            return refuse(StatusCode::NOT_FOUND, "GET /msi/token serves tokens");
        }
        let presented = header(request.headers(), "x-identity-header").unwrap_or_default();
        if !iot_credentials::secrets_equal(presented, &self.secret) {
            tracing::warn!("a token request without the right X-IDENTITY-HEADER was refused");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "the X-IDENTITY-HEADER header is missing or wrong",
            );
        }
        if query_param(request.uri(), "api-version").as_deref() != Some(API_VERSION) {
            return refuse(StatusCode::BAD_REQUEST, "api-version must be 2019-08-01");
        }
        let Some(resource) = query_param(request.uri(), "resource").filter(|r| !r.is_empty())
        else {
            return refuse(StatusCode::BAD_REQUEST, "the resource parameter is missing");
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let expires_on = now + TOKEN_LIFETIME.as_secs();
        let token = self.token(&resource, now, expires_on);
        json(
            StatusCode::OK,
            &json!({
                "access_token": token,
                "expires_on": expires_on.to_string(),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": self.client_id,
            }),
        )
    }

    fn token(&self, resource: &str, now: u64, expires_on: u64) -> String {
        let encode = |value: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
        };
        // Entra's v1 tokens carry the resource without its trailing slash as the audience.
        let audience = resource.trim_end_matches('/');
        let header = json!({ "alg": "none", "typ": "JWT" });
        let claims = json!({
            "aud": audience,
            "iss": format!("https://sts.windows.net/{TENANT}/"),
            "iat": now,
            "nbf": now.saturating_sub(300),
            "exp": expires_on,
            "appid": self.client_id,
            "oid": self.principal_id,
            "sub": self.principal_id,
            "tid": TENANT,
            "idtyp": "app",
            "ver": "1.0",
        });
        format!("{}.{}.", encode(&header), encode(&claims))
    }
}
