//! The admin API as dpsctl calls it: JSON requests with the function key, errors turned into
//! [`Error`]s that name the status and the API's own code and message, and paged lists
//! followed to the end.

use crate::config::Target;
use crate::error::{Error, Result};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// Longer than the Functions host's own 230 s limit on an HTTP answer, so its verdict is seen.
const TIMEOUT: Duration = Duration::from_secs(240);

/// A connection to the admin API.
pub struct Api {
    http: reqwest::Client,
    target: Target,
}

/// A successful answer: the status, the ETag if any, and the body (JSON, or text as a string).
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The `ETag` header.
    pub etag: Option<String>,
    /// The body as JSON (`Null` when empty).
    pub body: Value,
}

/// A request body.
pub enum Body {
    /// None.
    Empty,
    /// JSON.
    Json(Value),
    /// Raw bytes with a content type (an import's CSV or JSON batch).
    Raw(&'static str, Vec<u8>),
}

impl Api {
    /// A client of `target`.
    pub fn new(target: Target) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("dpsctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Unexpected(format!("the HTTP client cannot start: {e}")))?;
        Ok(Self { http, target })
    }

    /// Sends one request to `path` (below the base URL, starting with `/`).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
        if_match: Option<&str>,
    ) -> Result<Answer> {
        let url = format!("{}{path}", self.target.base_url);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .header("x-functions-key", self.target.key.expose());
        if let Some(etag) = if_match {
            request = request.header("if-match", etag);
        }
        request = match body {
            Body::Empty => request,
            Body::Json(value) => request.json(&value),
            Body::Raw(content_type, bytes) => {
                request.header("content-type", content_type).body(bytes)
            }
        };
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.map_err(|e| self.unreachable(&e))?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(Answer { status, etag, body });
        }
        Err(refusal(&method, path, status, &body))
    }

    /// `GET path` answering JSON.
    pub async fn get(&self, path: &str) -> Result<Value> {
        Ok(self.send(Method::GET, path, Body::Empty, None).await?.body)
    }

    /// Every item of a paged list (`{items, continuationToken}`), following the tokens.
    /// `query` holds the filters (already encoded), without paging parameters.
    pub async fn list_all(
        &self,
        path: &str,
        query: &[(&str, String)],
        page_size: u16,
    ) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut pairs: Vec<(&str, String)> = query.to_vec();
            pairs.push(("pageSize", page_size.to_string()));
            if let Some(token) = &token {
                pairs.push(("continuationToken", token.clone()));
            }
            let page = self
                .get(&format!("{path}?{}", encode_query(&pairs)))
                .await?;
            let Some(page_items) = page["items"].as_array() else {
                return Err(Error::Unexpected(format!(
                    "GET {path} answered a page without items"
                )));
            };
            items.extend(page_items.iter().cloned());
            match page["continuationToken"].as_str() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => return Ok(items),
            }
        }
    }

    /// The URL that could not be reached, with the innermost cause.
    fn unreachable(&self, error: &reqwest::Error) -> Error {
        let mut cause: &dyn std::error::Error = error;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        let cause = if error.is_timeout() {
            format!("no answer within {} s", TIMEOUT.as_secs())
        } else {
            cause.to_string()
        };
        Error::Unreachable {
            url: self.target.base_url.clone(),
            cause,
        }
    }
}

/// `a=b&c=d`, each part percent-encoded.
pub fn encode_query(pairs: &[(&str, String)]) -> String {
    let Ok(mut url) = reqwest::Url::parse("http://x/") else {
        return String::new();
    };
    url.query_pairs_mut()
        .extend_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())));
    url.query().unwrap_or_default().to_owned()
}

/// A path segment, percent-encoded (ids may hold `:`, `?`, `$` and the like).
pub fn segment(text: &str) -> String {
    let mut url = match reqwest::Url::parse("http://x/") {
        Ok(url) => url,
        Err(_) => return text.to_owned(),
    };
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.push(text);
    }
    url.path().trim_start_matches('/').to_owned()
}

/// The API's refusal in plain words: the status, its error code and message; for the statuses
/// the Functions host answers itself (without a body), what they mean.
fn refusal(method: &Method, path: &str, status: StatusCode, body: &Value) -> Error {
    let code = body["error"]["code"].as_str().map(str::to_owned);
    let message = match body["error"]["message"].as_str() {
        Some(message) => message.to_owned(),
        None => match status {
            StatusCode::UNAUTHORIZED => {
                "the function key was refused; check --key, DPSCTL_KEY or the endpoints file".into()
            }
            StatusCode::NOT_FOUND => "no such route; is the API URL the one ending in /api?".into(),
            _ => match body {
                Value::String(text) => text.chars().take(300).collect(),
                Value::Null => "the answer had no body".into(),
                other => other.to_string().chars().take(300).collect(),
            },
        },
    };
    Error::Api {
        method: method.to_string(),
        path: path.split('?').next().unwrap_or(path).to_owned(),
        status,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_filters_are_encoded_for_the_url() {
        assert_eq!(segment("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(segment("dev-1:x"), "dev-1:x");
        assert_eq!(
            encode_query(&[("customer", "a&b c".into()), ("pageSize", "5".into())]),
            "customer=a%26b+c&pageSize=5"
        );
    }

    #[test]
    fn a_refusal_names_the_status_code_and_message() {
        let body = serde_json::json!({ "error": { "code": "notFound", "message": "dev-9 is not enrolled" } });
        let error = refusal(
            &Method::GET,
            "/enrollments/dev-9?x=1",
            StatusCode::NOT_FOUND,
            &body,
        );
        assert_eq!(
            error.to_string(),
            "GET /enrollments/dev-9 was refused: 404 Not Found (notFound): dev-9 is not enrolled"
        );
        let error = refusal(
            &Method::GET,
            "/devices",
            StatusCode::UNAUTHORIZED,
            &Value::Null,
        );
        assert!(
            error
                .to_string()
                .contains("401 Unauthorized: the function key was refused"),
            "{error}"
        );
    }
}
