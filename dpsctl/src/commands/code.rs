//! `code`: the provisioning code an end user types or scans, drawn as a QR code.

use crate::api::segment;
use crate::cli::CodeArgs;
use crate::error::{Error, Result};
use crate::output::line;
use crate::{qr, Context};

/// `dpsctl code`: `GET /api/enrollments/{id}/provisioning-code`.
pub async fn code(ctx: &mut Context<'_>, args: CodeArgs) -> Result<()> {
    let path = format!(
        "/enrollments/{}/provisioning-code",
        segment(&args.registration_id)
    );
    let answer = ctx.api.get(&path).await?;
    let code = answer["code"]
        .as_str()
        .ok_or_else(|| Error::Unexpected(format!("GET {path} answered no code")))?;
    line(ctx.out, code)?;
    if !args.no_qr {
        line(ctx.out, &qr::draw(code, args.invert)?)?;
    }
    if answer["enabled"] == false {
        line(
            ctx.out,
            "note: the enrollment is disabled; DPS refuses the device until `dpsctl enable`",
        )?;
    }
    if let Some(file) = &args.svg {
        let svg = answer["qrSvg"]
            .as_str()
            .ok_or_else(|| Error::Unexpected(format!("GET {path} answered no qrSvg")))?;
        std::fs::write(file, svg).map_err(|source| Error::File {
            what: format!("writing {}", file.display()),
            source,
        })?;
        line(ctx.out, &format!("QR code written to {}", file.display()))?;
    }
    Ok(())
}
