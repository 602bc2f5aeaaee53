//! The service configuration: one TOML file, every key overridable by a `PRESYNC_*` environment
//! variable (`__` separates levels: `PRESYNC_DATABASE__URL`), unknown keys rejected, and every
//! problem reported with its key path. Secrets are never written inline: they are references to
//! an environment variable or a file, resolved when the service starts, and never printed.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use presync_dataverse::config::{
    DataverseConfig, Discovery, GetPresenceForm, Impersonation, ReconcileSource, WebhookAuth,
    WebhookConfig,
};
use presync_engine::config::EngineConfig;
use presync_engine::Availability;
use presync_teams::config::TeamsConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub database: Database,
    #[serde(default)]
    pub http: Http,
    #[serde(default)]
    pub reconcile: Reconcile,
    /// Conflict rules, pipeline timings and dispatch limits.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Dynamics 365 Contact Center; absent: not synced.
    #[serde(default)]
    pub dataverse: Option<DataverseSection>,
    /// Microsoft Teams; absent: not synced.
    #[serde(default)]
    pub teams: Option<TeamsSection>,
}

/// Where presync keeps its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// `sqlite:PATH` (one instance) or `postgres://USER@HOST/DB` (several instances).
    #[serde(default = "default_database")]
    pub url: String,
    /// SQLite only: `full` (the default) makes every commit, and so every acknowledged
    /// webhook, survive a power loss; `normal` only a crash of the process, for faster commits.
    #[serde(default)]
    pub sqlite_synchronous: presync_engine::store::SqliteSynchronous,
    /// SQLite only: every how many milliseconds a connection of its own copies each file's
    /// write-ahead log back into the file (a checkpoint), so that commits do not have to; 0
    /// leaves checkpoints to the commits, as SQLite does by default.
    #[serde(default = "default_checkpoint_every_ms")]
    pub sqlite_checkpoint_every_ms: u64,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            url: default_database(),
            sqlite_synchronous: Default::default(),
            sqlite_checkpoint_every_ms: default_checkpoint_every_ms(),
        }
    }
}

impl Database {
    /// The store's options.
    pub fn options(&self) -> presync_engine::store::StoreOptions {
        presync_engine::store::StoreOptions {
            sqlite_synchronous: self.sqlite_synchronous,
            sqlite_checkpoint_every_ms: self.sqlite_checkpoint_every_ms,
        }
    }
}

fn default_checkpoint_every_ms() -> u64 {
    presync_engine::store::DEFAULT_CHECKPOINT_EVERY_MS
}

fn default_database() -> String {
    "sqlite:presync.db".to_owned()
}

/// The HTTP server: webhooks, health, metrics, admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token of the admin API.
    #[serde(default)]
    pub admin_token: Option<SecretRef>,
    /// Seconds a connection may take to send a request's headers, counted from when it opens
    /// or its previous answer was sent: idle and slow connections are closed after it.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// Seconds a webhook's body may take to arrive after its headers (answered 408 past it).
    #[serde(default = "default_body_timeout")]
    pub body_timeout_secs: u64,
    /// Bytes all bodies being received at once by one webhook route may hold; a body that
    /// would take more is answered 503 with `Retry-After`.
    #[serde(default = "default_body_memory")]
    pub body_memory_bytes: usize,
    /// Connections open at once; more are closed as they arrive. Lowered, with a warning, to
    /// fit the process's open-file limit (raised to its hard limit at start).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds shutdown waits for requests in flight before it closes their connections.
    #[serde(default = "default_shutdown_deadline")]
    pub shutdown_deadline_secs: u64,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: default_listen(),
            admin_token: None,
            header_timeout_secs: default_header_timeout(),
            body_timeout_secs: default_body_timeout(),
            body_memory_bytes: default_body_memory(),
            max_connections: default_max_connections(),
            shutdown_deadline_secs: default_shutdown_deadline(),
        }
    }
}

fn default_header_timeout() -> u64 {
    10
}

fn default_body_timeout() -> u64 {
    10
}

fn default_body_memory() -> usize {
    16 * 1024 * 1024
}

fn default_max_connections() -> usize {
    4_096
}

fn default_shutdown_deadline() -> u64 {
    10
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}

