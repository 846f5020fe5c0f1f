//! QR codes drawn in a terminal: two modules per character cell with the upper and lower half
//! blocks, so a provisioning code fits on screen and a phone can scan it.

use crate::error::{Error, Result};
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;

/// `text` as a QR code in half blocks, with its quiet zone. Light modules are drawn in the
/// terminal's foreground, which suits the usual light-on-dark terminal; `invert` suits a dark
/// foreground on a light background.
pub fn draw(text: &str, invert: bool) -> Result<String> {
    let code = QrCode::new(text.as_bytes())
        .map_err(|e| Error::Unexpected(format!("the code does not fit a QR code: {e}")))?;
    let (dark, light) = if invert {
        (Dense1x2::Dark, Dense1x2::Light)
    } else {
        (Dense1x2::Light, Dense1x2::Dark)
    };
    Ok(code
        .render::<Dense1x2>()
        .dark_color(dark)
        .light_color(light)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_drawn_as_half_blocks_two_modules_a_line() {
        let text = "DP1~0ne00000001~therm-1~a2V5~global.azure-devices-provisioning.net~abc123";
        let drawn = draw(text, false).unwrap();
        let modules = QrCode::new(text.as_bytes()).unwrap().width() + 8;
        let lines: Vec<&str> = drawn.lines().collect();
        assert_eq!(lines.len(), modules.div_ceil(2));
        assert!(lines.iter().all(|l| l.chars().count() == modules));
        assert!(drawn.chars().any(|c| c == '\u{2580}' || c == '\u{2584}'));
        // The quiet zone is light: drawn as full blocks here, as spaces inverted.
        assert!(lines[0].chars().all(|c| c == '\u{2588}'));
        assert!(draw(text, true)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .chars()
            .all(|c| c == ' '));
    }
}
