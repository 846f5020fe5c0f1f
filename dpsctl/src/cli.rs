//! The command line: global options saying which admin API to talk to, and one subcommand per
//! verb, each with examples in its `--help`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// `dpsctl`: the administrator's command line over the middleware's admin API.
#[derive(Debug, Parser)]
#[command(
    name = "dpsctl",
    version,
    about = "The administrator's command line over the device-provisioning middleware's admin API",
    long_about = "The administrator's command line over the device-provisioning middleware's admin API.\n\n\
Which API: --api-url and --key (or DPSCTL_API_URL and DPSCTL_KEY), both or neither. With neither, \
the local stack's .local/endpoints.json (written by `make up`, found in the working directory or \
above it), or the file --endpoints names. The key is sent as the x-functions-key header and \
never printed.",
    after_help = "Examples:\n  \
dpsctl enroll therm-001 --customer contoso --serial SN-1 --model TX-100\n  \
dpsctl import crm-export.csv --dry-run\n  \
dpsctl list devices --customer contoso --output csv\n  \
dpsctl show therm-001\n  \
dpsctl code therm-001 --svg therm-001.svg\n  \
DPSCTL_API_URL=https://<app>.azurewebsites.net/api DPSCTL_KEY=... dpsctl list enrollments"
)]
pub struct Cli {
    /// Which admin API, and with which key.
    #[command(flatten)]
    pub target: TargetArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the admin API is and the function key that opens it.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The admin API's base URL, ending in /api (needs --key too).
    #[arg(long, env = "DPSCTL_API_URL", global = true, value_name = "URL")]
    pub api_url: Option<String>,
    /// The function key (sent as x-functions-key; needs --api-url too).
    #[arg(
        long,
        env = "DPSCTL_KEY",
        global = true,
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub key: Option<String>,
    /// An endpoints file as `make up` writes it (api.baseUrl, api.functionKey).
    #[arg(long, env = "DPSCTL_ENDPOINTS", global = true, value_name = "FILE")]
    pub endpoints: Option<PathBuf>,
}

/// How results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON as the API answers it (lists as one array of every page's items).
    Json,
    /// Comma-separated values with a header row, the table's columns.
    Csv,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll one device (POST /api/enrollments).
    #[command(after_help = "Examples:\n  \
dpsctl enroll therm-001 --customer contoso --customer-name 'Contoso Ltd' --serial SN-1 --model TX-100\n  \
dpsctl enroll therm-002 --customer contoso --attribute orderNumber=PO-4711 --attribute color=blue\n  \
dpsctl enroll therm-003 --customer contoso --hub hub-1.azure-devices.net --disabled")]
    Enroll(EnrollArgs),
    /// Enroll many devices from a CSV export or a JSON array (POST /api/enrollments/import).
    #[command(
        after_help = "CSV columns (case, spaces, '_' and '-' ignored): registrationId and customerId \
(required), deviceId, customerName, serialNumber, model, enabled, iotHub; tag.<name> and \
desired.<name> fill the initial twin; any other column becomes an asset attribute. A JSON file \
is an array of the objects `dpsctl enroll` sends.\n\n\
Files of any size are sent in batches the API accepts (at most 10,000 rows and 16 MiB each); \
row numbers are the file's. The exit status is 3 when any row was invalid or failed; running \
the same import again finishes failed rows and reports the others as exists.\n\n\
Examples:\n  \
dpsctl import crm-export.csv --dry-run\n  \
dpsctl import crm-export.csv --problems\n  \
dpsctl import devices.json --output json > results.json"
    )]
    Import(ImportArgs),
    /// List enrollments or devices, following every page (GET /api/enrollments, /api/devices).
    #[command(after_help = "Examples:\n  \
dpsctl list enrollments\n  \
dpsctl list devices --customer contoso --status assigned\n  \
dpsctl list devices --hub hub-1.azure-devices.net --output csv > hub-1.csv\n  \
dpsctl list enrollments --output json | jq '.[].registrationId'")]
    List(ListArgs),
    /// A device's record and its history as a timeline (GET /api/devices/{id} and .../history).
    #[command(after_help = "Examples:\n  \
