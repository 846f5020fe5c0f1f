//! `show`, `desired` and `command`: a device's record and history, and driving it through its
//! hub.

use super::json_pairs;
use crate::api::{segment, Body};
use crate::cli::{CommandArgs, DesiredArgs, Output, ShowArgs};
use crate::error::{Error, Result};
use crate::output::{json, line};
use crate::{records, Context};
use reqwest::Method;
use serde_json::{json, Map, Value};

/// Largest history page the API answers.
const HISTORY_PAGE: u16 = 1000;

/// `dpsctl show`: the record, then the history oldest first.
pub async fn show(ctx: &mut Context<'_>, args: ShowArgs) -> Result<()> {
    let id = segment(&args.device);
    let refresh = if args.refresh { "?refresh=true" } else { "" };
    let device = ctx.api.get(&format!("/devices/{id}{refresh}")).await?;
    let history = ctx
        .api
        .list_all(&format!("/devices/{id}/history"), &[], HISTORY_PAGE)
        .await?;
    match args.output {
        Output::Json => json(ctx.out, &json!({ "device": device, "history": history })),
        Output::Table | Output::Csv => {
            records::device(ctx.out, &device)?;
            line(ctx.out, "")?;
            line(ctx.out, "History (oldest first):")?;
            records::timeline(ctx.out, &history)
        }
    }
}

/// `dpsctl desired`: `PATCH /api/devices/{id}/desired`.
pub async fn desired(ctx: &mut Context<'_>, args: DesiredArgs) -> Result<()> {
    let patch = json_pairs(&args.properties)?;
    let path = format!("/devices/{}/desired", segment(&args.device));
    let answer = ctx
        .api
        .send(
            Method::PATCH,
            &path,
            Body::Json(Value::Object(patch)),
            args.if_match.as_deref(),
        )
        .await?;
    match args.output {
        Output::Json => json(ctx.out, &answer.body),
        Output::Table | Output::Csv => {
            line(
                ctx.out,
                &format!("desired properties of {} are now:", args.device),
            )?;
            json(ctx.out, &answer.body["desired"])
        }
    }
}

/// `dpsctl command`: `POST /api/devices/{id}/commands/{name}`.
pub async fn command(ctx: &mut Context<'_>, args: CommandArgs) -> Result<()> {
    let mut body = Map::new();
    if let Some(payload) = &args.payload {
        let payload: Value = serde_json::from_str(payload)
            .map_err(|e| Error::Usage(format!("--payload is not JSON: {e}")))?;
        body.insert("payload".into(), payload);
    }
    if let Some(seconds) = args.timeout {
        body.insert("timeoutSeconds".into(), seconds.into());
    }
    if let Some(seconds) = args.connect_timeout {
        body.insert("connectTimeoutSeconds".into(), seconds.into());
    }
    let path = format!(
        "/devices/{}/commands/{}",
        segment(&args.device),
        segment(&args.name)
    );
    let answer = ctx
        .api
        .send(Method::POST, &path, Body::Json(Value::Object(body)), None)
        .await?;
    match args.output {
        Output::Json => json(ctx.out, &answer.body),
        Output::Table | Output::Csv => {
            line(
                ctx.out,
                &format!(
                    "{} answered {} with status {}:",
                    args.device, args.name, answer.body["status"]
                ),
            )?;
            json(ctx.out, &answer.body["payload"])
        }
    }
}
