//! `enroll`, `enable`, `disable`, `rotate-key` and `delete`: one enrollment at a time.

use super::{json_pairs, pair};
use crate::api::{segment, Body};
use crate::cli::{DeleteArgs, EnrollArgs, EnrollmentArg, Output, RotateKeyArgs};
use crate::error::{Error, Result};
use crate::output::{json, line};
use crate::{records, Context};
use enrollment_input::{Asset, CustomerInput, InitialTwin, NewEnrollment};
use reqwest::Method;
use serde_json::json;
use std::io::BufRead;

/// `dpsctl enroll`: `POST /api/enrollments` with the request the handler takes.
pub async fn enroll(ctx: &mut Context<'_>, args: EnrollArgs) -> Result<()> {
    let attributes = args
        .attributes
        .iter()
        .map(|text| pair(text).map(|(name, value)| (name, value.to_owned())))
        .collect::<Result<_>>()?;
    let request = NewEnrollment {
        registration_id: args.registration_id,
        device_id: args.device_id,
        customer: CustomerInput {
            id: args.customer,
            name: args.customer_name,
        },
        asset: Asset {
            serial_number: args.serial,
            model: args.model,
            attributes,
        },
        initial_twin: InitialTwin {
            tags: json_pairs(&args.tags)?,
            desired_properties: json_pairs(&args.desired)?,
        },
        enabled: args.disabled.then_some(false),
        iot_hub: args.hub,
    };
    let body = serde_json::to_value(&request)
        .map_err(|e| Error::Unexpected(format!("the request cannot be written: {e}")))?;
    let answer = ctx
        .api
        .send(Method::POST, "/enrollments", Body::Json(body), None)
        .await?;
    show(ctx, &answer.body, args.output, "enrolled")
}

fn show(
    ctx: &mut Context<'_>,
    record: &serde_json::Value,
    output: Output,
    done: &str,
) -> Result<()> {
    match output {
        Output::Json => json(ctx.out, record),
        Output::Table | Output::Csv => {
            line(
                ctx.out,
                &format!(
                    "{done} {}",
                    record["registrationId"].as_str().unwrap_or("?")
                ),
            )?;
            records::enrollment(ctx.out, record)
        }
    }
}

/// `dpsctl enable` and `dpsctl disable`: `PATCH /api/enrollments/{id}` with `enabled`.
pub async fn set_enabled(ctx: &mut Context<'_>, args: EnrollmentArg, enabled: bool) -> Result<()> {
    let path = format!("/enrollments/{}", segment(&args.registration_id));
    let answer = ctx
        .api
        .send(
            Method::PATCH,
            &path,
            Body::Json(json!({ "enabled": enabled })),
            None,
        )
        .await?;
    let done = if enabled {
        "enabled (the device may register)"
    } else {
        "disabled (DPS refuses the device until it is enabled)"
    };
    line(
        ctx.out,
        &format!(
            "{} {done}",
            answer.body["registrationId"]
                .as_str()
                .unwrap_or(&args.registration_id)
        ),
    )
}

/// `dpsctl rotate-key`: starts the rotation and says how far it got (the answer carries the
/// step, never a key).
pub async fn rotate_key(ctx: &mut Context<'_>, args: RotateKeyArgs) -> Result<()> {
    let path = format!("/enrollments/{}/rotate-key", segment(&args.registration_id));
    let answer = ctx.api.send(Method::POST, &path, Body::Empty, None).await?;
    if args.output == Output::Json {
        return json(ctx.out, &answer.body);
    }
    let pending = &answer.body["key"]["pending"];
    let step = pending["step"].as_str().unwrap_or("finished");
    let meaning = match step {
        "delivered" => "the device took the new key; the old one is retired once it re-provisions with it",
        "staged" => "the device is offline: it gets the new key when it connects, and keeps its old key until then",
        "finished" => "the device uses the new key and the old one is refused",
        _ => "in progress; `dpsctl show` follows it",
    };
    line(
        ctx.out,
        &format!(
            "rotating the key of {}: {step} ({meaning})",
            args.registration_id
        ),
    )?;
    if let Some(error) = pending["lastError"].as_str() {
        line(
            ctx.out,
            &format!("last error: {error} (the repair pass tries again)"),
        )?;
    }
    Ok(())
}

/// `dpsctl delete`: asks on a terminal, refuses without `--yes` elsewhere.
pub async fn delete(ctx: &mut Context<'_>, args: DeleteArgs) -> Result<()> {
    let id = args.registration_id;
    if !args.yes {
        if !ctx.stdin_terminal {
            return Err(Error::Usage(format!(
                "not deleting {id}: standard input is not a terminal to ask on; add --yes to \
                    delete without asking"
            )));
        }
        eprint_prompt(&format!(
            "Delete {id}: its enrollment, its DPS registration and its hub identity? The device \
                will have to be enrolled again. [y/N] "
        ));
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|source| Error::File {
                what: "reading the answer".into(),
                source,
            })?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return line(ctx.out, &format!("kept {id}"));
        }
    }
    let path = format!("/enrollments/{}", segment(&id));
    ctx.api
        .send(Method::DELETE, &path, Body::Empty, None)
        .await?;
    line(ctx.out, &format!("deleted {id}"))
}

fn eprint_prompt(text: &str) {
    use std::io::Write;
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "{text}");
    let _ = stderr.flush();
}
