//! The middleware's admin API as a CRM script or a backend calls it, for `fleet demo` and the
//! benchmarks that go through the function app the emulator runs.

use crate::endpoints::FunctionsEndpoints;
use iot_credentials::ProvisioningCode;
use serde_json::Value;

/// Why an admin API call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request could not be sent or its answer read.
    #[error("calling {method} {path}: {source}")]
    Transport {
        /// The method.
        method: reqwest::Method,
        /// The path under `/api`.
        path: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The API answered with an error status.
    #[error("{method} {path} answered {status}: {body}")]
    Refused {
        /// The method.
        method: reqwest::Method,
        /// The path under `/api`.
        path: String,
        /// The status.
        status: reqwest::StatusCode,
        /// The answer's body.
        body: String,
    },
    /// A JSON answer that does not parse.
    #[error("the answer is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// A provisioning-code answer without a code.
    #[error("no code in the answer")]
    NoCode,
    /// A provisioning code that does not parse.
    #[error(transparent)]
    Code(#[from] iot_credentials::CodeError),
}

/// The middleware's admin API, as a CRM script would call it.
pub struct AdminApi {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl AdminApi {
    /// The API of the function app the stand-in runs.
    pub fn new(functions: &FunctionsEndpoints) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: functions.base_url.clone(),
            key: functions.function_key.clone(),
        }
    }

    /// Sends `method path` with the function key and an optional JSON body; answers the JSON
    /// answer (null when the body is not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, AdminError> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("x-functions-key", &self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let text = self.answer(request, &method, path).await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `POST /api/enrollments/import` with a CSV export; answers the summary and the rows.
    pub async fn import_csv(&self, csv: String) -> Result<Value, AdminError> {
        let request = self
            .http
            .post(format!("{}/enrollments/import", self.base))
            .header("x-functions-key", &self.key)
            .header("content-type", "text/csv")
            .body(csv);
        let text = self
            .answer(request, &reqwest::Method::POST, "/enrollments/import")
            .await?;
        Ok(serde_json::from_str(&text)?)
    }

    /// `POST /api/enrollments`.
    pub async fn enroll(&self, body: Value) -> Result<Value, AdminError> {
        self.call(reqwest::Method::POST, "/enrollments", Some(body))
            .await
    }

    /// `GET /api/enrollments/{id}/provisioning-code`, parsed.
    pub async fn code(&self, id: &str) -> Result<ProvisioningCode, AdminError> {
        let answer = self
            .call(
                reqwest::Method::GET,
                &format!("/enrollments/{id}/provisioning-code"),
                None,
            )
            .await?;
        let text = answer["code"].as_str().ok_or(AdminError::NoCode)?;
        Ok(ProvisioningCode::parse(text)?)
    }

    /// Sends `request` and answers its body when the status is a success.
    async fn answer(
        &self,
        request: reqwest::RequestBuilder,
        method: &reqwest::Method,
        path: &str,
    ) -> Result<String, AdminError> {
        let transport = |source| AdminError::Transport {
            method: method.clone(),
            path: path.to_owned(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let body = response.text().await.map_err(transport)?;
        if !status.is_success() {
            return Err(AdminError::Refused {
                method: method.clone(),
                path: path.to_owned(),
                status,
                body,
            });
        }
        Ok(body)
    }
}