/// The scheduled reconciler.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reconcile {
    /// Cron expression with seconds (`sec min hour day month weekday`): every 5 minutes.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// Also run a pass when the instance starts (a second after it serves): what changed while
    /// it was down (webhooks refused, notifications acknowledged but not yet read when it was
    /// killed) is repaired at once rather than at the next scheduled pass. Default true.
    #[serde(default = "default_true")]
    pub on_start: bool,
}

impl Default for Reconcile {
    fn default() -> Self {
        Reconcile {
            schedule: default_schedule(),
            on_start: true,
        }
    }
}

fn default_true() -> bool {
    true
}

pub fn default_schedule() -> String {
    "0 */5 * * * *".to_owned()
}

/// A secret, by reference: `{ env = "NAME" }` or `{ file = "/path" }`.
///
/// Whatever stands where a reference belongs may be the secret itself, written inline or set
/// through a `PRESYNC_SECTION__KEY` variable: an error never repeats it, and says how to write
/// the reference instead.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

/// How a secret reference is written, for errors.
const SECRET_REF_SHAPE: &str = "a secret is written as a reference, { env = \"NAME\" } or      { file = \"/path\" }, never inline (a PRESYNC_SECTION__KEY variable cannot carry one: set      the key in the file and the secret in the variable it names)";

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretRefVisitor)
    }
}

struct SecretRefVisitor;

/// Visitor methods that refuse a value of their type without repeating it.
macro_rules! refuse_values {
    ($($name:ident($ty:ty)),* $(,)?) => {
        $(fn $name<E: serde::de::Error>(self, _: $ty) -> Result<SecretRef, E> {
            self.refuse()
        })*
    };
}

impl SecretRefVisitor {
    fn refuse<E: serde::de::Error>(&self) -> Result<SecretRef, E> {
        Err(E::custom(SECRET_REF_SHAPE))
    }
}

impl<'de> serde::de::Visitor<'de> for SecretRefVisitor {
    type Value = SecretRef;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(SECRET_REF_SHAPE)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SecretRef, A::Error> {
        use serde::de::Error;
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            let value = match key.as_str() {
                "env" => map
                    .next_value::<String>()
                    .map(SecretRef::Env)
                    .map_err(|_| A::Error::custom("env: the name of an environment variable"))?,
                "file" => map
                    .next_value::<PathBuf>()
                    .map(SecretRef::File)
                    .map_err(|_| A::Error::custom("file: the path of a file"))?,
                other => {
                    // Its value may be the secret: not read, not repeated.
                    map.next_value::<serde::de::IgnoredAny>()?;
                    return Err(A::Error::custom(format!(
                        "`{other}` is not a way to refer to a secret: {SECRET_REF_SHAPE}"
                    )));
                }
            };
            if found.replace(value).is_some() {
                return Err(A::Error::custom(SECRET_REF_SHAPE));
            }
        }
        found.ok_or_else(|| A::Error::custom(SECRET_REF_SHAPE))
    }

    refuse_values! {
        visit_str(&str),
        visit_bool(bool),
        visit_i64(i64),
        visit_u64(u64),
        visit_i128(i128),
        visit_u128(u128),
        visit_f64(f64),
        visit_char(char),
        visit_bytes(&[u8]),
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<SecretRef, E> {
        self.refuse()
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<SecretRef, E> {
        self.refuse()
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<SecretRef, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        self.refuse()
    }
}

impl std::fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl SecretRef {
    /// The secret's value. The error names the reference, never the value.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            SecretRef::Env(name) => std::env::var(name)
                .map(|v| v.trim().to_owned())
                .map_err(|_| format!("environment variable {name} is not set")),
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map(|v| v.trim().to_owned())
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
        }
    }
}

/// How presync gets Entra ID tokens for a connector.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entra {
    /// `https://login.microsoftonline.com`, or a sovereign cloud's authority.
    #[serde(default = "default_authority")]
    pub authority: String,
    pub tenant_id: String,
    pub client_id: String,
    /// A client secret, or (better) a certificate: `certificate_pem` (a path) with
    /// `private_key` (a secret reference to the PEM key).
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    #[serde(default)]
    pub certificate_pem: Option<PathBuf>,
    #[serde(default)]
    pub private_key: Option<SecretRef>,
}

fn default_authority() -> String {
    "https://login.microsoftonline.com".to_owned()
}