dpsctl show therm-001\n  \
dpsctl show therm-001 --refresh\n  \
dpsctl show therm-001 --output json")]
    Show(ShowArgs),
    /// The provisioning code for the end user, with its QR code drawn in the terminal.
    #[command(
        after_help = "The code carries the device's key: hand it to the device's owner only.\n\n\
Examples:\n  \
dpsctl code therm-001\n  \
dpsctl code therm-001 --svg therm-001.svg\n  \
dpsctl code therm-001 --invert   # for terminals with a light background"
    )]
    Code(CodeArgs),
    /// Change a device's desired properties through its hub (PATCH /api/devices/{id}/desired).
    #[command(
        after_help = "Each value is read as JSON when it is JSON (30, true, null, {\"a\":1}, \"text\"), \
and as a string otherwise. null removes the property.\n\n\
Examples:\n  \
dpsctl desired therm-001 telemetryIntervalSeconds=10\n  \
dpsctl desired therm-001 mode=eco thresholds='{\"high\":30}' oldSetting=null"
    )]
    Desired(DesiredArgs),
    /// Call a direct method on a connected device (POST /api/devices/{id}/commands/{name}).
    #[command(after_help = "Examples:\n  \
dpsctl command therm-001 GetDiagnostics\n  \
dpsctl command therm-001 reboot --payload '{\"delaySeconds\":5}' --timeout 60")]
    Command(CommandArgs),
    /// Stop a device from registering (PATCH /api/enrollments/{id} with enabled false).
    #[command(after_help = "Example:\n  dpsctl disable therm-001")]
    Disable(EnrollmentArg),
    /// Let a disabled device register again (PATCH /api/enrollments/{id} with enabled true).
    #[command(after_help = "Example:\n  dpsctl enable therm-001")]
    Enable(EnrollmentArg),
    /// Rotate a device's symmetric key with rollover (POST /api/enrollments/{id}/rotate-key).
    #[command(
        after_help = "The new key goes into the enrollment's free slot and reaches the device over its \
hub connection; the old key is refused only once the device has re-provisioned with the new one. \
A device that is offline gets the key when it connects; `dpsctl show` follows the steps.\n\n\
Examples:\n  \
dpsctl rotate-key therm-001\n  \
dpsctl rotate-key therm-001 --output json"
    )]
    RotateKey(RotateKeyArgs),
    /// Remove an enrollment, its DPS registration and its hub identity (DELETE /api/enrollments/{id}).
    #[command(
        after_help = "On a terminal dpsctl asks first; elsewhere (scripts, pipes) it refuses without --yes.\n\n\
Examples:\n  \
dpsctl delete therm-001\n  \
dpsctl delete therm-001 --yes"
    )]
    Delete(DeleteArgs),
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  \
dpsctl completions bash > ~/.local/share/bash-completion/completions/dpsctl\n  \
dpsctl completions zsh > ~/.zfunc/_dpsctl\n  \
dpsctl completions fish > ~/.config/fish/completions/dpsctl.fish")]
    Completions(CompletionsArgs),
}

