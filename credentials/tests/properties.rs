//! Property tests of every parser in this crate: SAS tokens, connection strings and provisioning
//! codes never panic on any text, round-trip what this crate writes, and refuse what they must
//! (a tampered signature, a mistyped code). A fixed seed keeps every run the same.
// In a test crate a panic, with the failing call's message, is the failure report.
#![allow(clippy::unwrap_used)]

use iot_credentials::{
    DeviceConnectionString, ProvisioningCode, SasToken, ServiceConnectionString, SharedAccessKey,
    SignedSas, StorageConnectionString,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn config() -> Config {
    Config {
        cases: 256,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x5eed_0011),
        ..Config::default()
    }
}

/// Keys of the sizes Azure accepts (16 to 64 bytes).
fn key() -> impl Strategy<Value = SharedAccessKey> {
    prop::collection::vec(any::<u8>(), 16..65).prop_map(|b| SharedAccessKey::from_bytes(b).unwrap())
}

/// Text a connection string value may hold: no `;`, no surrounding blanks, not empty.
fn value() -> impl Strategy<Value = String> {
    "[A-Za-z0-9.:/_=-][A-Za-z0-9 .:/_=-]{0,30}[A-Za-z0-9.:/_=-]"
}

/// Fields of a provisioning code: no `~` and no whitespace.
fn code_field() -> impl Strategy<Value = String> {
    "[^~\\s]{1,40}"
}

