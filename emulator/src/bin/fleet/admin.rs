//! The middleware's admin API, as a CRM script or a backend calls it.

use anyhow::{bail, Context};
use emulator::endpoints::FunctionsEndpoints;
use iot_credentials::ProvisioningCode;
use serde_json::Value;

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

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("x-functions-key", &self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {method} {path}"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `POST /api/enrollments/import` with a CSV export; answers the summary and the rows.
    pub async fn import_csv(&self, csv: String) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!("{}/enrollments/import", self.base))
            .header("x-functions-key", &self.key)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await
            .context("calling POST /enrollments/import")?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("POST /enrollments/import answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    pub async fn enroll(&self, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, "/enrollments", Some(body))
            .await
    }

    pub async fn code(&self, id: &str) -> anyhow::Result<ProvisioningCode> {
        let answer = self
            .call(
                reqwest::Method::GET,
                &format!("/enrollments/{id}/provisioning-code"),
                None,
            )
            .await?;
        let text = answer["code"].as_str().context("no code in the answer")?;
        Ok(ProvisioningCode::parse(text)?)
    }
}