/// The Dataverse connector as configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataverseSection {
    /// The environment URL, e.g. `https://contoso.crm.dynamics.com`.
    pub org_url: String,
    pub entra: Entra,
    /// The webhook's authentication: `header` (with `header_name`), `key` or `query` (with
    /// `query_name`).
    #[serde(default = "default_webhook_auth")]
    pub webhook_auth: String,
    #[serde(default = "default_header_name")]
    pub webhook_name: String,
    /// The webhook secret, as registered on the Dataverse service endpoint.
    pub webhook_secret: SecretRef,
    /// When set, `x-ms-dynamics-organization` must equal it.
    #[serde(default)]
    pub organization: Option<String>,
    #[serde(default)]
    pub impersonation: Impersonation,
    /// Add new agents to the directory from Create events.
    #[serde(default)]
    pub discovery: bool,
    /// How `CCaaS_GetPresence` is called: `function` (with `ApiVersion`, the default) or `bare`
    /// (as the page documents it). UNCONFIRMED which one a tenant accepts.
    #[serde(default)]
    pub get_presence_form: Option<GetPresenceForm>,
    /// What the reconciler reads: `agent_status_query` (one paged query of
    /// `msdyn_agentstatuses`, the default) or `get_presence` (`CCaaS_GetPresence` per agent).
    #[serde(default)]
    pub reconcile_source: Option<ReconcileSource>,
    /// Canonical availability -> the presence id presync writes (defaults to the built-ins).
    #[serde(default)]
    pub presence_map: Option<BTreeMap<Availability, String>>,
    /// What an unknown presence id maps to (never Available; default Away).
    #[serde(default)]
    pub unknown_presence: Option<Availability>,
    /// Rows per page of OData reads.
    #[serde(default)]
    pub page_size: Option<u32>,
    /// Client-side request limit per impersonated user, per `rate_window_secs`.
    #[serde(default)]
    pub rate_limit: Option<u32>,
    #[serde(default)]
    pub rate_window_secs: Option<u64>,
    /// Per-request timeout in milliseconds.
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
    /// A representative's capacity units when free (100 by default): see the connector's
    /// `full_capacity`.
    #[serde(default)]
    pub full_capacity: Option<i64>,
    /// The largest webhook body accepted, in bytes (default 512 KiB).
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
}

fn default_webhook_auth() -> String {
    "header".to_owned()
}
fn default_header_name() -> String {
    "x-presync-secret".to_owned()
}

/// The Teams connector as configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamsSection {
    pub entra: Entra,
    /// Writes, reads and keep-alive.
    pub graph: TeamsConfig,
    /// `subscriptions` (change notifications, with the delegated account of `presync teams
    /// login`) or `polling`.
    #[serde(default = "default_ingress")]
    pub ingress: String,
    /// Polling mode: seconds between two reads.
    #[serde(default = "default_poll")]
    pub poll_interval_secs: u64,
    /// Subscriptions: presync's public base URL (HTTPS), e.g. `https://presync.example.com`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Subscriptions: the `clientState` secret.
    #[serde(default)]
    pub client_state: Option<SecretRef>,
    /// Subscriptions: where `presync teams login` stored the refresh token.
    #[serde(default)]
    pub refresh_token_file: Option<PathBuf>,
    /// Subscriptions: the lifetime asked for, in seconds (Graph allows at most 3600 for
    /// presence); renewed when a third of it remains.
    #[serde(default = "default_subscription_lifetime")]
    pub subscription_lifetime_secs: u64,
    /// Subscriptions: notification deliveries larger than this are refused (413). Graph's
    /// deliveries are small (a rich presence item is a few KiB); its largest batch is not
    /// documented (UNCONFIRMED), so this is a setting.
    #[serde(default = "default_teams_max_body")]
    pub max_body_bytes: usize,
}

fn default_teams_max_body() -> usize {
    1024 * 1024
}

fn default_subscription_lifetime() -> u64 {
    3_600
}

fn default_ingress() -> String {
    "subscriptions".to_owned()
}
fn default_poll() -> u64 {
    30
}