/// A token's text with any fields, known or not, in any order.
fn token_like() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        Just("sr".to_owned()),
        Just("sig".to_owned()),
        Just("se".to_owned()),
        Just("skn".to_owned()),
        "[a-z]{0,3}",
    ];
    prop::collection::vec((field, ".{0,20}"), 0..6).prop_map(|fields| {
        let body: Vec<String> = fields
            .into_iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        format!("SharedAccessSignature {}", body.join("&"))
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sas_parsing_never_panics(text in ".{0,200}", token in token_like()) {
        let _ = SignedSas::parse(&text);
        if let Ok(parsed) = SignedSas::parse(&token) {
            // Whatever parsed can be checked without a panic.
            let _ = parsed.verify(&[&SharedAccessKey::generate(32)], 0);
            let _ = parsed.grants(&text);
        }
    }

    #[test]
    fn a_signed_token_round_trips_and_verifies_only_with_its_key(
        resource in ".{1,80}",
        key in key(),
        other in key(),
        policy in prop::option::of(".{1,20}"),
        expiry in 1u64..u64::MAX,
    ) {
        let token = SasToken::sign(&resource, &key, policy.as_deref(), expiry);
        let parsed = SignedSas::parse(token.expose()).unwrap();
        prop_assert_eq!(parsed.resource(), resource.as_str());
        prop_assert_eq!(parsed.key_name(), policy.as_deref());
        prop_assert_eq!(parsed.expiry(), expiry);
        prop_assert!(parsed.verify(&[&key], expiry - 1).is_ok());
        prop_assert!(parsed.verify(&[&key], expiry).is_err(), "expiry is strict");
        if other != key {
            prop_assert!(parsed.verify(&[&other], 0).is_err());
        }
        prop_assert!(parsed.grants(&resource));
    }

    #[test]
    fn a_token_whose_signed_fields_changed_is_refused(
        resource in "[a-z]{1,20}",
        key in key(),
        expiry in 2u64..1_000_000_000_000,
    ) {
        let token = SasToken::sign(&resource, &key, None, expiry);
        let later = token.expose().replace(&format!("se={expiry}"), &format!("se={}", expiry + 1));
        let parsed = SignedSas::parse(&later).unwrap();
        prop_assert!(parsed.verify(&[&key], 0).is_err());
        let elsewhere = token.expose().replace(&format!("sr={resource}"), &format!("sr={resource}x"));
        prop_assert!(SignedSas::parse(&elsewhere).unwrap().verify(&[&key], 0).is_err());
    }

    #[test]
    fn connection_string_parsing_never_panics_and_errors_never_show_the_key(
        segments in prop::collection::vec(("[A-Za-z]{0,25}", "[=; ]{0,2}", ".{0,40}"), 0..6),
        key in key(),
    ) {
        let mut text: String = segments.iter().map(|(n, s, v)| format!("{n}{s}{v};")).collect();
        text.push_str(&format!("SharedAccessKey={};AccountKey={}", key.expose_base64(), key.expose_base64()));
        for error in [
            ServiceConnectionString::parse(&text).err(),
            DeviceConnectionString::parse(&text).err(),
            StorageConnectionString::parse(&text).err(),
        ].into_iter().flatten() {
            let message = error.to_string();
            prop_assert!(!message.contains(key.expose_base64()), "{}", message);
        }
        let _ = ServiceConnectionString::parse(&segments.iter().map(|(n, s, v)| format!("{n}{s}{v}")).collect::<String>());
    }

    #[test]
    fn service_and_device_connection_strings_round_trip_and_hide_the_key(
        host in value(), policy in value(), device in value(),
        module in prop::option::of(value()), gateway in prop::option::of(value()), key in key(),
    ) {
        let service = ServiceConnectionString::new(host.clone(), policy.clone(), key.clone());
        let parsed = ServiceConnectionString::parse(&service.expose()).unwrap();
        prop_assert_eq!(&parsed, &service);
        let shown = format!("{parsed} {parsed:?}");
        prop_assert!(!shown.contains(key.expose_base64()));

        let mut text = format!("HostName={host};DeviceId={device};SharedAccessKey={}", key.expose_base64());
        if let Some(m) = &module { text.push_str(&format!(";ModuleId={m}")); }
        if let Some(g) = &gateway { text.push_str(&format!(";GatewayHostName={g}")); }
        let device_cs = DeviceConnectionString::parse(&text).unwrap();
        prop_assert_eq!(device_cs.module_id(), module.as_deref());
        prop_assert_eq!(device_cs.gateway_host_name(), gateway.as_deref());
        prop_assert_eq!(&DeviceConnectionString::parse(&device_cs.expose()).unwrap(), &device_cs);
        let shown = format!("{device_cs} {device_cs:?}");
        prop_assert!(!shown.contains(key.expose_base64()));
    }

    #[test]
    fn storage_connection_strings_round_trip(
        account in "[a-z0-9]{3,24}", endpoint in prop::option::of("https?://[a-z0-9.:]{1,30}(/[a-z0-9]{1,10})?"),
        key in key(),
    ) {
        let mut text = format!("DefaultEndpointsProtocol=https;AccountName={account};AccountKey={}", key.expose_base64());
        if let Some(e) = &endpoint { text.push_str(&format!(";TableEndpoint={e}")); }
        let parsed = StorageConnectionString::parse(&text).unwrap();
        prop_assert_eq!(&StorageConnectionString::parse(&parsed.expose()).unwrap(), &parsed);
        prop_assert!(!parsed.table_endpoint().ends_with('/'));
    }

    #[test]
    fn provisioning_code_parsing_never_panics(text in ".{0,200}", parts in prop::collection::vec(".{0,20}", 0..8)) {
        let _ = ProvisioningCode::parse(&text);
        let _ = ProvisioningCode::parse(&format!("DP1~{}", parts.join("~")));
    }

    #[test]
    fn a_provisioning_code_round_trips_and_a_changed_character_is_refused(
        id_scope in code_field(), registration_id in code_field(), endpoint in code_field(),
        key in key(), position in any::<prop::sample::Index>(), replacement in "[^~\\s]",
    ) {
        let code = ProvisioningCode { id_scope, registration_id, device_key: key, endpoint };
        let text = code.expose();
        let parsed = ProvisioningCode::parse(&format!("  {text}\n")).unwrap();
        prop_assert_eq!(&parsed, &code);
        let shown = format!("{parsed:?}");
        prop_assert!(!shown.contains(&text));

        // One character changed (not only its case, which the prefix and check ignore).
        let chars: Vec<char> = text.chars().collect();
        let at = position.index(chars.len());
        let new = replacement.chars().next().unwrap();
        if !chars[at].eq_ignore_ascii_case(&new) {
            let mut typo = chars.clone();
            typo[at] = new;
            let typo: String = typo.into_iter().collect();
            prop_assert!(ProvisioningCode::parse(&typo).is_err(), "{typo:?} was accepted");
        }
    }
}
