//! Which admin API to talk to: `--api-url` and `--key` (or `DPSCTL_API_URL`, `DPSCTL_KEY`)
//! together, or else an endpoints file (`--endpoints`, or `.local/endpoints.json` in the working
//! directory or a parent, as `make up` writes it). The two are never mixed, so a local key is
//! never sent to a URL given by hand.

use crate::cli::TargetArgs;
use crate::error::{Error, Result};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where `make up` writes the local stack's endpoints, relative to the repository root.
const LOCAL_ENDPOINTS: &str = ".local/endpoints.json";

/// A function key. Prints as `<redacted>`; only [`ApiKey::expose`] gives the value.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key, for the `x-functions-key` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// The admin API and its key.
#[derive(Debug, Clone)]
pub struct Target {
    /// The base URL, ending in `/api`, without a trailing slash.
    pub base_url: String,
    /// The function key.
    pub key: ApiKey,
    /// Where they came from, for error messages.
    pub source: String,
}

/// The part of an endpoints file dpsctl reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndpointsFile {
    api: Option<ApiSection>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiSection {
    base_url: Option<String>,
    function_key: Option<String>,
}

impl Target {
    /// Resolves the target from the options, the environment (clap has read it) and, with
    /// neither URL nor key given, an endpoints file found from `cwd` upwards.
    pub fn resolve(args: &TargetArgs, cwd: &Path) -> Result<Self> {
        let url = args
            .api_url
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let key = args.key.as_deref().map(str::trim).filter(|s| !s.is_empty());
        match (url, key) {
            (Some(url), Some(key)) => {
                if args.endpoints.is_some() {
                    return Err(Error::Usage(
                        "give either --api-url and --key or --endpoints, not both".into(),
                    ));
                }
                Ok(Self {
                    base_url: base_url(url)?,
                    key: ApiKey(key.to_owned()),
                    source: "--api-url/DPSCTL_API_URL and --key/DPSCTL_KEY".into(),
                })
            }
            (Some(_), None) => Err(Error::Usage(
                "no function key: --api-url (or DPSCTL_API_URL) is set, so give its key with \
                    --key or DPSCTL_KEY"
                    .into(),
            )),
            (None, Some(_)) => Err(Error::Usage(
                "no API URL: --key (or DPSCTL_KEY) is set, so give its URL with --api-url or \
                    DPSCTL_API_URL"
                    .into(),
            )),
            (None, None) => {
                let path = match &args.endpoints {
                    Some(path) => path.clone(),
                    None => find_upwards(cwd).ok_or_else(|| {
                        Error::Usage(format!(
                            "no admin API configured: give --api-url and --key (or DPSCTL_API_URL and DPSCTL_KEY), \
                             or --endpoints FILE, or run `make up`, which writes {LOCAL_ENDPOINTS} (looked for in {} and its parents)",
                            cwd.display()
                        ))
                    })?,
                };
                Self::from_file(&path)
            }
        }
    }

    fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::File {
            what: format!("reading the endpoints file {}", path.display()),
            source,
        })?;
        let file: EndpointsFile = serde_json::from_str(&text).map_err(|e| {
            Error::Usage(format!(
                "{} is not an endpoints file (JSON with api.baseUrl and api.functionKey): {e}",
                path.display()
            ))
        })?;
        let api = file.api.unwrap_or(ApiSection {
            base_url: None,
            function_key: None,
        });
        let missing = |what: &str| {
            Error::Usage(format!(
                "{} has no {what}; `make up` writes a complete one",
                path.display()
            ))
        };
        let url = api.base_url.ok_or_else(|| missing("api.baseUrl"))?;
        let key = api
            .function_key
            .filter(|k| !k.is_empty())
            .ok_or_else(|| missing("api.functionKey"))?;
        Ok(Self {
            base_url: base_url(&url)?,
            key: ApiKey(key),
            source: path.display().to_string(),
        })
    }
}

/// The URL without a trailing slash, checked to be http(s).
fn base_url(url: &str) -> Result<String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Error::Usage(format!("the API URL {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::Usage(format!(
            "the API URL {url:?} must start with https:// (or http:// for a local stack)"
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// `.local/endpoints.json` in `start` or the nearest parent that has one.
fn find_upwards(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(LOCAL_ENDPOINTS))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: Option<&str>, key: Option<&str>, endpoints: Option<PathBuf>) -> TargetArgs {
        TargetArgs {
            api_url: url.map(str::to_owned),
            key: key.map(str::to_owned),
            endpoints,
        }
    }

    #[test]
    fn a_url_without_a_key_is_refused_and_no_file_key_is_borrowed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".local")).unwrap();
        std::fs::write(
            dir.path().join(LOCAL_ENDPOINTS),
            r#"{"api":{"baseUrl":"http://127.0.0.1:7071/api","functionKey":"local-secret"}}"#,
        )
        .unwrap();
        let error = Target::resolve(&args(Some("https://x.example/api"), None, None), dir.path())
            .unwrap_err();
        assert!(error.to_string().contains("no function key"), "{error}");
    }

    #[test]
    fn the_local_endpoints_file_is_found_from_a_subdirectory_and_its_key_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".local")).unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(
            dir.path().join(LOCAL_ENDPOINTS),
            r#"{"api":{"baseUrl":"http://127.0.0.1:7071/api/","functionKey":"local-secret"}}"#,
        )
        .unwrap();
        let target = Target::resolve(&args(None, None, None), &dir.path().join("a/b")).unwrap();
        assert_eq!(target.base_url, "http://127.0.0.1:7071/api");
        assert_eq!(target.key.expose(), "local-secret");
        assert!(!format!("{target:?}").contains("local-secret"));
    }

    #[test]
    fn without_any_configuration_the_message_says_what_to_give() {
        let dir = tempfile::tempdir().unwrap();
        let error = Target::resolve(&args(None, None, None), dir.path()).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("--api-url") && message.contains("make up"),
            "{message}"
        );
        let error =
            Target::resolve(&args(Some("ftp://x"), Some("k"), None), dir.path()).unwrap_err();
        assert!(error.to_string().contains("https://"), "{error}");
    }
}