/// `dpsctl rotate-key`.
#[derive(Debug, Args)]
pub struct RotateKeyArgs {
    /// The enrollment's registration id.
    pub registration_id: String,
    /// How to print the answer.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `dpsctl enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The DPS registration id (1 to 128 letters, digits, '-', '.', '_', ':').
    pub registration_id: String,
    /// The CRM's customer id.
    #[arg(long)]
    pub customer: String,
    /// The customer's display name.
    #[arg(long)]
    pub customer_name: Option<String>,
    /// The device's serial number.
    #[arg(long)]
    pub serial: Option<String>,
    /// The device's model.
    #[arg(long)]
    pub model: Option<String>,
    /// Another asset attribute, NAME=VALUE (repeatable).
    #[arg(long = "attribute", value_name = "NAME=VALUE")]
    pub attributes: Vec<String>,
    /// A twin tag, NAME=VALUE, the value read as JSON when it is JSON (repeatable).
    #[arg(long = "tag", value_name = "NAME=VALUE")]
    pub tags: Vec<String>,
    /// An initial desired property, NAME=VALUE, read as JSON when it is JSON (repeatable).
    #[arg(long = "desired", value_name = "NAME=VALUE")]
    pub desired: Vec<String>,
    /// The IoT Hub device id (default: the registration id).
    #[arg(long)]
    pub device_id: Option<String>,
    /// Pin the device to this linked hub (default: DPS's hashed allocation).
    #[arg(long, value_name = "HOST")]
    pub hub: Option<String>,
    /// Enroll it disabled (it cannot register until `dpsctl enable`).
    #[arg(long)]
    pub disabled: bool,
    /// How to write the enrollment.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// `dpsctl import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The CSV (header row) or JSON (array) file; `-` reads standard input.
    pub file: PathBuf,
    /// The file's format (default: from its extension, else from its first character).
    #[arg(long, value_enum)]
    pub format: Option<FileFormat>,
    /// Check every row here with the handler's own rules and send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rows per request (at most 10,000; requests also stay under 16 MiB).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub batch_rows: u16,
    /// List only the rows that were not created.
    #[arg(long)]
    pub problems: bool,
    /// How to write the per-row results.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// An import file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FileFormat {
    /// A CSV export with a header row.
    Csv,
    /// A JSON array of enrollments.
    Json,
}

/// What `dpsctl list` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListKind {
    /// Enrollments (what the CRM manages).
    Enrollments,
    /// Devices (where they are and what they reported).
    Devices,
}

/// `dpsctl list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Enrollments or devices.
    #[arg(value_enum)]
    pub kind: ListKind,
    /// Only this customer's.
    #[arg(long)]
    pub customer: Option<String>,
    /// Only those with this status (pending, enrolled, assigned, failed, disabled, deleting).
    #[arg(long)]
    pub status: Option<String>,
    /// Only those on this hub (its host name).
    #[arg(long, value_name = "HOST")]
    pub hub: Option<String>,
    /// Items per request (1 to 1,000); every page is followed.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub page_size: u16,
    /// How to write the list.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// `dpsctl show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The device id (or registration id).
    pub device: String,
    /// Ask DPS for the registration now rather than using the record's.
    #[arg(long)]
    pub refresh: bool,
    /// How to write the record (json: `{"device": ..., "history": [...]}`).
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// `dpsctl code`.
#[derive(Debug, Args)]
pub struct CodeArgs {
    /// The registration id.
    pub registration_id: String,
    /// Also write the QR code as SVG to this file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Draw dark modules light, for terminals with a light background.
    #[arg(long)]
    pub invert: bool,
    /// Print the code alone, without the QR code.
    #[arg(long)]
    pub no_qr: bool,
}

/// `dpsctl desired`.
#[derive(Debug, Args)]
pub struct DesiredArgs {
    /// The device id.
    pub device: String,
    /// NAME=VALUE pairs to merge into the desired properties.
    #[arg(required = true, value_name = "NAME=VALUE")]
    pub properties: Vec<String>,
    /// Only if the twin's etag is still this one.
    #[arg(long, value_name = "ETAG")]
    pub if_match: Option<String>,
    /// How to write the answer.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// `dpsctl command`.
#[derive(Debug, Args)]
pub struct CommandArgs {
    /// The device id.
    pub device: String,
    /// The direct method's name.
    pub name: String,
    /// The method's payload, as JSON.
    #[arg(long, value_name = "JSON")]
    pub payload: Option<String>,
    /// Seconds to wait for the device's answer (5 to 300).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u16).range(5..=300))]
    pub timeout: Option<u16>,
    /// Seconds to wait for a disconnected device to connect (0 to 300).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u16).range(0..=300))]
    pub connect_timeout: Option<u16>,
    /// How to write the device's answer.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
}

/// A verb that names one enrollment.
#[derive(Debug, Args)]
pub struct EnrollmentArg {
    /// The registration id.
    pub registration_id: String,
}

/// `dpsctl delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The registration id.
    pub registration_id: String,
    /// Delete without asking.
    #[arg(long, short)]
    pub yes: bool,
}

/// `dpsctl completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}