/// A problem of the Dataverse connector's own configuration, with the key of the `[dataverse]`
/// section that sets it (the connector's `webhook.auth.value` is `webhook_secret` here).
fn section_key(problem: &str) -> String {
    const KEYS: [(&str, &str); 2] = [
        ("webhook.auth.value:", "webhook_secret:"),
        ("webhook.auth.name:", "webhook_name:"),
    ];
    for (inner, outer) in KEYS {
        if let Some(rest) = problem.strip_prefix(inner) {
            return format!("{outer}{rest}");
        }
    }
    problem.to_owned()
}

/// `http://` on a loopback address: Graph itself requires HTTPS, but the simulator on this
/// machine does not.
fn is_loopback_http(url: &str) -> bool {
    url.strip_prefix("http://").is_some_and(|rest| {
        rest.starts_with("127.0.0.1") || rest.starts_with("localhost") || rest.starts_with("[::1]")
    })
}

/// Load `file` (when given) and the `PRESYNC_*` environment over the defaults.
pub fn load(file: Option<&Path>) -> Result<Config, Vec<String>> {
    let mut figment = Figment::new();
    if let Some(f) = file {
        if !f.exists() {
            return Err(vec![format!("{}: no such file", f.display())]);
        }
        figment = figment.merge(Toml::file(f));
    }
    // Every override names a section and a key (`PRESYNC_SECTION__KEY`); other `PRESYNC_*`
    // variables (secrets the file refers to, the test database URL) are not configuration keys.
    figment = figment.merge(
        Env::prefixed("PRESYNC_")
            .filter(|key| key.as_str().contains("__"))
            .split("__"),
    );
    figment
        .extract::<Config>()
        .map_err(|e| e.into_iter().map(|e| e.to_string()).collect())
}

impl Config {
    /// Every problem, with its key path. Secret references are resolved to check they exist.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if presync_engine::store::Dialect::of_url(&self.database.url).is_err() {
            p.push(format!(
                "database.url: {:?} must start with sqlite: or postgres://",
                presync_engine::store::redact_url(&self.database.url)
            ));
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!(
                "http.listen: {:?} is not an address like 127.0.0.1:8080",
                self.http.listen
            ));
        }
        for (key, value) in [
            ("http.header_timeout_secs", self.http.header_timeout_secs),
            ("http.body_timeout_secs", self.http.body_timeout_secs),
            ("http.max_connections", self.http.max_connections as u64),
            ("http.body_memory_bytes", self.http.body_memory_bytes as u64),
        ] {
            if value == 0 {
                p.push(format!("{key}: must be more than 0"));
            }
        }
        if let Some(t) = &self.http.admin_token {
            if let Err(e) = t.resolve() {
                p.push(format!("http.admin_token: {e}"));
            }
        }
        if self.reconcile.schedule.split_whitespace().count() != 6 {
            p.push(format!(
                "reconcile.schedule: {:?} must have 6 fields (sec min hour day month weekday)",
                self.reconcile.schedule
            ));
        }
        if let Some(d) = &self.dataverse {
            match d.connector_config() {
                Ok(c) => p.extend(
                    c.validate()
                        .into_iter()
                        .map(|m| format!("dataverse.{}", section_key(&m))),
                ),
                Err(e) => p.push(e),
            }
            entra_problems("dataverse.entra", &d.entra, &mut p);
        }
        if let Some(t) = &self.teams {
            p.extend(
                t.graph
                    .validate()
                    .into_iter()
                    .map(|m| format!("teams.graph.{m}")),
            );
            entra_problems("teams.entra", &t.entra, &mut p);
            // Graph takes a presence session only from the application that owns it.
            if !t.graph.app_id.eq_ignore_ascii_case(&t.entra.client_id) {
                p.push(format!(
                    "teams.graph.app_id: {:?} must equal teams.entra.client_id {:?} (Graph accepts a session id only from its own application)",
                    t.graph.app_id, t.entra.client_id
                ));
            }
            match t.ingress.as_str() {
                "polling" => {
                    if t.poll_interval_secs == 0 {
                        p.push("teams.poll_interval_secs: must be positive".to_owned());
                    }
                }
                "subscriptions" => {
                    if t.public_url
                        .as_deref()
                        .is_none_or(|u| !(u.starts_with("https://") || is_loopback_http(u)))
                    {
                        p.push(
                            "teams.public_url: subscriptions need presync's public https:// URL"
                                .to_owned(),
                        );
                    }
                    match &t.client_state {
                        None => p.push(
                            "teams.client_state: subscriptions need a clientState secret"
                                .to_owned(),
                        ),
                        Some(s) => match s.resolve() {
                            Ok(v) if v.len() > 128 => {
                                p.push("teams.client_state: at most 128 characters".to_owned())
                            }
                            Ok(_) => {}
                            Err(e) => p.push(format!("teams.client_state: {e}")),
                        },
                    }
                    if t.refresh_token_file.is_none() {
                        p.push("teams.refresh_token_file: subscriptions need the file `presync teams login` writes".to_owned());
                    }
                }
                other => p.push(format!(
                    "teams.ingress: {other:?} must be \"subscriptions\" or \"polling\""
                )),
            }
        }
        if self.dataverse.is_none() && self.teams.is_none() {
            p.push("dataverse, teams: configure at least one system".to_owned());
        }
        p.extend(self.hold_problems());
        p
    }

    /// What can be told of the holds before any connector is built: the systems they name, and
    /// a presence that is a routable availability. (A presence id is checked against the
    /// catalog at start.)
    fn hold_problems(&self) -> Vec<String> {
        let rules = &self.engine.rules;
        let default = presync_engine::config::Hold::teams_meetings();
        let configured = |s: &str| match s {
            crate::service::DATAVERSE => self.dataverse.is_some(),
            crate::service::TEAMS => self.teams.is_some(),
            _ => false,
        };
        let mut p = Vec::new();
        for (i, h) in rules.policies.hold.iter().enumerate() {
            let key = format!("engine.rules.policies.hold[{i}]");
            for (sys, part) in [(&h.when.system, "when"), (&h.hold.system, "hold")] {
                // The default hold waits for both systems; a deployment without one is fine.
                if !configured(sys.as_str()) && *h != default {
                    p.push(format!(
                        "{key}.{part}.system: {sys} is not a configured system (expected one of {})",
                        crate::service::SYSTEMS.join(", ")
                    ));
                }
            }
            if h.when.states.is_empty() {
                p.push(format!("{key}.when.states: name at least one state"));
            }
            if let Ok(a) = h.hold.presence.parse::<presync_engine::Availability>() {
                if rules.is_routable(a) {
                    p.push(format!(
                        "{key}.hold.presence: {a} is routable (engine.rules.routable); a hold \
                         must keep the representative out of routing: DoNotDisturb, Away, \
                         Offline, or a presence id based on one"
                    ));
                }
            }
        }
        p
    }
}

fn entra_problems(at: &str, e: &Entra, p: &mut Vec<String>) {
    match (&e.client_secret, &e.certificate_pem, &e.private_key) {
        (Some(s), None, None) => {
            if let Err(m) = s.resolve() {
                p.push(format!("{at}.client_secret: {m}"));
            }
        }
        (None, Some(cert), Some(key)) => {
            if !cert.exists() {
                p.push(format!(
                    "{at}.certificate_pem: {} does not exist",
                    cert.display()
                ));
            }
            if let Err(m) = key.resolve() {
                p.push(format!("{at}.private_key: {m}"));
            }
        }
        _ => p.push(format!(
            "{at}: give either client_secret, or certificate_pem with private_key"
        )),
    }
    if e.tenant_id.trim().is_empty() || e.client_id.trim().is_empty() {
        p.push(format!("{at}: tenant_id and client_id must not be empty"));
    }
}

impl DataverseSection {
    /// The connector's own configuration, with the webhook secret resolved.
    pub fn connector_config(&self) -> Result<DataverseConfig, String> {
        let secret = self
            .webhook_secret
            .resolve()
            .map_err(|e| format!("dataverse.webhook_secret: {e}"))?;
        let auth = match self.webhook_auth.as_str() {
            "header" => WebhookAuth::HttpHeader {
                name: self.webhook_name.clone(),
                value: secret,
            },
            "key" => WebhookAuth::WebhookKey { value: secret },
            "query" => WebhookAuth::HttpQueryString {
                name: self.webhook_name.clone(),
                value: secret,
            },
            other => {
                return Err(format!(
                    "dataverse.webhook_auth: {other:?} must be \"header\", \"key\" or \"query\""
                ))
            }
        };
        let mut hook = WebhookConfig::header("", "");
        hook.auth = auth;
        hook.organization = self.organization.clone();
        if let Some(n) = self.max_body_bytes {
            hook.max_body_bytes = n;
        }
        let mut c = DataverseConfig::new(self.org_url.clone(), hook);
        c.impersonation = self.impersonation.clone();
        if let Some(v) = self.get_presence_form {
            c.get_presence_form = v;
        }
        if let Some(v) = self.reconcile_source {
            c.reconcile_source = v;
        }
        if let Some(v) = &self.presence_map {
            c.presence_map = v.clone();
        }
        if let Some(v) = self.unknown_presence {
            c.unknown_presence = v;
        }
        if let Some(v) = self.page_size {
            c.page_size = v;
        }
        if let Some(v) = self.rate_limit {
            c.rate_limit = v;
        }
        if let Some(v) = self.rate_window_secs {
            c.rate_window_secs = v;
        }
        if let Some(v) = self.request_timeout_ms {
            c.request_timeout_ms = v;
        }
        if let Some(v) = self.full_capacity {
            c.full_capacity = v;
        }
        if self.discovery {
            c.discovery = Some(Discovery {
                entra_system: "teams".to_owned(),
            });
        }
        Ok(c)
    }
}

/// The commented example `presync config default` prints. A test checks it passes
/// `config check` once its referenced secrets exist.
pub const EXAMPLE: &str = r#"# presync configuration. Every key can be overridden by an environment variable:
# PRESYNC_<SECTION>__<KEY>, e.g. PRESYNC_DATABASE__URL or PRESYNC_HTTP__LISTEN.
# Secrets are references, never values: { env = "NAME" } or { file = "/path" }.

[database]
# sqlite:PATH for one instance; postgres://USER@HOST/DB when several instances share the work.
url = "sqlite:presync.db"
# SQLite only. "full": every acknowledged webhook survives a power loss (each commit waits for
# the disk). "normal": faster commits that survive a crash of presync, not of the machine.
sqlite_synchronous = "full"
# SQLite only: a connection of its own copies the write-ahead logs back into the database files
# every this many milliseconds, so that commits do not stall to do it; 0 leaves it to commits.
sqlite_checkpoint_every_ms = 100

[http]
listen = "127.0.0.1:8080"
# Bearer token of the admin API.
admin_token = { env = "PRESYNC_ADMIN_TOKEN" }

[reconcile]
# Cron with seconds: every 5 minutes.
schedule = "0 */5 * * * *"
# A catch-up pass when the instance starts, for what changed while it was down.
on_start = true

[dataverse]
org_url = "https://contoso.crm.dynamics.com"
# Authentication of the webhook, as registered on the service endpoint: header, key or query.
webhook_auth = "header"
webhook_name = "x-presync-secret"
webhook_secret = { env = "PRESYNC_DATAVERSE_WEBHOOK_SECRET" }
organization = "contoso.crm.dynamics.com"
discovery = false

# What the reconciler reads: agent_status_query (one paged query) or get_presence (per agent).
reconcile_source = "agent_status_query"
# How CCaaS_GetPresence is called: bare (as documented) or function (with ApiVersion).
# UNCONFIRMED: see README.
get_presence_form = "bare"

[dataverse.entra]
tenant_id = "00000000-0000-0000-0000-000000000000"
client_id = "11111111-1111-1111-1111-111111111111"
# A certificate is what Microsoft asks for; a client secret also works.
client_secret = { env = "PRESYNC_DATAVERSE_CLIENT_SECRET" }

[dataverse.impersonation]
# MSCRMCallerID (a systemuserid) or CallerObjectId (an Entra object id).
header = "MSCRMCallerID"
# application (the app user holds Omnichannel Supervisor), { supervisor = { id = "..." } }, or agent.
caller = "application"

[teams]
# subscriptions (delegated account, see `presync teams login`) or polling (app-only).
ingress = "polling"
poll_interval_secs = 30
# For ingress = "subscriptions" (change notifications):
# public_url = "https://presync.example.com"
# client_state = { env = "PRESYNC_TEAMS_CLIENT_STATE" }
# refresh_token_file = "/var/lib/presync/teams-refresh-token"
# subscription_lifetime_secs = 3600

[teams.entra]
tenant_id = "00000000-0000-0000-0000-000000000000"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = { env = "PRESYNC_TEAMS_CLIENT_SECRET" }

[teams.graph]
app_id = "11111111-1111-1111-1111-111111111111"
# session (presync's own presence session) or preferred.
mode = "session"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn example_env() {
        // Distinct names per process so tests in parallel do not disturb each other.
        std::env::set_var("PRESYNC_ADMIN_TOKEN", "admin-token-value");
        std::env::set_var("PRESYNC_DATAVERSE_WEBHOOK_SECRET", "0123456789abcdef0123");
        std::env::set_var("PRESYNC_DATAVERSE_CLIENT_SECRET", "dv-secret");
        std::env::set_var("PRESYNC_TEAMS_CLIENT_SECRET", "teams-secret");
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn the_printed_example_passes_config_check() {
        example_env();
        let f = write(EXAMPLE);
        let c = load(Some(f.path())).unwrap();
        assert_eq!(c.validate(), Vec::<String>::new());
    }

    #[test]
    fn a_teams_session_id_other_than_the_application_is_refused() {
        example_env();
        let text = EXAMPLE.replace(
            "app_id = \"11111111-1111-1111-1111-111111111111\"",
            "app_id = \"22222222-2222-2222-2222-222222222222\"",
        );
        assert_ne!(text, EXAMPLE);
        let f = write(&text);
        let problems = load(Some(f.path())).unwrap().validate();
        assert!(
            problems.iter().any(|p| p.starts_with("teams.graph.app_id")),
            "{problems:?}"
        );
    }

    #[test]
    fn dataverse_choices_reach_the_connector() {
        example_env();
        let text = EXAMPLE
            .replace(
                "reconcile_source = \"agent_status_query\"",
                "reconcile_source = \"get_presence\"",
            )
            .replace(
                "get_presence_form = \"bare\"",
                "get_presence_form = \"function\"",
            );
        let f = write(&text);
        let c = load(Some(f.path())).unwrap();
        let dv = c.dataverse.unwrap().connector_config().unwrap();
        assert_eq!(dv.reconcile_source, ReconcileSource::GetPresence);
        assert_eq!(dv.get_presence_form, GetPresenceForm::Function);
    }

    #[test]
    fn sqlite_synchronous_is_full_unless_normal_is_asked_for() {
        use presync_engine::store::SqliteSynchronous;
        let f = write("[database]\nurl = \"sqlite:x.db\"\n");
        let c = load(Some(f.path())).unwrap();
        assert_eq!(
            c.database.options().sqlite_synchronous,
            SqliteSynchronous::Full
        );
        let f = write("[database]\nurl = \"sqlite:x.db\"\nsqlite_synchronous = \"normal\"\n");
        let c = load(Some(f.path())).unwrap();
        assert_eq!(
            c.database.options().sqlite_synchronous,
            SqliteSynchronous::Normal
        );
        let f = write("[database]\nurl = \"sqlite:x.db\"\nsqlite_synchronous = \"off\"\n");
        let errors = load(Some(f.path())).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("sqlite_synchronous") && e.contains("normal")),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let f = write("[database]\nurl = \"sqlite:x.db\"\nurll = 1\n");
        let errors = load(Some(f.path())).unwrap_err();
        assert!(errors.iter().any(|e| e.contains("urll")), "{errors:?}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let f = write(
            r#"
[database]
url = "mysql://x"
[http]
listen = "nowhere"
[reconcile]
schedule = "*/5 * * * *"
[teams]
ingress = "subscriptions"
[teams.entra]
tenant_id = "t"
client_id = "c"
client_secret = { env = "PRESYNC_TEST_SURELY_UNSET_VARIABLE" }
[teams.graph]
app_id = "a"
"#,
        );
        let c = load(Some(f.path())).unwrap();
        let p = c.validate();
        for key in [
            "database.url",
            "http.listen",
            "reconcile.schedule",
            "teams.public_url",
            "teams.client_state",
            "teams.refresh_token_file",
            "teams.entra.client_secret",
        ] {
            assert!(
                p.iter().any(|m| m.starts_with(key)),
                "no problem for {key}: {p:?}"
            );
        }
    }

    #[test]
    fn secrets_are_never_shown() {
        example_env();
        let f = write(EXAMPLE);
        let c = load(Some(f.path())).unwrap();
        let shown = format!("{c:?}");
        for secret in [
            "admin-token-value",
            "0123456789abcdef0123",
            "dv-secret",
            "teams-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
